"""The guardian's share of the rules, without a host: the idle rules and the duration format are the laptop's
own (one implementation), its GPU reading agrees with the laptop's parser on real captures, and the ledger takes
a guardian's stop time for an interval whose holder died."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gpubox.actions import monitor
from gpubox.fmt import format_duration
from gpubox.remote.agent import host
from gpubox.remote.gpu.readings import gpu_readings
from gpubox.state import DIED_REASON, State

CAPTURE = Path(__file__).parents[1] / "data" / "nvidia-smi" / "30_h200_590_query-gpu-full.csv.txt"


def test_the_laptop_runs_the_agent_files_idle_rules() -> None:
    assert monitor.busy_reasons is host.busy_reasons and monitor.IdleTracker is host.IdleTracker


@pytest.mark.parametrize("seconds", [0, 0.9, 59, 61, 3599, 3600, 86399, 86400, 90061, 10 * 86400 + 5])
def test_durations_read_the_same_on_both_sides(seconds: float) -> None:
    assert host.format_duration(seconds) == format_duration(seconds)


def _csv(rows: list[str], header: str = "index, name, utilization.gpu [%]") -> dict[str, object]:
    return {"available": True, "exit_code": 0, "output": "\n".join([header, *rows]) + "\n"}


@pytest.mark.parametrize(
    "rows",
    [
        ["0, NVIDIA H200, 90 %"],
        ["0, NVIDIA H100 80GB HBM3, 0 %", "1, NVIDIA H100 80GB HBM3, 37 %"],
        ["0, NVIDIA A100-SXM4-80GB, [N/A]"],
        ["0, NVIDIA GeForce RTX 4090, 3 %", "1, NVIDIA GeForce RTX 4090, [N/A]"],
    ],
)
def test_the_guardians_gpu_reading_agrees_with_the_laptops(rows: list[str]) -> None:
    answer = _csv(rows)
    assert host.busiest_gpu_percent(answer) == gpu_readings(answer).busiest()


def test_the_guardians_gpu_reading_of_a_real_capture_and_of_no_gpu() -> None:
    # The real H200 capture, cut to the columns the idle query asks for.
    header, row = CAPTURE.read_text().splitlines()[:2]
    names = [c.strip() for c in header.split(",")]
    cells = [c.strip() for c in row.split(",")]
    util = next(i for i, name in enumerate(names) if name.startswith("utilization.gpu"))
    answer = _csv([f"0, {cells[names.index('name')]}, {cells[util]}"])
    assert host.busiest_gpu_percent(answer) == gpu_readings(answer).busiest()
    missing = {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
    assert host.busiest_gpu_percent(missing) == (None, "no GPU") == gpu_readings(missing).busiest()


def test_the_ledger_bills_a_dead_holders_interval_until_the_guardians_stop(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with State(tmp_path / "s.db") as state:
        interval = state.open_billing("box", 3600.0, at=1000.0, holder_pid=gone.pid, holder_token="t")
        assert state.heartbeat_billing(interval, 100.0, 1100.0, holder_pid=gone.pid, holder_token="t")
        assert not state.record_guardian_stop("box", 1050.0, "autostop (by the guardian)")  # before its end
        assert state.record_guardian_stop("box", 1500.0, "autostop (by the guardian)")
        (fixed,) = state.billing()
        assert (fixed.held_seconds, fixed.ended_at, fixed.end_reason) == (
            500.0,
            1500.0,
            "autostop (by the guardian)",
        )
        assert not state.record_guardian_stop("box", 1600.0, "autostop (by the guardian)")  # once
        state.open_billing("box", 3600.0, at=2000.0, holder_pid=gone.pid, holder_token="t")
        state.repair_billing("box")
        assert state.billing()[-1].end_reason == DIED_REASON
        assert not state.record_guardian_stop("box", 1900.0, "autostop (by the guardian)")  # not the latest


def test_a_rented_hosts_guardian_leaves_the_stop_to_a_laptop_that_is_there_or_stopping_it(
    tmp_path: Path,
) -> None:
    import time

    guardian = host._Guardian(str(tmp_path))
    guardian.laptop_fresh = True
    assert guardian._laptop_holds({})
    guardian.laptop_fresh = False
    assert not guardian._laptop_holds({})
    # Pulling the outputs before terminating sends no beats: its word that it is stopping the host holds a while.
    assert guardian._laptop_holds({"stopping_until": time.time() + 60})
    assert not guardian._laptop_holds({"stopping_until": time.time() - 1})


def test_status_says_who_stops_a_rented_host() -> None:
    from gpubox.actions.hosts import guardian_lines

    report = {
        "running": True,
        "pid": 7,
        "acts": True,
        "action": "stop it through the vast API (its disk kept)",
    }
    (line,) = guardian_lines(dict(report, laptop_first=True), 0.0)
    assert line == (
        "guardian  pid 7 on the host; if this laptop is gone when due, it will stop it through the vast API (its "
        "disk kept) itself (while the laptop holds it, the laptop brings the outputs home and terminates it)"
    )
    (line,) = guardian_lines({"running": True, "pid": 7, "acts": False, "cannot": "no key"}, 0.0)
    assert line == "guardian  pid 7 on the host; cannot stop it alone: no key"
