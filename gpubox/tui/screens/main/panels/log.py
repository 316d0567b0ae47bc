"""The selected run's log as it comes, with a find field (/ finds, enter: next match, esc: close, f: follow)."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.tui.components.log_view import RunLog
from gpubox.tui.components.runs_table import RUN_STYLES
from gpubox.tui.screens.main.panels.base import Panel

__all__ = ["LogPanel"]


class LogPanel(Vertical, Panel):
    PANEL_ID = "log-box"
    REGION = "side by side"
    TITLE = "Log"
    HELP_NAME = "Log"
    HELP_TEXT = "the selected run's output as it comes; / finds, f follows again."

    def compose(self) -> ComposeResult:
        yield RunLog(id="log")
        yield Input(placeholder="find in the log (enter: next match, esc: close)", id="find")

    def on_mount(self) -> None:
        self.query_one("#find", Input).display = False

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        selected = snapshot.selected
        log = self.query_one(RunLog)
        log.show(selected)
        if selected is None:
            self.show_title("Log")
            return
        title = Text(f"{selected.run_id} on {selected.host} · ")
        title.append(selected.state, style=RUN_STYLES.get(selected.state, ""))
        title.append(f" · {selected.command}")
        self.show_title(title)
        if not log.query_text:
            self.border_subtitle = "" if log.following else "paused · f follows"

    # -- find

    def open_find(self) -> None:
        field = self.query_one("#find", Input)
        field.display = True
        field.focus()

    def close_find(self) -> bool:
        """Close the find field and follow the log again; False when it was not open."""
        field = self.query_one("#find", Input)
        if not field.display:
            return False
        field.display = False
        self.query_one(RunLog).end_search()
        return True

    def follow(self) -> None:
        self.query_one(RunLog).follow()

    @on(Input.Submitted, "#find")
    def _find_next(self, event: Input.Submitted) -> None:
        number, total = self.query_one(RunLog).search(event.value)
        if total:
            self.border_subtitle = f"match {number}/{total} · enter: next · esc: close · f: follow"
        else:
            self.border_subtitle = f"no match for {event.value!r}"
