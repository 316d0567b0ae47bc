"""The selected run's log, full screen: follows the end, scrolls, finds text."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from gpubox.dashboard.views import DashboardSnapshot
from gpubox.tui.components.log_view import RunLog

__all__ = ["LogsScreen"]


class LogsScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back"),
        Binding("slash", "find", "Find"),
        Binding("n", "next_match", "Next match"),
        Binding("f,end", "follow", "Follow"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(id="logs-title", classes="screen-title")
        yield RunLog(id="full-log")
        yield Input(placeholder="find in the log (enter: next match, esc: close)", id="logs-find")
        yield Footer()

    def __init__(self, snapshot: DashboardSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot
        """The last snapshot shown (the app sends each new one)."""

    def on_mount(self) -> None:
        self.query_one("#logs-find", Input).display = False
        self.apply_snapshot(self.snapshot)
        self.query_one(RunLog).focus()

    def apply_snapshot(self, snapshot: DashboardSnapshot) -> None:
        self.snapshot = snapshot
        selected = snapshot.selected
        log = self.query_one(RunLog)
        log.show(selected)
        title = self.query_one("#logs-title", Static)
        if selected is None:
            title.update("no run selected: pick one in the runs table")
            return
        where = "following" if log.following else "paused (f follows)"
        found = f" · match {log.match_index + 1}/{len(log.matches)}" if log.query_text and log.matches else ""
        title.update(
            f"{selected.run_id} on {selected.host} · {selected.state} · {selected.command} · "
            f"{selected.first_line + len(selected.lines)} lines · {where}{found}"
        )

    def action_back(self) -> None:
        if self.query_one("#logs-find", Input).has_focus:
            self._close_find()
            return
        self.dismiss(None)

    def action_find(self) -> None:
        field = self.query_one("#logs-find", Input)
        field.display = True
        field.focus()

    def action_next_match(self) -> None:
        log = self.query_one(RunLog)
        if log.query_text:
            log.search(log.query_text)
            self._refresh_title()

    def action_follow(self) -> None:
        self.query_one(RunLog).follow()
        self._refresh_title()

    @on(Input.Submitted, "#logs-find")
    def found(self, event: Input.Submitted) -> None:
        _number, total = self.query_one(RunLog).search(event.value)
        if not total and event.value:
            self.notify(f"{event.value!r} is not in the log", severity="warning")
        self._refresh_title()

    def _close_find(self) -> None:
        field = self.query_one("#logs-find", Input)
        field.display = False
        self.query_one(RunLog).end_search()
        self.query_one(RunLog).focus()

    def _refresh_title(self) -> None:
        self.apply_snapshot(self.snapshot)
