"""The main screen: hosts, runs, the selected run's log and curves, live sync and tunnels, each a panel of
its own (:mod:`.panels`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer

from gpubox.dashboard.views import DashboardSnapshot
from gpubox.tui.screens.main.panels import PANELS
from gpubox.tui.screens.main.panels.base import Panel, Region
from gpubox.tui.screens.main.panels.hosts import HostsPanel
from gpubox.tui.screens.main.panels.log import LogPanel
from gpubox.tui.screens.main.panels.runs import RunsPanel

__all__ = ["MainScreen"]

NARROW_BELOW = 120
TALL_FROM = 40


class MainScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "find", "Find", show=False),
        Binding("f", "follow", "Follow log", show=False),
        Binding("escape", "close_find", "Close find", show=False),
    ]

    def __init__(self, draw: Callable[[], None]) -> None:
        """*draw* draws the app's snapshot on its screens. It is called as soon as the panels exist, before
        the first layout: a message would be handled after it, and the panels would be laid out empty, then
        drawn (the bottom lines and the log's end land elsewhere; the snapshot tests show it)."""
        super().__init__(id="dashboard")
        self.draw = draw
        self.panels: tuple[Panel, ...] = tuple(panel(id=panel.PANEL_ID) for panel in PANELS)

    def _placed(self, region: Region) -> list[Panel]:
        return [panel for panel in self.panels if region == panel.REGION]

    def compose(self) -> ComposeResult:
        yield from self._placed("top")
        with Vertical(id="main"):
            yield from self._placed("column")
            with Horizontal(id="run-panel"):
                yield from self._placed("side by side")
            yield from self._placed("bottom")
        yield Footer()

    def on_mount(self) -> None:
        for panel in self.panels:
            if panel.TITLE:
                panel.border_title = panel.TITLE
        self._fit(self.app.size.width)
        self.query_one(HostsPanel).focus()
        self.draw()

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int | None = None) -> None:
        self.set_class(width < NARROW_BELOW, "-narrow")
        self.set_class((height if height is not None else self.app.size.height) >= TALL_FROM, "-tall")
        for panel in self.panels:
            panel.fit(width)

    def show_host(self, name: str) -> None:
        self.query_one(HostsPanel).select_key(name)

    # -- the log's find

    def action_find(self) -> None:
        self.query_one(LogPanel).open_find()

    def action_close_find(self) -> None:
        if self.query_one(LogPanel).close_find():
            self.query_one(RunsPanel).focus()

    def action_follow(self) -> None:
        self.query_one(LogPanel).follow()

    # -- drawing

    def apply_snapshot(self, snapshot: DashboardSnapshot) -> None:
        # The hosts panel first: its cursor says which host the other panels describe.
        hosts = self.query_one(HostsPanel)
        hosts.show(snapshot, None)
        host = snapshot.host(hosts.selected_key) if hosts.selected_key else None
        for panel in self.panels:
            if panel is not hosts:
                panel.show(snapshot, host)
