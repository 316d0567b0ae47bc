"""The hosts: state, GPUs (utilisation and memory with their recent history), verdict, money, autostop."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text

from gpubox.dashboard.views import HostView
from gpubox.fmt import format_duration, format_usd
from gpubox.tui.components.budget_bar import budget_bar
from gpubox.tui.components.sparkline import spark
from gpubox.tui.components.tables import Column, ViewTable

__all__ = ["STATE_MARKS", "VERDICT_STYLES", "HostsTable", "host_cells"]

STATE_MARKS = {
    "up": ("● up", "green"),
    "connecting": ("◌ connecting", "yellow"),
    "unreachable": ("✗ unreachable", "bold red"),
    "down": ("○ down", "dim"),
    "stopped": ("◐ stopped, disk kept", "yellow"),
}
VERDICT_STYLES = {
    "ok": "bold green",
    "warn": "bold yellow",
    "fail": "bold red",
    "cpu": "cyan",
    "unknown": "dim",
}
_VERDICT_WORDS = {"unknown": "?"}


def _na() -> Text:
    return Text("N/A", style="dim")


def _gib(mib: float) -> str:
    gib = mib / 1024
    return f"{gib:.0f}" if gib >= 10 else f"{gib:.1f}"


def _util(host: HostView, width: int) -> Text:
    util = host.util_percent
    if not host.gpus:
        return _na()
    cell = spark(host.util_history, width)
    if util is None:
        cell.append(" N/A", style="dim")
    else:
        cell.append(f" {util:3.0f}%")
    return cell


def host_cells(host: HostView) -> dict[str, RenderableType]:
    word, style = STATE_MARKS.get(host.state, (host.state, ""))
    memory = host.memory_used_mib
    util_cell, util_short = _util(host, 8), _util(host, 5)
    total = host.memory_total_mib
    if host.gpus and memory is not None and total:
        memory_cell = spark(host.memory_history, 5)
        memory_cell.append(f" {_gib(memory)}/{_gib(total)}G")
        memory_short = Text(f"{_gib(memory)}/{_gib(total)}G")
    else:
        memory_cell = memory_short = _na()
    if host.price_per_hour is None:
        price = Text("?", style="dim")
    elif host.price_per_hour == 0:
        price = Text("free", style="dim")
    else:
        price = Text(("~" if host.price_estimate else "") + format_usd(host.price_per_hour))
    if host.autostop_seconds is not None:
        autostop = Text(format_duration(host.autostop_seconds), style="bold yellow")
    elif host.autostop_state == "busy":
        autostop = Text("busy", style="green")
    elif host.autostop_state in ("starting", "warned", "stopped"):
        autostop = Text(host.autostop_state, style="yellow")
    elif host.is_up and host.autostop_text.startswith("off"):
        autostop = Text("off", style="dim")
    else:
        autostop = Text("")
    gpu = host.gpu_label
    if len(host.gpus) > 1 and host.gpus[0].name:
        gpu = f"{len(host.gpus)}× {host.gpus[0].name.removeprefix('NVIDIA ')}"
    elif len(host.gpus) == 1 and host.gpus[0].name:
        gpu = host.gpus[0].name.removeprefix("NVIDIA ")
    return {
        "host": Text(host.name, style="bold" if host.is_up else ""),
        "provider": host.provider,
        "state": Text(word, style=style),
        "gpu": gpu,
        "util": util_cell,
        "util_short": util_short,
        "memory": memory_cell,
        "memory_short": memory_short,
        "check": Text(
            _VERDICT_WORDS.get(host.verdict, host.verdict), style=VERDICT_STYLES.get(host.verdict, "")
        ),
        "price": price,
        "up": format_duration(host.up_seconds) if host.up_seconds is not None else "",
        "spent": format_usd(host.spent_usd),
        "budget": budget_bar(host.budget_percent, 6),
        "budget_short": budget_bar(host.budget_percent, 3),
        "autostop": autostop,
    }


class HostsTable(ViewTable[HostView]):
    WIDE = (
        Column("host", "Host", 14),
        Column("provider", "Provider", 8),
        Column("state", "State", 13),
        Column("gpu", "GPU", 20),
        Column("util", "Util", 13),
        Column("memory", "Memory", 14),
        Column("check", "Check", 5),
        Column("price", "$/h", 7),
        Column("up", "Up", 8),
        Column("spent", "Spent", 8),
        Column("budget", "Budget", 11),
        Column("autostop", "Autostop", 8),
    )
    MEDIUM = (
        Column("host", "Host", 12),
        Column("state", "State", 13),
        Column("util", "Util", 13),
        Column("memory", "Memory", 14),
        Column("check", "Check", 5),
        Column("price", "$/h", 7),
        Column("spent", "Spent", 8),
        Column("budget", "Budget", 11),
        Column("autostop", "Autostop", 8),
    )
    NARROW = (
        Column("host", "Host", 9),
        Column("state", "State", 13),
        Column("util_short", "Util", 10),
        Column("memory_short", "Mem", 7),
        Column("check", "Chk", 4),
        Column("spent", "Spent", 7),
        Column("budget_short", "Budget", 8),
    )

    def key(self, view: HostView) -> str:
        return view.name

    def cells(self, view: HostView) -> dict[str, RenderableType]:
        return host_cells(view)
