"""The top line: the project, what is up and what it costs (clicking it opens the command palette)."""

from __future__ import annotations

from rich.text import Text

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.fmt import format_usd
from gpubox.tui.screens.main.panels.base import TextPanel

__all__ = ["TitleBar", "title_line"]


def title_line(snapshot: DashboardSnapshot) -> Text:
    """The project, how many hosts are up, what they cost an hour and have cost (of the total budget), and the
    first problem met reading the state."""
    up = sum(1 for h in snapshot.hosts if h.is_up)
    money = f"{format_usd(snapshot.per_hour)}/h · {format_usd(snapshot.total_spent_usd)} spent"
    if snapshot.total_budget_usd:
        money += f" of {format_usd(snapshot.total_budget_usd)}"
    title = Text("▣ ", style="bold")
    title.append(f"gpubox · {snapshot.project}", style="bold")
    title.append(f" — {up} up · {money}")
    if snapshot.problems:
        title.append(f"  ! {snapshot.problems[0]}", style="bold yellow")
    return title


class TitleBar(TextPanel):
    """Textual's Header would lay the whole screen out again each time its subtitle changes, which the money
    figures do on every refresh; this line keeps its height and only repaints."""

    PANEL_ID = "title-bar"
    REGION = "top"

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        self.show_text(title_line(snapshot))

    def on_click(self) -> None:
        self.app.action_command_palette()
