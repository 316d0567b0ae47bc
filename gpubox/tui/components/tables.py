"""A DataTable that shows rows of snapshots: cells updated only where they changed, rows keyed, cursor kept."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import RenderableType
from textual.widgets import DataTable

__all__ = ["Column", "SnapshotTable"]


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int | None = None


class SnapshotTable(DataTable[RenderableType]):
    """Rows are ``(key, {column key: cell})``; a refresh touches only the cells that changed.

    Two column sets: the wide one, and a narrow one for terminals under :attr:`NARROW_BELOW` columns (the
    cells of columns it leaves out are simply not shown)."""

    WIDE: Sequence[Column] = ()
    NARROW: Sequence[Column] = ()
    NARROW_BELOW = 120

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.narrow: bool | None = None
        self._rows: list[str] = []
        self._cells: dict[str, dict[str, RenderableType]] = {}

    @property
    def columns_shown(self) -> Sequence[Column]:
        return self.NARROW if self.narrow else self.WIDE

    def fit(self, width: int) -> None:
        """Pick the column set for a terminal *width* columns wide (rebuilds only when it changes)."""
        narrow = width < self.NARROW_BELOW
        if narrow == self.narrow:
            return
        self.narrow = narrow
        rows = [(key, self._cells[key]) for key in self._rows]
        self.clear(columns=True)
        for column in self.columns_shown:
            self.add_column(column.label, key=column.key, width=column.width)
        self._rows, self._cells = [], {}
        self.show_rows(rows)

    @property
    def selected_key(self) -> str | None:
        if not self._rows or self.cursor_row < 0 or self.cursor_row >= len(self._rows):
            return None
        return self._rows[self.cursor_row]

    def select_key(self, key: str) -> None:
        if key in self._cells:
            self.move_cursor(row=self._rows.index(key))

    def show_rows(
        self, rows: Sequence[tuple[str, Mapping[str, RenderableType]]], *, keep: str | None = None
    ) -> None:
        """Show *rows*; the cursor stays on its row, or goes to *keep* when given."""
        if self.narrow is None:
            self.fit(self.app.size.width)
        keys = [key for key, _cells in rows]
        shown = [c.key for c in self.columns_shown]
        if keys != self._rows:
            keep = keep or self.selected_key
            self.clear()
            self._rows = keys
            self._cells = {}
            for key, cells in rows:
                self._cells[key] = dict(cells)
                self.add_row(*(cells.get(column, "") for column in shown), key=key)
        else:
            for key, cells in rows:
                before = self._cells[key]
                for column in shown:
                    value = cells.get(column, "")
                    if before.get(column, "") != value:
                        self.update_cell(key, column, value)
                self._cells[key] = dict(cells)
        if keep is not None and keep in self._cells and keep != self.selected_key:
            self.move_cursor(row=keys.index(keep), animate=False)

    def is_current(self, cursor_row: int) -> bool:
        """Whether a RowHighlighted event for *cursor_row* still describes the cursor (rebuilding the rows moves
        it through row 0 first: those events are stale by the time they arrive)."""
        return cursor_row == self.cursor_row
