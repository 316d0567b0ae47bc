"""Sparklines small enough for a table cell: the last minutes of a percentage, one block character a sample."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

__all__ = ["BLOCKS", "level_style", "spark"]

BLOCKS = "▁▂▃▄▅▆▇█"


def level_style(percent: float) -> str:
    """Green while there is room, yellow when busy, red when (nearly) full."""
    if percent >= 90:
        return "bold red"
    if percent >= 60:
        return "yellow"
    return "green"


def spark(values: Sequence[float], width: int, *, top: float = 100.0) -> Text:
    """The last *width* of *values* (0..*top*) as block characters, each coloured by its level; padded on the
    left with dim dots while the history is shorter than the cell."""
    text = Text()
    if width <= 0:
        return text
    shown = list(values)[-width:]
    if len(shown) < width:
        text.append("·" * (width - len(shown)), style="dim")
    for value in shown:
        share = 0.0 if top <= 0 else max(0.0, min(1.0, value / top))
        text.append(BLOCKS[min(len(BLOCKS) - 1, int(share * len(BLOCKS)))], style=level_style(share * 100))
    return text
