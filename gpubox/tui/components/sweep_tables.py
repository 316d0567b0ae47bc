"""The sweeps screen's two tables: the sweeps, and the chosen sweep's trials."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text

from gpubox.dashboard.sweeps import SweepRow, TrialRow
from gpubox.fmt import format_usd
from gpubox.tui.components.tables import Column, ViewTable

__all__ = ["SWEEP_STYLES", "TRIAL_STYLES", "SweepsTable", "TrialsTable"]

SWEEP_STYLES = {
    "running": "bold cyan",
    "finished": "green",
    "stopped": "yellow",
    "failed": "bold red",
    "interrupted": "yellow",
}
TRIAL_STYLES = {"running": "bold cyan", "complete": "green", "pruned": "yellow", "failed": "bold red"}


def _number(value: float | None) -> str:
    return "" if value is None else format(value, ".4g")


class SweepsTable(ViewTable[SweepRow]):
    WIDE = (
        Column("name", "Sweep", 16),
        Column("state", "State", 11),
        Column("trials", "Trials", 7),
        Column("metric", "Metric", 24),
        Column("best", "Best", 14),
        Column("cost", "Cost", 9),
        Column("project", "Project", 40),
    )
    MEDIUM = WIDE[:6]
    NARROW = (
        Column("name", "Sweep", 14),
        Column("state", "State", 11),
        Column("trials", "Trials", 7),
        Column("best", "Best", 14),
        Column("cost", "Cost", 8),
    )

    def key(self, view: SweepRow) -> str:
        return view.name

    def cells(self, view: SweepRow) -> dict[str, RenderableType]:
        best = "" if view.best is None else f"{_number(view.best)} (#{view.best_number})"
        return {
            "name": Text(view.name, style="bold"),
            "state": Text(view.state, style=SWEEP_STYLES.get(view.state, "")),
            "trials": view.progress_text,
            "metric": f"{view.direction} {view.metric}".strip(),
            "best": best,
            "cost": "" if view.cost_usd is None else format_usd(view.cost_usd),
            "project": view.project_root or "",
        }


class TrialsTable(ViewTable[TrialRow]):
    WIDE = (
        Column("number", "#", 4),
        Column("state", "State", 9),
        Column("value", "Value", 9),
        Column("params", "Params", 34),
        Column("where", "Host:GPU", 12),
        Column("run", "Run", 7),
        Column("time", "Time", 8),
        Column("cost", "Cost", 8),
        Column("note", "Note", 30),
    )
    MEDIUM = (
        Column("number", "#", 4),
        Column("state", "State", 9),
        Column("value", "Value", 8),
        Column("params", "Params", 26),
        Column("where", "Host:GPU", 10),
        Column("time", "Time", 8),
        Column("cost", "Cost", 7),
    )
    NARROW = (
        Column("number", "#", 3),
        Column("state", "State", 8),
        Column("value", "Value", 6),
        Column("params", "Params", 20),
    )

    def key(self, view: TrialRow) -> str:
        return str(view.number)

    def cells(self, view: TrialRow) -> dict[str, RenderableType]:
        return {
            "number": Text(str(view.number), style="bold"),
            "state": Text(view.state, style=TRIAL_STYLES.get(view.state, "")),
            "value": view.value_text,
            "params": view.params_text,
            "where": view.where,
            "run": view.run or "",
            "time": view.duration_text,
            "cost": view.cost_text,
            "note": Text(view.note, style="dim"),
        }
