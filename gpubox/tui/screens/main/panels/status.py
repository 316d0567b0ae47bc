"""The lines at the bottom: the live sync of the selected host (or the first one up) and the tunnels."""

from __future__ import annotations

from rich.text import Text

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.tui.screens.main.panels.base import TextPanel

__all__ = ["StatusPanel", "status_lines"]


def status_lines(snapshot: DashboardSnapshot, host: HostView | None) -> Text:
    """The sync line of the selected host (or the first one up) and every tunnel with its local URL."""
    text = Text()
    shown = host if host is not None and host.is_up else next((h for h in snapshot.hosts if h.is_up), None)
    text.append("sync ", style="bold")
    if shown is None:
        text.append("nothing is up", style="dim")
    elif shown.sync is None:
        text.append(f"{shown.name}: ", style="bold")
        text.append("not syncing (up with --no-sync, or no report yet)", style="dim")
    else:
        text.append(f"{shown.name}: ", style="bold")
        sync = shown.sync
        text.append(sync.text(), style="red" if sync.errors or sync.conflicts else "")
        if sync.recent_errors:
            text.append(f" · last: {sync.recent_errors[-1]}", style="red")
    if shown is not None and shown.outputs_text:
        text.append(" · outputs ", style="bold")
        text.append(shown.outputs_text)
    for line in shown.run_money if shown is not None else ():
        text.append(" · ")
        text.append(line, style="yellow" if "!" in line else "")
    text.append("\n")
    text.append("tunnels ", style="bold")
    # The selected host's tunnels (all of them when one host has any); a count for the others.
    holders = sorted({t.host for t in snapshot.tunnels})
    mine = [t for t in snapshot.tunnels if shown is not None and t.host == shown.name]
    tunnels = mine if mine or len(holders) > 1 else list(snapshot.tunnels)
    if not tunnels:
        text.append("none (up starts Jupyter and TensorBoard)", style="dim")
    for index, tunnel in enumerate(tunnels):
        if index:
            text.append(" · ")
        text.append(f"{tunnel.service} ", style="bold")
        text.append(tunnel.url.removesuffix("?token=<redacted>"), style="underline")
    others = len([h for h in holders if not tunnels or h != tunnels[0].host])
    if others and tunnels:
        text.append(f" · {others} more host{'s' if others > 1 else ''} with tunnels", style="dim")
    return text


class StatusPanel(TextPanel):
    PANEL_ID = "status-line"
    REGION = "bottom"
    HELP_NAME = "Bottom"
    HELP_TEXT = "live sync of the selected host (from the gpubox holding it) and the tunnels."

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        self.show_text(status_lines(snapshot, host))
