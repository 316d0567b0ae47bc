"""A table of snapshot rows that redraws only the rows that changed.

Textual's DataTable keys all of its render caches by one counter that every cell update bumps, so changing one
cell draws every visible cell again; the dashboard changes some cell every refresh (GPU figures, elapsed times).
This table keeps each row's rendered line until that row's cells change, and draws a row as one piece of text.
It has what the dashboard uses: a fixed header, a row cursor (keys and mouse), zebra stripes, vertical scrolling,
and messages when the cursor moves to a row or a row is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from rich.console import RenderableType
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

__all__ = ["Column", "SnapshotTable", "ViewTable"]

V = TypeVar("V")


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int


class SnapshotTable(ScrollView, can_focus=True):
    """Rows are ``(key, {column key: cell})``; cells are strings or Rich ``Text``.

    Three column sets, the widest that fits the terminal is shown: :attr:`WIDE`, :attr:`MEDIUM` (from about
    120 columns) and :attr:`NARROW` (80); the cells of columns a set leaves out are simply not shown."""

    WIDE: Sequence[Column] = ()
    MEDIUM: Sequence[Column] = ()
    NARROW: Sequence[Column] = ()
    CHROME = 4
    """Columns taken by the border and the scrollbar."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "snapshot-table--header",
        "snapshot-table--cursor",
        "snapshot-table--even-row",
    }
    DEFAULT_CSS = """
    SnapshotTable {
        background: $surface;
        color: $foreground;
        & > .snapshot-table--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .snapshot-table--even-row {
            background: $surface-lighten-1 50%;
        }
        & > .snapshot-table--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
        }
        &:focus > .snapshot-table--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "edge(0)", "First", show=False),
        Binding("end", "edge(1)", "Last", show=False),
        Binding("enter", "choose", "Choose", show=False),
    ]

    @dataclass
    class RowHighlighted(Message):
        """The cursor moved to a row."""

        table: SnapshotTable
        cursor_row: int
        row_key: str

        @property
        def control(self) -> SnapshotTable:
            return self.table

    @dataclass
    class RowSelected(Message):
        """A row was chosen: Enter, or a click on the row the cursor is on."""

        table: SnapshotTable
        cursor_row: int
        row_key: str

        @property
        def control(self) -> SnapshotTable:
            return self.table

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.column_set: str | None = None
        """``wide``, ``medium`` or ``narrow``: the column set shown."""
        self.cursor_row = 0
        self._rows: list[str] = []
        self._index: dict[str, int] = {}
        self._cells: dict[str, Mapping[str, RenderableType]] = {}
        self._lines: dict[str, Strip] = {}
        """Each row drawn without cursor or stripe, kept until its cells change."""
        self._styled: dict[tuple[str, str], Strip] = {}
        self._header: Strip | None = None

    # -- columns

    @property
    def narrow(self) -> bool:
        return self.column_set == "narrow"

    @property
    def columns_shown(self) -> Sequence[Column]:
        return {"wide": self.WIDE, "medium": self.MEDIUM or self.NARROW}.get(
            self.column_set or "", self.NARROW
        )

    @staticmethod
    def needed(columns: Sequence[Column]) -> int:
        return sum(c.width + 2 for c in columns)

    def fit(self, width: int) -> None:
        """Pick the widest column set that fits a terminal *width* columns wide (draws again only when the
        choice changes)."""
        room = width - self.CHROME
        if self.needed(self.WIDE) <= room:
            chosen = "wide"
        elif self.MEDIUM and self.needed(self.MEDIUM) <= room:
            chosen = "medium"
        else:
            chosen = "narrow"
        if chosen == self.column_set:
            return
        self.column_set = chosen
        self._forget_drawing()
        self._update_size()

    def _forget_drawing(self) -> None:
        self._lines.clear()
        self._styled.clear()
        self._header = None
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._forget_drawing()

    def on_focus(self) -> None:
        self._styled.clear()

    def on_blur(self) -> None:
        self._styled.clear()

    # -- rows

    @property
    def row_count(self) -> int:
        return len(self._rows)

    @property
    def selected_key(self) -> str | None:
        if 0 <= self.cursor_row < len(self._rows):
            return self._rows[self.cursor_row]
        return None

    def get_cell(self, key: str, column: str) -> RenderableType:
        return self._cells[key].get(column, "")

    def get_row_index(self, key: str) -> int:
        return self._index[key]

    def select_key(self, key: str) -> None:
        if key in self._index:
            self.move_cursor(row=self._index[key])

    def is_current(self, cursor_row: int) -> bool:
        """Whether a RowHighlighted for *cursor_row* still describes the cursor (it may have moved since)."""
        return cursor_row == self.cursor_row

    def show_rows(
        self, rows: Sequence[tuple[str, Mapping[str, RenderableType]]], *, keep: str | None = None
    ) -> None:
        """Show *rows*; the cursor stays on its row (or goes to *keep*); only changed rows are drawn again."""
        if self.column_set is None:
            self.fit(self.app.size.width)
        before_key = self.selected_key
        keys = [key for key, _cells in rows]
        reordered = keys != self._rows
        if reordered:
            self._rows = keys
            self._index = {key: index for index, key in enumerate(keys)}
            self._lines = {key: line for key, line in self._lines.items() if key in self._index}
            self._styled.clear()
            self._update_size()
            self.refresh()
        shown = [c.key for c in self.columns_shown]
        for key, cells in rows:
            previous = self._cells.get(key)
            if previous is cells:
                continue  # the very same cells as last time
            self._cells[key] = cells
            if previous is not None and all(previous.get(c, "") == cells.get(c, "") for c in shown):
                continue
            self._lines.pop(key, None)
            for kind in ("cursor", "even", "odd"):
                self._styled.pop((key, kind), None)
            if not reordered:
                self._refresh_row(self._index[key])
        for gone in [key for key in self._cells if key not in self._index]:
            del self._cells[gone]
        # Keep the cursor on its row (or the one asked for); say so when the row under it is another one.
        wanted = keep if keep in self._index else before_key if before_key in self._index else None
        row = self._index[wanted] if wanted is not None else min(self.cursor_row, max(0, len(keys) - 1))
        if row != self.cursor_row:
            self._refresh_row(self.cursor_row)
            self.cursor_row = row
            self._refresh_row(row)
            self._scroll_to_cursor()
        if self.selected_key is not None and self.selected_key != before_key:
            self.post_message(self.RowHighlighted(self, self.cursor_row, self.selected_key))

    # -- cursor

    def move_cursor(self, *, row: int, animate: bool = False, scroll: bool = True) -> None:
        if not self._rows:
            return
        row = max(0, min(len(self._rows) - 1, row))
        if row == self.cursor_row:
            return
        self._refresh_row(self.cursor_row)
        self.cursor_row = row
        self._refresh_row(row)
        if scroll:
            self._scroll_to_cursor()
        self.post_message(self.RowHighlighted(self, row, self._rows[row]))

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    def _scroll_to_cursor(self) -> None:
        if not self.scrollable_content_region.height:
            return  # not laid out yet: done again once it has a size
        visible = max(1, self.scrollable_content_region.height - 1)
        top = int(self.scroll_y)
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False)
        elif self.cursor_row >= top + visible:
            self.scroll_to(y=self.cursor_row - visible + 1, animate=False)

    def _refresh_row(self, row: int) -> None:
        y = row - int(self.scroll_y) + 1
        if 0 < y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def action_cursor(self, step: int) -> None:
        self.move_cursor(row=self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(row=self.cursor_row + step * max(1, self.scrollable_content_region.height - 1))

    def action_edge(self, end: int) -> None:
        self.move_cursor(row=len(self._rows) - 1 if end else 0)

    def action_choose(self) -> None:
        key = self.selected_key
        if key is not None:
            self.post_message(self.RowSelected(self, self.cursor_row, key))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return  # the border or the header
        row = int(self.scroll_y) + offset.y - 1
        if not 0 <= row < len(self._rows):
            return
        if row == self.cursor_row:
            self.action_choose()
        else:
            self.move_cursor(row=row)

    # -- drawing

    def _update_size(self) -> None:
        width = sum(c.width + 2 for c in self.columns_shown)
        self.virtual_size = Size(width, len(self._rows) + 1)

    def _draw(self, cells: Mapping[str, RenderableType] | None, header: bool = False) -> Strip:
        text = Text(no_wrap=True, end="")
        for column in self.columns_shown:
            if header:
                value: RenderableType = column.label
            else:
                value = cells.get(column.key, "") if cells is not None else ""
            cell = value.copy() if isinstance(value, Text) else Text(str(value))
            cell.truncate(column.width, overflow="ellipsis", pad=True)
            text.append(" ")
            text.append_text(cell)
            text.append(" ")
        segments = list(text.render(self.app.console))
        return Strip(segments, text.cell_len)

    def _style(self, name: str) -> Style:
        return self.get_component_rich_style(f"snapshot-table--{name}")

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        base = self.rich_style
        if y == 0:
            if self._header is None:
                header = self._draw(None, header=True)
                self._header = Strip(
                    Segment.apply_style(list(header), self._style("header")), header.cell_length
                )
            strip = self._header
            return strip.crop_extend(0, width, self._style("header"))
        row = int(self.scroll_y) + y - 1
        if not 0 <= row < len(self._rows):
            return Strip.blank(width, base)
        key = self._rows[row]
        kind = "cursor" if row == self.cursor_row else "even" if row % 2 == 0 else "odd"
        styled = self._styled.get((key, kind))
        if styled is None:
            line = self._lines.get(key)
            if line is None:
                line = self._lines[key] = self._draw(self._cells.get(key))
            if kind == "cursor":
                cursor = self._style("cursor")
                # The cursor's colours win over the cells' own (as in DataTable).
                segments = Segment.apply_style(list(line), base, post_style=cursor)
            elif kind == "even":
                segments = Segment.apply_style(list(line), base + self._style("even-row"))
            else:
                segments = Segment.apply_style(list(line), base)
            styled = self._styled[(key, kind)] = Strip(list(segments), line.cell_length)
        fill = base + self._style("cursor" if kind == "cursor" else "even-row") if kind != "odd" else base
        return styled.crop_extend(0, width, fill)


class ViewTable(SnapshotTable, Generic[V]):
    """A table of view records (hosts, runs): one row per record, its key and its cells said by the subclass
    (:meth:`key`, :meth:`cells`, and the column sets). A record's cells are made again only when the record
    changed: most runs have ended and never change."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._made: dict[str, tuple[V, Mapping[str, RenderableType]]] = {}

    def key(self, view: V) -> str:
        raise NotImplementedError

    def cells(self, view: V) -> Mapping[str, RenderableType]:
        raise NotImplementedError

    def show_views(self, views: Sequence[V], *, keep: str | None = None) -> None:
        """Show one row per record of *views*, in their order (see :meth:`SnapshotTable.show_rows`)."""
        made: dict[str, tuple[V, Mapping[str, RenderableType]]] = {}
        rows = []
        for view in views:
            key = self.key(view)
            cached = self._made.get(key)
            if cached is None or cached[0] != view:
                cached = (view, self.cells(view))
            made[key] = cached
            rows.append((key, cached[1]))
        self._made = made
        self.show_rows(rows, keep=keep)
