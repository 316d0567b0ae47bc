"""The selected run's curves: loss and metrics from its TensorBoard event files, one plot per metric."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from gpubox.dashboard.views import Curve, DashboardSnapshot, HostView, curve_groups
from gpubox.tui.components.plot import CurvePlot
from gpubox.tui.screens.main.panels.base import Panel

__all__ = ["CurvesPanel"]


class CurvesPanel(Vertical, Panel):
    """The selected run's curves: as many metrics as fit, loss first."""

    PANEL_ID = "curves"
    REGION = "side by side"
    TITLE = "Curves"
    HELP_NAME = "Curves"
    HELP_TEXT = "loss and metrics from the run's TensorBoard event files."
    MAX_PLOTS = 3

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._placeholder = ""

    def compose(self) -> ComposeResult:
        yield Static("select a run to see its curves", id="curves-empty")
        for index in range(self.MAX_PLOTS):
            yield CurvePlot(id=f"plot-{index}")

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        selected = snapshot.selected
        self.show_curves(
            selected.curves if selected is not None else (),
            placeholder="no TensorBoard scalars yet"
            if selected is not None
            else "select a run to see its curves",
        )
        self.show_title(f"Curves · {selected.run_id}" if selected is not None else "Curves")

    def show_curves(self, curves: Sequence[Curve], *, placeholder: str) -> None:
        groups = curve_groups(curves)
        empty = self.query_one("#curves-empty", Static)
        if empty.display != (not groups):
            empty.display = not groups
        if not groups and placeholder != self._placeholder:
            self._placeholder = placeholder
            empty.update(placeholder)
        # Three plots need room: on a small terminal only the first ones are shown.
        room = max(1, self.size.height // 5) if self.size.height else self.MAX_PLOTS
        for index in range(self.MAX_PLOTS):
            plot = self.query_one(f"#plot-{index}", CurvePlot)
            shown = index < len(groups) and index < room
            if shown:
                title, members = groups[index]
                plot.show(title, members)
            if plot.display != shown:
                plot.display = shown
