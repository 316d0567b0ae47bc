"""Detached runs on the real local host: start, follow, exit codes, stop, reattach after gpubox is killed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, run_gpubox
from tests.support.hosthome import host_home

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (folder / ".gitignore").write_text("hosts.toml\n")
    yield folder
    run_gpubox("down", "local", cwd=folder)


def _host_log(run_id: str) -> bytes:
    return (host_home() / ".gpubox" / "runs").joinpath(run_id, "log").read_bytes()


def _runs(project: Path) -> dict[str, dict[str, object]]:
    listing = run_gpubox("runs", "--all", "--json", cwd=project)
    assert listing.returncode == 0, listing.stderr
    return {run["id"]: run for run in json.loads(listing.stdout)["runs"]}


def test_run_follow_returns_the_exit_code_and_the_whole_log(project: Path) -> None:
    (project / "job.py").write_text(
        "import os, sys\nfor i in range(3):\n    print('step', i)\n"
        "print('run', os.environ['GPUBOX_RUN_ID'], os.environ['PYTHONUNBUFFERED'], file=sys.stderr)\n"
        "print('tb', os.environ['GPUBOX_TB_DIR'])\nsys.exit(4)\n"
    )
    result = run_gpubox("run", "-f", "--", "python3", "job.py", cwd=project)
    assert result.returncode == 4, result.stderr
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("synced local:")  # the flush barrier sent job.py first
    run_id = second.split()[1]
    assert second == f"started {run_id} on local: python3 job.py"
    body = result.stdout.split("\n", 2)[2]
    assert "step 0\nstep 1\nstep 2\n" in body
    assert f"run {run_id} 1" in body
    assert f"tb {project.parent / 'remote'}/logs/{run_id}" in body
    assert _runs(project)[run_id]["state"] == "failed"
    assert _runs(project)[run_id]["exit_code"] == 4


def test_stop_ends_a_sleeping_run(project: Path) -> None:
    started = run_gpubox("run", "--", "sleep", "60", cwd=project)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.splitlines()[-2].split()[1]
    assert _runs(project)[run_id]["state"] == "running"
    stopped = run_gpubox("stop", run_id, "--grace", "2", cwd=project)
    assert stopped.stdout.strip() == f"{run_id} on local: stopped (exit 143)"
    assert _runs(project)[run_id]["state"] == "stopped"
    # Processes that ignore SIGTERM are killed after the grace period; nothing of the run is left.
    stubborn = run_gpubox("run", "--", "sh", "-c", "trap '' TERM; sleep 61.5; true", cwd=project)
    run_id = stubborn.stdout.splitlines()[-2].split()[1]
    time.sleep(0.3)
    assert subprocess.run(["pgrep", "-f", "sleep 61.5"], capture_output=True).returncode == 0
    stopped = run_gpubox("stop", run_id, "--grace", "0.5", cwd=project)
    assert stopped.stdout.startswith(f"{run_id} on local: stopped")
    assert subprocess.run(["pgrep", "-f", "sleep 61.5"], capture_output=True).returncode == 1


def test_run_survives_the_ssh_link_and_gpubox(project: Path) -> None:
    started = run_gpubox("run", "--", "sh", "-c", "sleep 1; echo survived", cwd=project)
    run_id = started.stdout.splitlines()[-2].split()[1]
    # Drop every SSH session of this test's local host (not the machine's others): the run was started
    # detached, in its own session, so it must not notice.
    from gpubox.remote.providers.local import LocalSshd
    from tests.support.sshd import descendants

    server = LocalSshd().running()
    assert server is not None
    for pid in descendants(server.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    follow = run_gpubox("logs", run_id, "-f", cwd=project)
    assert (follow.returncode, follow.stdout) == (0, "survived\n"), follow.stderr


def test_logs_tail(project: Path) -> None:
    done = run_gpubox("run", "-f", "--", "seq", "1", "100", cwd=project)
    run_id = done.stdout.splitlines()[1].split()[1]
    tail = run_gpubox("logs", run_id, "--tail", "3", cwd=project)
    assert tail.stdout == "98\n99\n100\n"


def test_reattach_after_sigkill_gives_a_byte_identical_log(project: Path, tmp_path: Path) -> None:
    (project / "count.py").write_text(
        "import time\nfor i in range(60):\n    print(f'line {i:04d} ' + 'x' * (i % 37), flush=True)\n    time.sleep(0.05)\n"
    )
    started = run_gpubox("run", "--", "python3", "count.py", cwd=project)
    run_id = started.stdout.splitlines()[-2].split()[1]
    first_out = tmp_path / "first.out"
    with open(first_out, "wb") as handle:
        follower = subprocess.Popen(
            [sys.executable, "-m", "gpubox", "logs", run_id, "-f"],
            cwd=project,
            stdout=handle,
            stderr=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        # Killed mid-stream: once it has written part of the log (a loaded machine may take seconds to connect).
        deadline = time.monotonic() + 60
        while first_out.stat().st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        follower.send_signal(signal.SIGKILL)
        follower.wait()
    assert first_out.stat().st_size > 0
    again = run_gpubox("logs", run_id, "-f", cwd=project)
    assert again.returncode == 0, again.stderr
    host_log = _host_log(run_id)
    local_copy = Path(os.environ["GPUBOX_HOME"]) / "state" / "runs" / "local" / f"{run_id}.log"
    assert local_copy.read_bytes() == host_log
    assert again.stdout.encode() == host_log
    assert host_log.count(b"\n") == 60


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["logs", "r-987654321"], "gpubox: no run r-987654321 on this host", 2),
        (["stop", "r-987654321"], "gpubox: no run r-987654321 on this host", 2),
        (["logs", "seven"], "gpubox: no run named 'seven' on local: give a run id (like r-7) or a --name", 2),
        (["logs", "../seven"], "gpubox: '../seven' is not a run id", 2),
        (["run"], "gpubox: nothing to run: give a command after `--`", 2),
    ],
)
def test_bad_run_input_is_one_line(project: Path, argv: list[str], message: str, code: int) -> None:
    run_gpubox("ssh", "local", "--", "true", cwd=project)  # the local host exists, so only the run is wrong
    line = assert_one_line_error(run_gpubox(*argv, cwd=project), code)
    assert line.startswith(message), line


def test_run_on_a_host_that_is_down_is_exit_3(tmp_path: Path) -> None:
    from gpubox.remote.sshd import free_port

    project = tmp_path / "p"
    project.mkdir()
    (project / "hosts.toml").write_text(f'[hosts.gone]\nhostname = "127.0.0.1"\nport = {free_port()}\n')
    line = assert_one_line_error(run_gpubox("run", "--", "true", cwd=project), 3)
    assert "connection refused" in line


def test_cost_prices_each_run_at_its_host_rate(project: Path, tmp_path: Path) -> None:
    (project / "hosts.toml").write_text(
        f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\nprice_per_hour = 36.0\n'
    )
    assert run_gpubox("up", "--detach", "--no-sync", "--no-services", cwd=project).returncode == 0
    done = run_gpubox("run", "-f", "--", "sleep", "1", cwd=project)
    assert done.returncode == 0, done.stderr
    run_id = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("started "))
    document = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    (row,) = [r for r in document["runs"] if r["id"] == run_id]
    assert row["host"] == "local" and row["state"] == "succeeded"
    # 36 $/h is a cent per second: a 1 s run costs about a cent (start-up time included).
    assert 0.009 <= row["spent_usd"] <= 0.03, row
    text = run_gpubox("cost", cwd=project).stdout
    (line,) = [line for line in text.splitlines() if line.startswith(f"    {run_id} ")]
    assert line.split()[1:3] == ["succeeded", "0.00"] and "$0.0" in line, text


def test_the_runs_table_fits_the_terminal_and_json_has_every_metric(project: Path) -> None:
    """A run whose progress names many metrics (Keras's log line of a multi-output model) and a long command:
    the table keeps to the terminal's width, loss and accuracy first; `--json` carries everything."""
    names = ["loss", "accuracy", "val_loss", "val_accuracy"] + [f"head_{n}_precision" for n in range(8)]
    line = " - ".join(f"{name}: 0.{n + 1:04d}" for n, name in enumerate(names))
    (project / "job.py").write_text(
        f"import time\nprint('Epoch 3/8', flush=True)\nprint('10/10 [====] - 1s - {line}', flush=True)\n"
        "time.sleep(60)\n"
    )
    long_argument = "--config=" + "x" * 120
    started = run_gpubox("run", "--", "python3", "job.py", long_argument, cwd=project)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.splitlines()[-2].split()[1]
    try:

        def metrics() -> dict[str, float]:
            progress = _runs(project)[run_id].get("progress") or {}
            return dict(progress.get("metrics") or {})  # type: ignore[union-attr]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not metrics():
            time.sleep(0.5)
        assert sorted(metrics()) == sorted(names)
        for width, progress in ((80, "3/8 · loss 0.0001  "), (120, "3/8 · loss 0.0001 · accuracy 0.0002 · ")):
            table = run_gpubox("runs", cwd=project, env=dict(os.environ, COLUMNS=str(width)))
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            assert max(len(text) for text in lines) <= width, table.stdout
            (row,) = [text for text in lines if text.startswith(run_id + " ")]
            assert progress in row and "…  python3 job" not in row, row  # whole metrics, never half of one
            assert "  python3 job" in row and row.endswith("…"), row
        # Piped with no width known: not cut to any terminal, the first metrics and the whole-ish command.
        piped = run_gpubox("runs", cwd=project, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
        (row,) = [text for text in piped.stdout.splitlines() if text.startswith(run_id + " ")]
        assert "val_accuracy 0.0004" in row, row
    finally:
        run_gpubox("stop", run_id, "--grace", "1", cwd=project)


EVENT_WRITER = '''
import os, socket, struct, sys, time

def varint(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)

def field(number, wire, payload):
    return varint(number << 3 | wire) + payload

def scalar(step, tag, value):
    """One TensorBoard event holding a simple_value scalar (PyTorch's SummaryWriter writes these)."""
    item = field(1, 2, varint(len(tag)) + tag.encode()) + field(2, 5, struct.pack("<f", value))
    summary = field(1, 2, varint(len(item)) + item)
    event = field(1, 1, struct.pack("<d", time.time())) + field(2, 0, varint(step)) + field(5, 2, varint(len(summary)) + summary)
    return struct.pack("<Q", len(event)) + bytes(4) + event + bytes(4)

folder = sys.argv[1]
os.makedirs(folder, exist_ok=True)
name = "events.out.tfevents.%d.%s.%d.0" % (time.time(), socket.gethostname(), os.getpid())
with open(os.path.join(folder, name), "wb") as handle:
    for step in range(3):
        handle.write(scalar(step, "Loss/train", 0.5 / (step + 1)))
print("written", flush=True)
time.sleep(float(sys.argv[2]))
'''


def test_a_run_from_a_subfolder_finds_the_event_files_it_writes_there(project: Path) -> None:
    """`cd src && gpubox run -- python writer.py`: the script writes ``logs/x`` relative to where it runs, which is
    the host's copy of src/; those scalars are the run's metrics, and so are the ones under the project's own
    output folders."""
    (project / "src").mkdir()
    (project / "src" / "writer.py").write_text(EVENT_WRITER)
    (project / "gpubox.toml").write_text("")  # the project root, however deep gpubox is called from
    started = run_gpubox(
        "run",
        "--",
        "sh",
        "-c",
        "python3 writer.py logs/x 0 && python3 writer.py ../runs/y 60",
        cwd=project / "src",
    )
    assert started.returncode == 0, started.stderr
    run_id = next(line.split()[1] for line in started.stdout.splitlines() if line.startswith("started "))
    try:
        metrics: dict[str, object] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(metrics) < 2:
            metrics = dict((_runs(project)[run_id].get("progress") or {}).get("metrics") or {})  # type: ignore[union-attr]
            time.sleep(0.5)
        assert metrics == {"x/Loss/train": pytest.approx(0.5 / 3), "y/Loss/train": pytest.approx(0.5 / 3)}
    finally:
        run_gpubox("stop", run_id, "--grace", "1", cwd=project)
