"""The runs panel: active runs and the last finished ones of each host that is up; its cursor selects the run
whose log and curves the panels beside show."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.message import Message

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.tui.components.runs_table import RunsTable
from gpubox.tui.components.tables import SnapshotTable
from gpubox.tui.screens.main.panels.base import Panel

__all__ = ["RunsPanel"]


class RunsPanel(RunsTable, Panel):
    PANEL_ID = "runs"
    REGION = "column"
    TITLE = "Runs"
    HELP_NAME = "Runs"
    HELP_TEXT = (
        "active runs and the last finished ones of each host that is up; select one to follow its log and curves "
        "(enter opens the log full screen)."
    )

    @dataclass
    class RunHighlighted(Message):
        """The cursor is on another run: the app follows its log and curves."""

        host: str
        run_id: str

    @dataclass
    class RunChosen(Message):
        """Enter (or a click) on a run: the app shows its log full screen."""

        host: str
        run_id: str

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        self.show_views(snapshot.runs, keep=snapshot.selected.key if snapshot.selected is not None else None)
        active = sum(1 for r in snapshot.runs if not r.finished)
        self.show_title(f"Runs · {active} active · {len(snapshot.runs)} shown")

    @on(SnapshotTable.RowHighlighted)
    def _highlighted(self, event: SnapshotTable.RowHighlighted) -> None:
        event.stop()
        if self.is_current(event.cursor_row):
            host, _, run_id = event.row_key.rpartition("/")
            self.post_message(self.RunHighlighted(host, run_id))

    @on(SnapshotTable.RowSelected)
    def _chosen(self, event: SnapshotTable.RowSelected) -> None:
        event.stop()
        host, _, run_id = event.row_key.rpartition("/")
        self.post_message(self.RunChosen(host, run_id))
