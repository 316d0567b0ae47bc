"""How gpubox writes numbers, durations and tables for people: the leaf every module may import.

Pure string functions, no I/O, and no imports from the rest of gpubox, so that a module low in the house (the
ledger in ``cost``, a provider's instance description) can format without pulling in the one that shows it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["columns", "either", "format_duration", "format_usd", "plural", "shorten"]


def format_usd(amount: float) -> str:
    return f"${amount:,.2f}"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def columns(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Rows laid out in left-aligned columns two spaces apart, the header line first, no trailing spaces."""
    table = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


def either(items: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join(filter(None, [", ".join(items[:-1]), *items[-1:]]))


def plural(count: int, noun: str) -> str:
    """``1 run``, ``3 runs``: *noun* with an ``s`` for any count but one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def shorten(text: str, width: int = 60) -> str:
    """*text* cut to at most *width* characters, ending in ``...`` where it was cut."""
    return text if len(text) <= width else text[: width - 3] + "..."
