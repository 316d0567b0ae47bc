"""Outputs come home as they are written, through the real CLI on the real local host: while `gpubox up` holds
it, a checkpoint a run writes reaches the laptop before the run ends, never half-written; a growing log comes
as it grows; a local edit is kept aside; `gpubox status` says how far behind the local copy is; and the last
pull completes before an autostop stops the host."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpubox import paths
from gpubox.remote.providers.local import LocalSshd
from tests.support.cli import run_gpubox
from tests.support.hosthome import host_home

pytestmark = pytest.mark.integration

CHUNKS = 16
CHUNK = 65536
WRITER = f"""
import os, sys, time
os.makedirs("checkpoints", exist_ok=True)
os.makedirs("logs", exist_ok=True)
log = open("logs/train.log", "a")
for epoch in (1, 2):
    # A checkpoint written slowly, piece by piece (faster than the follower looks: it must wait for the end).
    with open("checkpoints/ckpt-%d.bin" % epoch, "wb") as handle:
        for piece in range({CHUNKS}):
            handle.write(bytes([epoch]) * {CHUNK})
            handle.flush()
            time.sleep(0.1)
    log.write("epoch %d done\\n" % epoch)
    log.flush()
deadline = time.time() + 120
while not os.path.exists("release") and time.time() < deadline:
    time.sleep(0.1)
