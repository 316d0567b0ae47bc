"""Loss and metric curves drawn with braille dots (2×4 per cell), from the run's TensorBoard scalars."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import RenderableType
from rich.text import Text
from textual.widget import Widget

from gpubox.dashboard.views import Curve, curve_name

__all__ = ["COLORS", "CurvePlot", "plot_lines"]

COLORS = ("cyan", "magenta", "yellow", "green", "red", "blue")
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
"""Braille dot bits by (row within the cell, column within the cell)."""
LABEL_WIDTH = 7
_SHORT_NAMES = {"validation": "val", "train": "train"}


def _label(value: float) -> str:
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.2e}"
    return text[: LABEL_WIDTH - 1].rjust(LABEL_WIDTH - 1) + " "


def plot_lines(
    series: Sequence[tuple[str, str, Sequence[tuple[float, float]]]], width: int, height: int
) -> list[Text]:
    """*series* (name, colour, [(step, value), ...]) drawn in *width* × *height* cells: y labels on the left
    (top and bottom of the range), lines joining the points, the last series on top where they cross."""
    plot_width = max(1, width - LABEL_WIDTH)
    points = [p for _n, _c, pts in series for p in pts]
    if not points or height <= 0:
        return [Text("no points yet", style="dim")] if height > 0 else []
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = min(ys), max(ys)
    if y_high - y_low < 1e-12:
        y_low, y_high = y_low - 0.5, y_high + 0.5
    dots_x, dots_y = plot_width * 2, height * 4
    cells: dict[tuple[int, int], list[int]] = {}
    """(row, column) -> [dot bits, index of the series drawn last there]."""

    def dot(x: int, y: int, which: int) -> None:
        row, column = y // 4, x // 2
        cell = cells.setdefault((row, column), [0, which])
        cell[0] |= _DOTS[y % 4][x % 2]
        cell[1] = which

    def to_dots(step: float, value: float) -> tuple[int, int]:
        share_x = 0.0 if x_high == x_low else (step - x_low) / (x_high - x_low)
        share_y = (value - y_low) / (y_high - y_low)
        return round(share_x * (dots_x - 1)), round((1.0 - share_y) * (dots_y - 1))

    for which, (_name, _color, pts) in enumerate(series):
        previous: tuple[int, int] | None = None
        for step, value in sorted(pts):
            here = to_dots(step, value)
            if previous is None:
                dot(*here, which)
            else:
                # Bresenham between consecutive points, so a handful of epochs still reads as a line.
                (x0, y0), (x1, y1) = previous, here
                dx, dy = abs(x1 - x0), -abs(y1 - y0)
                sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
                error = dx + dy
                while True:
                    dot(x0, y0, which)
                    if (x0, y0) == (x1, y1):
                        break
                    twice = 2 * error
                    if twice >= dy:
                        error += dy
                        x0 += sx
                    if twice <= dx:
                        error += dx
                        y0 += sy
            previous = here
    lines = []
    for row in range(height):
        if row == 0:
            label = _label(y_high)
        elif row == height - 1:
            label = _label(y_low)
        else:
            label = " " * (LABEL_WIDTH - 1) + " "
        line = Text(label[:LABEL_WIDTH], style="dim")
        line.append("│" if height > 1 else " ", style="dim")
        for column in range(plot_width - 1):
            cell = cells.get((row, column))
            if cell is None:
                line.append(" ")
            else:
                line.append(chr(0x2800 + cell[0]), style=series[cell[1]][1])
        lines.append(line)
    return lines


class CurvePlot(Widget):
    """One metric's curves (train and validation together) with a legend of last values."""

    DEFAULT_CSS = """
    CurvePlot { height: 1fr; min-height: 2; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = ""
        self.curves: tuple[Curve, ...] = ()

    def show(self, title: str, curves: Sequence[Curve]) -> None:
        curves = tuple(curves)
        if (title, curves) != (self.title, self.curves):
            self.title, self.curves = title, curves
            self.refresh()

    def legend(self, width: int) -> Text:
        """``loss ━ train 0.299 ━ val 0.312``: the metric, then each curve's colour, name and last value."""
        text = Text(self.title, style="bold")
        for index, curve in enumerate(self.curves):
            name = curve_name(curve.tag)
            name = _SHORT_NAMES.get(name, name)
            last = f" {curve.points[-1][1]:.3g}" if curve.points else ""
            text.append(" ━", style=COLORS[index % len(COLORS)])
            text.append(f" {name}{last}")
        text.truncate(max(1, width), overflow="ellipsis")
        return text

    def render(self) -> RenderableType:
        width, height = self.size.width, self.size.height
        series = [(c.tag, COLORS[i % len(COLORS)], c.points) for i, c in enumerate(self.curves) if c.points]
        lines = [self.legend(width)]
        if height > 1:
            lines += plot_lines(series, width, height - 1)
        return Text("\n").join(lines)
