"""Ctrl-C while following a run (`run -f`, `logs -f`) stops only the following: gpubox says the run keeps
running and how to stop it, through the real CLI on the real local host."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_gpubox

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (folder / "job.py").write_text("import time\nprint('working', flush=True)\ntime.sleep(120)\n")
    yield folder
    run_gpubox("down", "local", cwd=folder)


def _follow_then_interrupt(project: Path, *args: str) -> tuple[int, str, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", *args],
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        seen.append(line)
        if line.strip() == "working" or not line:
            break
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"still running 60 s after Ctrl-C: {''.join(seen) + stdout!r} {stderr!r}"
        ) from None
    return process.returncode, "".join(seen) + stdout, stderr


def _state(project: Path, run_id: str) -> str:
    listing = run_gpubox("runs", "--json", cwd=project)
    (run,) = [r for r in json.loads(listing.stdout)["runs"] if r["id"] == run_id]
    return str(run["state"])


def test_ctrl_c_on_run_follow_and_logs_follow_says_the_run_goes_on(project: Path) -> None:
    code, stdout, stderr = _follow_then_interrupt(project, "run", "-f", "--", "python3", "job.py")
    run_id = next(line.split()[1] for line in stdout.splitlines() if line.startswith("started "))
    assert code == 130, (stdout, stderr)
    assert "Traceback" not in stderr
    assert stderr.splitlines() == [
        f"gpubox: interrupted: {run_id} keeps running on local; `gpubox stop {run_id}` stops it, "
        f"`gpubox logs {run_id} -f` follows it again"
    ]
    assert _state(project, run_id) == "running"

    code, stdout, stderr = _follow_then_interrupt(project, "logs", run_id, "-f")
    assert code == 130 and "working" in stdout, (stdout, stderr)
    assert stderr.splitlines()[-1].startswith(f"gpubox: interrupted: {run_id} keeps running on local; ")
    assert _state(project, run_id) == "running"
    assert run_gpubox("stop", run_id, "--grace", "1", cwd=project).returncode == 0
