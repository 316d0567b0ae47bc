"""The sweeps screen: drawn from a view at 80x24 and 200x50, the order toggled; and live, on a real sweep run by
the real command line on the local host: its trials, the best-so-far curve, a trial's log, stopping it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import Static

from gpubox.config import load_hosts, load_project
from gpubox.dashboard.sweeps import SweepDetail, SweepRow, SweepsView, TrialRow, best_so_far
from gpubox.tui.components.sweep_tables import SweepsTable, TrialsTable
from gpubox.tui.screens.details import LinesScreen
from gpubox.tui.screens.modals import ConfirmScreen
from gpubox.tui.screens.sweeps import SweepsScreen, TrialLogScreen
from tests.integration.test_sweep import TRIAL
from tests.support.cli import run_gpubox
from tests.tui.conftest import RecordingApp, wait_until


def _trial(number: int, state: str, value: float | None, **params: Any) -> TrialRow:
    return TrialRow(
        number, state, value, params, "a100", number % 2, f"r-{number + 10}", 60.0 + number, 0.01, ""
    )


def _view() -> SweepsView:
    trials = (
        _trial(0, "complete", 0.91, lr=0.001, units=64),
        _trial(1, "complete", 0.97, lr=0.01, units=128),
        _trial(2, "pruned", 0.42, lr=0.1, units=32),
        _trial(3, "failed", None, lr=0.3, units=32),
        _trial(4, "running", None, lr=0.02, units=128),
    )
    detail = SweepDetail(
        "digits", "val_accuracy", "maximize", "running", None, trials, 1, best_so_far(trials, "maximize")
    )
    rows = (
        SweepRow("digits", "running", "val_accuracy", "maximize", 4, 8, 0.97, 1, 0.05, "/home/me/digits"),
        SweepRow("old", "finished", "loss", "minimize", 6, 6, 0.12, 4, 0.0, "/home/me/old"),
    )
    return SweepsView(rows, detail)


def test_best_so_far_only_improves() -> None:
    trials = (
        _trial(0, "complete", 0.5),
        _trial(1, "complete", 0.4),
        _trial(2, "pruned", 0.9),
        _trial(3, "complete", 0.7),
    )
    assert best_so_far(trials, "maximize") == ((0.0, 0.5), (1.0, 0.5), (3.0, 0.7))
    assert best_so_far(trials, "minimize") == ((0.0, 0.5), (1.0, 0.4), (3.0, 0.4))


@pytest.mark.parametrize("size", [(80, 24), (200, 50)])
async def test_the_screen_draws_a_view_and_orders_trials_best_first_or_by_number(
    tmp_path: Path, size: tuple[int, int]
) -> None:
    (tmp_path / "gpubox.toml").write_text("")
    app = RecordingApp(load_hosts(tmp_path), load_project(tmp_path), live=False)
    async with app.run_test(size=size) as pilot:
        await pilot.press("w")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SweepsScreen)
        screen.show(_view())
        await pilot.pause()
        assert screen.query_one(SweepsTable).row_count == 2
        trials = screen.query_one(TrialsTable)
        order = [trials.get_cell(str(n), "number") for n in range(5)]
        assert all(isinstance(cell, Text) for cell in order)
        keys = [trials._rows[i] for i in range(trials.row_count)]
        assert keys == ["1", "0", "2", "4", "3"]  # complete by value, then pruned, running, failed
        await pilot.press("b")
        assert [trials._rows[i] for i in range(trials.row_count)] == ["0", "1", "2", "3", "4"]
        curve = str(screen.query_one("#sweep-curve", Static).render())
        assert "best 0.97 · trial 1" in curve
        title = str(screen.query_one("#sweeps-title", Static).render())
        assert "digits: maximize val_accuracy · running" in title
        await pilot.press("escape")
        assert not isinstance(app.screen, SweepsScreen)


@pytest.mark.integration
async def test_a_real_sweep_on_the_screen_its_trial_log_and_stopping_it(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".git").mkdir()
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (project / ".gitignore").write_text("hosts.toml\n")
    (project / "trial.py").write_text(TRIAL)
    (project / "gpubox.toml").write_text(
        '[sweep]\ncommand = "python3 trial.py --units {units} --epochs 60 --pause 1"\nmetric = "val_accuracy"\n'
        'direction = "maximize"\nsampler = "grid"\n\n[sweep.params]\nunits = [32, 64]\n'
    )
    try:
        started = run_gpubox("sweep", cwd=project)
        assert started.returncode == 0, started.stderr
        app = RecordingApp(load_hosts(project), load_project(project))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("w")
            screen = app.screen
            assert isinstance(screen, SweepsScreen)

            def running() -> bool:
                detail = screen.view.detail
                return detail is not None and any(t.state == "running" and t.run for t in detail.trials)

            await wait_until(pilot, running, 90, "a running trial on the screen")
            assert screen.query_one(SweepsTable).row_count == 1
            await pilot.press("l")
            await wait_until(pilot, lambda: isinstance(app.screen, TrialLogScreen), 10, "the trial log")
            log_screen = app.screen
            assert isinstance(log_screen, LinesScreen)
            await wait_until(
                pilot, lambda: any(line.startswith("env ") for line in log_screen.lines), 30, "its lines"
            )
            env = json.loads(next(line for line in log_screen.lines if line.startswith("env "))[4:])
            assert env["GPUBOX_SWEEP"] == "proj"
            await pilot.press("escape")
            await pilot.press("s")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question")
            await pilot.press("y")
            await wait_until(
                pilot,
                lambda: any("sweep proj stopped" in text for _t, text, _s in app.notified),
                90,
                "the sweep to stop",
            )
            await wait_until(
                pilot,
                lambda: screen.view.detail is not None and screen.view.detail.state == "stopped",
                30,
                "stopped",
            )
    finally:
        run_gpubox("sweep", "--stop", cwd=project)
        run_gpubox("down", "local", cwd=project)
