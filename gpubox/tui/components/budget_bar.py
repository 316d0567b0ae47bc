"""A budget as a bar that fills and turns yellow, then red, as the money goes."""

from __future__ import annotations

from rich.text import Text

__all__ = ["budget_bar"]

_EIGHTHS = " ▏▎▍▌▋▊▉"


def budget_bar(percent: float | None, width: int = 8) -> Text:
    """``█████▌   64%``: *width* cells of bar, then the percentage; ``—`` without a budget."""
    if percent is None:
        return Text("—", style="dim")
    style = "green" if percent < 50 else "yellow" if percent < 80 else "bold red"
    share = max(0.0, min(1.0, percent / 100.0))
    eighths = round(share * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part and full < width else "")
    text = Text(bar.ljust(width), style=style)
    text.stylize("on grey23", 0, width)
    text.append(f" {percent:3.0f}%", style=style)
    return text
