"""The hosts panel: every configured host and those a gpubox process holds; its cursor selects the host the
other panels describe."""

from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.message import Message

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.tui.components.hosts_table import HostsTable
from gpubox.tui.components.tables import SnapshotTable
from gpubox.tui.screens.main.panels.base import Panel

__all__ = ["HostsPanel"]


class HostsPanel(HostsTable, Panel):
    PANEL_ID = "hosts"
    REGION = "column"
    TITLE = "Hosts"
    HELP_NAME = "Hosts"
    HELP_TEXT = (
        "every configured host, and those a gpubox process holds: state, GPUs (utilisation and memory over the "
        "last minutes), the compatibility badge (the reasons show below the table for the selected host; k has "
        "the full check), $/h, time up, spent, budget, autostop countdown."
    )

    @dataclass
    class HostHighlighted(Message):
        """The cursor is on another host: the app acts on it, the other panels describe it."""

        name: str

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        self.show_views(snapshot.hosts)
        up = sum(1 for h in snapshot.hosts if h.is_up)
        self.show_title(f"Hosts · {up} up of {len(snapshot.hosts)}")

    @on(SnapshotTable.RowHighlighted)
    def _highlighted(self, event: SnapshotTable.RowHighlighted) -> None:
        event.stop()
        if self.is_current(event.cursor_row):
            self.post_message(self.HostHighlighted(event.row_key))
