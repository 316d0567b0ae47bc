"""What every panel of the main screen is: a widget that draws itself from each snapshot, says where it goes,
and carries its own line of help."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from rich.text import Text
from textual.widgets import Static

from gpubox.dashboard.views import DashboardSnapshot, HostView

if TYPE_CHECKING:
    from textual.widget import Widget

    _Widget = Widget
else:
    _Widget = object  # a mixin: each panel is also a widget of its own kind (a table, a Static, a container)

__all__ = ["Panel", "Region", "TextPanel"]

Region = Literal["top", "column", "side by side", "bottom"]
"""Where the main screen puts a panel: the top line; the column of panels, top to bottom; side by side below
that column (the selected run's log and curves); the lines at the bottom."""


class Panel(_Widget):
    """A part of the main screen.

    A panel names its id (the stylesheet styles it by it), its region and its border title, and draws
    itself in :meth:`show` from each snapshot and the host selected in the hosts panel. Its help line
    (:attr:`HELP_NAME`, :attr:`HELP_TEXT`) is what the help screen lists under "Panels"."""

    PANEL_ID: ClassVar[str]
    REGION: ClassVar[Region]
    TITLE: ClassVar[str] = ""
    """The border title until the first snapshot; "" for none."""
    HELP_NAME: ClassVar[str] = ""
    """Its name on the help screen; "" keeps it off the list (another panel's help tells of it)."""
    HELP_TEXT: ClassVar[str] = ""

    _shown_title: str | Text | None = None

    def show(self, snapshot: DashboardSnapshot, host: HostView | None) -> None:
        """Draw *snapshot*; *host* is the host selected in the hosts panel (None for none)."""
        raise NotImplementedError

    def fit(self, width: int) -> None:
        """The terminal is *width* columns wide now (the tables pick their columns)."""

    def show_title(self, title: str | Text) -> None:
        """Set the border title; only when it changed (setting it repaints the border)."""
        if self._shown_title != title:
            self._shown_title = title
            self.border_title = title


class TextPanel(Static, Panel):
    """A panel of a few lines of text."""

    _shown_text: Text | None = None

    def show_text(self, content: Text) -> None:
        """Show *content* when it changed; the screen is laid out again only when its number of lines did."""
        before = self._shown_text
        if before != content:
            self._shown_text = content
            same_height = before is not None and before.plain.count("\n") == content.plain.count("\n")
            self.update(content, layout=not same_height)
