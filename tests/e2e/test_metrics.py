"""Metrics and curves without code changes: a run that writes TensorBoard event files anywhere under the
project's output folders (a TF2 custom loop's tf.summary writer, PyTorch's SummaryWriter layout, nested run
folders) shows each scalar's last value in `gpubox runs` and its series in the dashboard's curves, through
the real CLI on the real local host, with real TensorFlow and TensorBoard writers in the project's env.

Only what the run wrote counts: an event file from before it started, another run's GPUBOX_TB_DIR and the
histograms in the same files are left out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from gpubox.config import load_hosts, load_project
from gpubox.remote.agent import calls
from gpubox.remote.session import connect_host
from tests.support.cli import run_gpubox

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"

WRITERS = """
import os, socket, sys, time
import tensorflow as tf
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

# The pattern the TensorFlow guide teaches for a custom training loop: tf.summary to a folder of one's own,
# with a histogram beside the scalar.
custom = tf.summary.create_file_writer("logs/custom")
with custom.as_default():
    for step in range(5):
        tf.summary.scalar("loss", 1.0 / (step + 1), step=step)
        tf.summary.histogram("weights", tf.random.normal([1000]), step=step)
custom.flush()

# Nested run folders, as hyper-parameter searches write them.
nested = tf.summary.create_file_writer("outputs/search/lr-0.01/metrics")
with nested.as_default():
    for step in range(4):
        tf.summary.scalar("accuracy", 0.5 + step / 10, step=step)
nested.flush()

# PyTorch's SummaryWriter: runs/<date>_<host>, simple_value scalars, written by TensorBoard's EventFileWriter
# (the class torch.utils.tensorboard uses).
folder = "runs/" + time.strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
torch_style = EventFileWriter(folder)
for step in range(3):
    value = summary_pb2.Summary.Value(tag="Loss/train", simple_value=0.5 / (step + 1))
    torch_style.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])))
torch_style.flush()
print("written", flush=True)
time.sleep(float(sys.argv[1]))
"""

OLD_WRITER = """
import tensorflow as tf
old = tf.summary.create_file_writer("logs/custom")
with old.as_default():
    tf.summary.scalar("stale", 42.0, step=0)
old.flush()
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "metrics"
    folder.mkdir()
    # The digits example's requirements: the env (TensorFlow, TensorBoard) is the one the suite already built.
    shutil.copy(EXAMPLE / "requirements.txt", folder / "requirements.txt")
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (folder / "writers.py").write_text(WRITERS)
    (folder / "old_writer.py").write_text(OLD_WRITER)
    yield folder
    run_gpubox("down", "local", cwd=folder)


def _started(result: object) -> str:
    stdout = getattr(result, "stdout", "")
    return next(line.split()[1] for line in stdout.splitlines() if line.startswith("started "))


def test_scalars_written_anywhere_under_the_outputs_become_metrics_and_curves(project: Path) -> None:
    # A run from before (its event file is older than the next run) and a run that stays active beside it.
    old = run_gpubox("run", "-f", "--", "python", "old_writer.py", cwd=project, timeout=900)
    assert old.returncode == 0, old.stdout[-2000:] + old.stderr[-2000:]
    time.sleep(2.5)  # event files carry their creation time in whole seconds
    started = run_gpubox("run", "--", "python", "writers.py", "120", cwd=project, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = _started(started)
    metrics: dict[str, float] = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        listing = run_gpubox("runs", "--json", cwd=project)
        assert listing.returncode == 0, listing.stderr
        (mine,) = [r for r in json.loads(listing.stdout)["runs"] if r["id"] == run_id]
        metrics = (mine["progress"] or {}).get("metrics") or {}
        if len(metrics) >= 3:
            break
        time.sleep(1.0)
    runs_dir = next(name for name in metrics if name.endswith("/Loss/train")).removesuffix("/Loss/train")
    assert metrics == {
        "custom/loss": pytest.approx(0.2),
        "search/lr-0.01/metrics/accuracy": pytest.approx(0.8),
        f"{runs_dir}/Loss/train": pytest.approx(0.5 / 3),
    }, metrics
    assert runs_dir.endswith("_" + runs_dir.rsplit("_", 1)[1]) and "/" not in runs_dir
    # The runs table shows them too, the one that matters most (a loss) first, and fits an 80-column terminal.
    table = run_gpubox("runs", cwd=project)
    assert "custom/loss 0.2" in table.stdout, table.stdout
    narrow = run_gpubox("runs", cwd=project, env=dict(os.environ, COLUMNS="80"))
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80, narrow.stdout
    assert "custom/loss 0.2" in narrow.stdout, narrow.stdout

    # The dashboard's curves: the agent's `dash` answer for this run, as the dashboard's poller asks for it.
    project_config = load_project(project)
    host = load_hosts(project).get("local")
    session = connect_host(host, project_config.name, probe=False, launch=False)
    try:
        answer, _log = calls.dash(session.agent, gpu=False, run=run_id, scalars={})
        scalars = answer["run"]["scalars"]
        assert set(scalars) == {"custom/loss", "search/lr-0.01/metrics/accuracy", f"{runs_dir}/Loss/train"}
        assert [point[1] for point in scalars["custom/loss"]["points"]] == pytest.approx(
            [1.0, 0.5, 1 / 3, 0.25, 0.2]
        )
        assert [p[0] for p in scalars[f"{runs_dir}/Loss/train"]["points"]] == [0, 1, 2]
        # A second look sends only what is new: nothing.
        again, _log = calls.dash(
            session.agent,
            gpu=False,
            run=run_id,
            scalars={key: len(value["points"]) for key, value in scalars.items()},
        )
        assert all(not part["points"] for part in again["run"]["scalars"].values())
    finally:
        session.close()
    assert run_gpubox("stop", run_id, "--grace", "2", cwd=project).returncode == 0
