"""The digits example trained for real (TensorFlow CPU build) on the local host, through gpubox's own commands."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.support.cli import run_gpubox

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"

READ_SCALARS = """
import glob, json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
found = {}
for folder in sorted(glob.glob(sys.argv[1] + "/*/")):
    acc = EventAccumulator(folder, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    for tag in acc.Tags().get("tensors", []) + acc.Tags().get("scalars", []):
        found[folder.rstrip("/").rsplit("/", 1)[1] + "/" + tag] = len(acc.Tensors(tag) if tag in acc.Tags().get("tensors", []) else acc.Scalars(tag))
print(json.dumps(found))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("logs", "checkpoints"))
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    yield folder
    run_gpubox("down", "local", cwd=folder)


def test_digits_trains_logs_scalars_and_checkpoint_comes_back(project: Path, tmp_path: Path) -> None:
    result = run_gpubox("run", "-f", "--", "python", "train.py", "--epochs", "3", cwd=project, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    run_id = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("started "))
    final = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("final "))[6:])
    assert final["val_accuracy"] > 0.5
    # Read the event files with the env's own TensorBoard, on the host: as a gpubox run, which runs in the env.
    (project / "read_scalars.py").write_text(READ_SCALARS)
    listing = run_gpubox("run", "-f", "--", "python", "read_scalars.py", f"logs/{run_id}", cwd=project)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    tags = json.loads(listing.stdout.strip().splitlines()[-1])
    assert tags.get("train/epoch_loss") == 3, tags
    assert tags.get("validation/epoch_loss") == 3, tags
    assert tags.get("custom/val_error_rate") == 3, tags
    pulled = run_gpubox("pull", cwd=project)
    assert pulled.returncode == 0, pulled.stderr
    assert (project / "checkpoints" / "digits.keras").stat().st_size > 10_000
    assert (project / "logs" / run_id).is_dir()


def test_a_requirement_that_does_not_resolve_is_one_line_and_leaves_no_env(project: Path) -> None:
    (project / "requirements.txt").write_text("gpubox-no-such-package-anywhere==9.9.9\n")
    result = run_gpubox("run", "--", "python", "train.py", cwd=project, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(
        "gpubox: requirement 'gpubox-no-such-package-anywhere==9.9.9' could not be installed"
    )
    # The env cache is shared with the other test processes, whose builds may be half-way right now: look only
    # at this build's env, named by the log the error points at.
    log = re.search(r"the build's log on the host: (\S+)\.log\)", last)
    assert log, last
    check = f'[ -e {log[1]} ] && echo "half-built: {log[1]}"; [ -f {log[1]}.log ] && echo "log kept"'
    leftovers = run_gpubox("ssh", "local", "--", check, cwd=project)
    assert "half-built" not in leftovers.stdout and "log kept" in leftovers.stdout, leftovers.stdout


def test_runs_shows_live_progress_from_keras_logs_and_tensorboard_events(project: Path) -> None:
    import time

    started = run_gpubox("run", "--", "python", "train.py", "--epochs", "400", cwd=project, timeout=900)
    assert started.returncode == 0, started.stderr
    run_id = next(line.split()[1] for line in started.stdout.splitlines() if line.startswith("started "))
    progress = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = json.loads(run_gpubox("runs", "--json", cwd=project).stdout)["runs"]
        (mine,) = [r for r in runs if r["id"] == run_id]
        progress = mine["progress"] or {}
        if progress.get("epochs_logged", 0) >= 2 and "eta_seconds" in progress:
            break
        time.sleep(0.5)
    assert progress and progress["epochs"] == 400, progress
    assert 1 <= progress["epoch"] <= 400
    metrics = progress["metrics"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics), metrics
    assert 0 < metrics["loss"] < 10 and 0 <= metrics["accuracy"] <= 1
    # A wide terminal, whatever the test runner's own COLUMNS: a narrow one leaves the ETA out (by design).
    table = run_gpubox("runs", cwd=project, env={**os.environ, "COLUMNS": "160"}).stdout
    assert "/400 · loss " in table and "ETA " in table
    assert run_gpubox("stop", run_id, "--grace", "2", cwd=project).returncode == 0
