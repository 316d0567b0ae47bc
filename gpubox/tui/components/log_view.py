"""The selected run's log: follows the end as lines arrive, scrolls, and finds text (matches highlighted)."""

from __future__ import annotations

import re

from rich.highlighter import Highlighter
from rich.text import Text
from textual.widgets import Log

from gpubox.dashboard.views import SelectedRun

__all__ = ["RunLog"]


class _Matches(Highlighter):
    def __init__(self, pattern: re.Pattern[str] | None) -> None:
        self.pattern = pattern

    def highlight(self, text: Text) -> None:
        if self.pattern is not None:
            text.highlight_regex(self.pattern, style="black on yellow")


class RunLog(Log):
    """A :class:`textual.widgets.Log` fed from snapshots: only new lines are written; a new run starts over."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(highlight=True, max_lines=None, auto_scroll=True, id=id, classes=classes)
        self._matches = _Matches(None)
        self.highlighter = self._matches
        self.run_key: str | None = None
        self.written = 0
        """Lines of the run written so far (counted from the log's first line)."""
        self.query_text = ""
        self.matches: list[int] = []
        self.match_index = -1

    @property
    def following(self) -> bool:
        return self.auto_scroll

    def show(self, selected: SelectedRun | None) -> None:
        key = selected.key if selected is not None else None
        if key != self.run_key:
            self.run_key = key
            self.written = 0
            self.clear()
            if selected is None:
                self.write_line("no run selected: n starts one on the selected host, ↑/↓ in Runs picks one")
        if selected is None:
            return
        end = selected.first_line + len(selected.lines)
        if end <= self.written:
            return
        if selected.first_line > self.written:
            # Lines dropped from the model's buffer before they were shown: show from what is kept.
            self.clear()
            self.write_line(
                f"… {selected.first_line} earlier lines (gpubox logs {selected.run_id} has them all)"
            )
            self.written = selected.first_line
        fresh = selected.lines[self.written - selected.first_line :]
        self.write_lines(fresh)
        self.written = end
        if self.query_text:
            self._collect_matches()

    # -- search

    def search(self, text: str) -> tuple[int, int]:
        """Find *text* (case-insensitive) and jump to the first match after the current one; stop following.
        Returns (match number from 1, matches); (0, 0) when there is none."""
        if text != self.query_text:
            self.query_text = text
            self.match_index = -1
            self._matches.pattern = re.compile(re.escape(text), re.IGNORECASE) if text else None
            self.notify_style_update()  # drops the rendered-line cache, so the highlights show
            self._collect_matches()
        if not self.matches:
            self.refresh()
            return 0, 0
        self.match_index = (self.match_index + 1) % len(self.matches)
        self.auto_scroll = False
        line = self.matches[self.match_index]
        self.scroll_to(y=max(0, line - self.size.height // 3), animate=False)
        self.refresh()
        return self.match_index + 1, len(self.matches)

    def end_search(self) -> None:
        self.query_text = ""
        self.matches = []
        self.match_index = -1
        self._matches.pattern = None
        self.notify_style_update()
        self.follow()

    def follow(self) -> None:
        self.auto_scroll = True
        self.scroll_end(animate=False)

    def _collect_matches(self) -> None:
        needle = self.query_text.lower()
        self.matches = [i for i, line in enumerate(self.lines) if needle in line.lower()]
