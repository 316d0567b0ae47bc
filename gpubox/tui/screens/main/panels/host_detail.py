"""The two lines under the hosts panel about the selected host: where it is, what it costs, its GPU memory and
autostop; then its check verdict with the reasons, or since when it does not answer."""

from __future__ import annotations

import time

from rich.text import Text

from gpubox.dashboard.views import DashboardSnapshot, HostView
from gpubox.fmt import format_duration, format_usd
from gpubox.tui.components.hosts_table import VERDICT_STYLES
from gpubox.tui.screens.main.panels.base import TextPanel

__all__ = ["HostDetailPanel", "host_detail"]


def _clock(moment: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(moment))


def host_detail(host: HostView | None) -> Text:
    """Two lines about the selected host (each cut to the width): where it is, what it costs, how long it has
    been up, its GPU memory and autostop; then the verdict and its reasons, or since when it does not answer."""
    if host is None:
        return Text("no host selected", style="dim")
    text = Text()
    text.append(host.name, style="bold")
    text.append(f" · {host.provider}")
    if host.endpoint:
        text.append(f" · {host.endpoint}")
    if host.price_per_hour is not None:
        price = "free" if host.price_per_hour == 0 else f"{format_usd(host.price_per_hour)}/h"
        text.append(f" · {'~' if host.price_estimate else ''}{price}")
        if host.price_source:
            text.append(f" ({host.price_source})", style="dim")
    if host.held_by is None:
        text.append(" · down (u brings it up)", style="dim")
    else:
        if host.up_seconds is not None:
            text.append(f" · up {format_duration(host.up_seconds)}")
        memory, total = host.memory_used_mib, host.memory_total_mib
        if memory is not None and total:
            text.append(f" · GPU memory {memory / 1024:.1f}/{total / 1024:.0f} GiB")
        if host.autostop_text:
            text.append(f" · autostop {host.autostop_text}")
        text.append(f" · held by gpubox pid {host.held_by}", style="dim")
    text.append("\n")
    if host.state == "unreachable":
        since = _clock(host.unreachable_since) if host.unreachable_since is not None else "?"
        text.append(f"✗ unreachable since {since}", style="bold red")
        if host.problem:
            text.append(f": {host.problem}", style="red")
        text.append(" (retrying; the rest keeps updating)", style="dim")
        return text
    badge = {"cpu": "cpu", "unknown": "not checked yet"}.get(host.verdict, host.verdict)
    text.append(f"check {badge}", style=VERDICT_STYLES.get(host.verdict, ""))
    if host.verdict_text:
        text.append(f": {host.verdict_text}")
    reasons = [r for r in host.verdict_reasons if r != host.verdict_text]
    if reasons:
        text.append(" · " + " · ".join(reasons), style="dim")
    return text


class HostDetailPanel(TextPanel):
    PANEL_ID = "host-detail"
    REGION = "column"
    # The hosts panel's help tells of these lines.

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        self.show_text(host_detail(host))
