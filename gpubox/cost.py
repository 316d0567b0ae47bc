"""What a host costs: its hourly price and what has been spent while gpubox held it up."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpubox.config import HostConfig

__all__ = ["HourlyPrice", "format_duration", "format_usd", "hourly_price", "spent_usd"]


@dataclass(frozen=True)
class HourlyPrice:
    amount: float | None
    """US dollars per hour; None when gpubox cannot know (an ssh host without price_per_hour)."""
    source: str

    def label(self) -> str:
        if self.amount is None:
            return f"$?/h ({self.source})"
        return f"{format_usd(self.amount)}/h ({self.source})"


def hourly_price(host: HostConfig) -> HourlyPrice:
    if host.price_per_hour is not None:
        return HourlyPrice(host.price_per_hour, "price_per_hour in hosts.toml")
    if host.provider == "local":
        return HourlyPrice(0.0, "your own machine")
    return HourlyPrice(None, "unknown: set price_per_hour in hosts.toml")


def spent_usd(intervals: Iterable[tuple[str, float, float, float | None]], now: float | None = None) -> float:
    """Sum of price × hours over billing intervals (host, $/h, start, end or None while still open)."""
    now = time.time() if now is None else now
    total = 0.0
    for _host, price, started, ended in intervals:
        end = now if ended is None else ended
        total += price * max(0.0, end - started) / 3600.0
    return total


def format_usd(amount: float) -> str:
    return f"${amount:,.2f}"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock
