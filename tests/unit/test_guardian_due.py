"""Where the ledger of a rented host ends when its provider keeps no stop time (Lambda terminates, and forgets):
where the host's guardian was due to stop it, as the last report of the gpubox that held it and died said."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpubox.remote.providers.cloud import guardian_due
from gpubox.state import open_state

DEAD = 4_000_000  # above any pid this machine hands out in a test run
SEEN = 1_800_000_000.0


def _died_reporting(report: dict[str, Any], at: float = SEEN) -> None:
    with open_state() as state:
        state.record_monitor("box", DEAD, report, at=at)


@pytest.fixture(autouse=True)
def _state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUBOX_HOME", str(tmp_path / "gpubox"))


def _report(autostop: dict[str, Any] | None, **guardian: Any) -> dict[str, Any]:
    return {"autostop": autostop, "guardian": {"acts": True, **guardian}}


def test_idle_when_the_laptop_left_ends_at_the_countdown() -> None:
    _died_reporting(_report({"state": "counting", "stops_at": SEEN + 300}, deadline_at=SEEN + 900))
    assert guardian_due("box", now=SEEN + 3600) == SEEN + 300
    assert guardian_due("box", now=SEEN + 100) is None  # not due yet: it cannot have stopped it then


def test_the_deadline_or_the_budget_when_sooner_than_the_countdown() -> None:
    _died_reporting(_report({"state": "warned", "stops_at": SEEN + 300}, budget_stop_at=SEEN + 120))
    assert guardian_due("box", now=SEEN + 3600) == SEEN + 120


def test_without_autostop_the_deadline_is_when() -> None:
    _died_reporting(_report(None, deadline_at=SEEN + 600, budget_stop_at=None))
    assert guardian_due("box", now=SEEN + 3600) == SEEN + 600


def test_busy_or_unable_or_no_report_is_unknown() -> None:
    assert guardian_due("box", now=SEEN + 3600) is None
    _died_reporting(_report({"state": "busy", "stops_at": None}, deadline_at=SEEN + 600))
    assert guardian_due("box", now=SEEN + 3600) is None  # the run could have ended any time before
    _died_reporting({"autostop": {"state": "counting", "stops_at": SEEN + 60}, "guardian": {"acts": False}})
    assert guardian_due("box", now=SEEN + 3600) is None


def test_a_live_holders_report_is_not_a_dead_ones() -> None:
    import os

    with open_state() as state:
        state.record_monitor(
            "box", os.getpid(), _report({"state": "counting", "stops_at": SEEN + 60}), at=SEEN
        )
    assert guardian_due("box", now=SEEN + 3600) is None


def test_a_report_older_than_the_instance_or_than_a_live_holders_is_not_used() -> None:
    import os

    _died_reporting(_report({"state": "counting", "stops_at": SEEN + 300}))
    assert guardian_due("box", now=SEEN + 3600, since=SEEN + 10) is None  # about an instance before this one
    with open_state() as state:
        state.record_monitor("box", os.getpid(), _report({"state": "busy", "stops_at": None}), at=SEEN + 5)
    assert guardian_due("box", now=SEEN + 3600) is None  # a holder took over after the dead one


def test_a_new_holder_of_the_host_makes_the_dead_ones_report_history() -> None:
    import os

    _died_reporting(_report({"state": "counting", "stops_at": SEEN + 300}))
    with open_state() as state:
        state.claim_supervisor("box", os.getpid(), detached=True)
        state.release_supervisor("box", os.getpid())
    assert guardian_due("box", now=SEEN + 3600) is None