"""


def _wait(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "train.py").write_text(WRITER)
    yield folder
    with contextlib.suppress(Exception):
        run_gpubox("down", "--yes", cwd=folder, timeout=60)


def _up(project: Path) -> None:
    done = run_gpubox("up", "--detach", "--no-services", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr


def _outputs(project: Path) -> dict[str, Any]:
    document = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    found: dict[str, Any] = document["hosts"][0].get("outputs") or {}
    return found


def test_a_checkpoint_comes_home_while_the_run_goes_on_and_never_half_written(
    project: Path, tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{remote}"\n')
    (project / "gpubox.toml").write_text("[sync]\npull_outputs_seconds = 1\n")
    _up(project)
    started = run_gpubox("run", "--", "python3", "train.py", cwd=project)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"\br-\d+\b", started.stdout).group(0)  # type: ignore[union-attr]
    run_dir = host_home() / ".gpubox" / "runs" / run_id

    local = [project / "checkpoints" / f"ckpt-{n}.bin" for n in (1, 2)]
    whole = CHUNKS * CHUNK
    deadline = time.monotonic() + 90
    while not all(p.exists() for p in local):
        assert time.monotonic() < deadline, "the checkpoints did not come home"
        for path in local:
            with contextlib.suppress(FileNotFoundError):
                # Whenever a checkpoint is there under its name, it is whole: never taken half-written.
                assert path.stat().st_size == whole, (path, path.stat().st_size)
        time.sleep(0.02)
    assert not (run_dir / "exit_code").exists(), "the run ended before its checkpoints came home"
    assert local[1].read_bytes() == bytes([2]) * whole
    assert not [p for p in project.rglob("*") if ".gpubox-pull-" in p.name]
    # The growing log comes too (its new lines, as they are written).
    _wait(
        lambda: (
            "epoch 2 done" in (project / "logs" / "train.log").read_text()
            if (project / "logs" / "train.log").exists()
            else False
        ),
        what="the log",
    )
    document = _wait(
        lambda: (o := _outputs(project)).get("behind_files") == 0 and o.get("last_pull_at") and o,
        what="status to show the outputs up to date",
    )
    assert document["pulled_files"] >= 3
    assert re.search(r"outputs   up to date, last pulled \d+ s ago", run_gpubox("status", cwd=project).stdout)

    # A local edit is never overwritten silently: the host's new checkpoint replaces it, the edit is kept aside.
    local[0].write_bytes(b"my own edit")
    time.sleep(0.05)
    (remote / "checkpoints" / "ckpt-1.bin").write_bytes(b"the host's newer checkpoint")
    _wait(lambda: local[0].read_bytes() == b"the host's newer checkpoint", what="the host's new checkpoint")
    kept = list((project / "checkpoints").glob("ckpt-1.bin.gpubox-local-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"my own edit"
    assert "kept aside" in _up_log(project)

    (remote / "release").write_text("")
    _wait(lambda: (run_dir / "exit_code").exists(), what="the run to end")


def _up_log(project: Path) -> str:
    text = ""
    for log in (paths.state_dir() / "logs").glob("up-local*.log"):
        text += log.read_text(errors="replace")
    return text


def test_the_last_pull_completes_before_an_autostop(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (project / "hosts.toml").write_text(
        f'[hosts.local]\nremote_dir = "{remote}"\nautostop_minutes = 0.1\n'  # a 6 s window
    )
    # No background pull in this test: only the last one before the stop brings the checkpoint home.
    (project / "gpubox.toml").write_text("[sync]\npull_outputs_seconds = 3600\n")
    _up(project)
    (remote / "checkpoints").mkdir(parents=True, exist_ok=True)
    (remote / "checkpoints" / "final.bin").write_bytes(b"\x07" * 300_000)
    _wait(lambda: LocalSshd().running() is None, timeout=90, what="autostop to stop the local sshd")
    assert (project / "checkpoints" / "final.bin").read_bytes() == b"\x07" * 300_000
    # The supervisor says what it did just after doing it.
    _wait(lambda: "stopped the local sshd" in _up_log(project), what="the stop in the log")
    log = _up_log(project)
    pulled = log.index("pulled outputs: 1 fetched")
    assert pulled < log.index("stopped the local sshd"), log


EPOCHS = """
import time
print("Epoch 1/2000", flush=True)
time.sleep(0.5)
print("Epoch 2/2000", flush=True)
time.sleep(120)
"""


def test_cost_to_finish_in_runs_and_status_with_a_budget_warning_once(project: Path, tmp_path: Path) -> None:
    # $36/h is a cent a second; finishing 1998 more epochs of at least 0.5 s passes the $0.50 budget.
    (project / "hosts.toml").write_text(
        f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\nprice_per_hour = 36\nbudget_usd = 0.5\n'
        'on_budget = "warn"\n'
    )
    (project / "epochs.py").write_text(EPOCHS)
    done = run_gpubox("up", "--detach", "--no-services", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    with_eta = run_gpubox("run", "--", "python3", "epochs.py", cwd=project)
    without = run_gpubox("run", "--", "sleep", "120", cwd=project)
    first = re.search(r"\br-\d+\b", with_eta.stdout).group(0)  # type: ignore[union-attr]
    second = re.search(r"\br-\d+\b", without.stdout).group(0)  # type: ignore[union-attr]
    try:

        def listed() -> dict[str, Any]:
            document = json.loads(run_gpubox("runs", "--json", cwd=project).stdout)
            return {row["id"]: row for row in document["runs"]}

        rows = _wait(lambda: (r := listed())[first]["money"]["to_finish_usd"] and r, what="an ETA")
        money = rows[first]["money"]
        assert money["price_per_hour"] == 36
        assert money["to_finish_usd"] == pytest.approx(money["eta_seconds"] * 36 / 3600, rel=0.01)
        assert money["to_finish_usd"] > 5  # at least 0.5 s × 1998 epochs at a cent a second
        assert money["spent_usd"] > 0 and money["to_finish_why"] is None
        assert rows[first]["budget_warnings"] and "$0.50" in rows[first]["budget_warnings"][0]
        other = rows[second]["money"]
        assert other["to_finish_usd"] is None and "no ETA" in other["to_finish_why"]
        assert not rows[second]["budget_warnings"]

        table = run_gpubox("runs", cwd=project).stdout
        assert "to finish" in table and "—" in table
        assert f"! run {first} needs ~$" in table and "left of local's budget of $0.50" in table

        status = _wait(
            lambda: (
                (text := run_gpubox("status", cwd=project).stdout)
                and f"run       {first}: $" in text
                and text
            ),
            what="status to show the runs' cost to finish",
        )
        assert re.search(rf"run       {first}: \$\d+\.\d\d so far · \$\d+\.\d\d to finish \(ETA ", status), (
            status
        )
        assert f"run       {second}: $" in status and "— to finish (no ETA" in status
        time.sleep(11)  # another look of the supervisor: the warning is not said again
        log = _up_log(project)
        assert log.count(f"run {first} needs") == 1, log
    finally:
        for run_id in (first, second):
            run_gpubox("stop", run_id, cwd=project)
