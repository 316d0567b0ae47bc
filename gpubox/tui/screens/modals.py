"""Small dialogs: confirm a destructive action, pick a host, type a run command, follow a long action."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Log, OptionList, Static
from textual.widgets.option_list import Option

__all__ = ["ConfirmScreen", "HostPickerScreen", "ProgressScreen", "RunCommandScreen"]


class ConfirmScreen(ModalScreen[bool]):
    """Yes or no; the default (Enter, Escape) is no."""

    AUTO_FOCUS = "#no"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, message: str, *, yes: str = "Yes", danger: bool = True) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.message = message
        self.yes = yes
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.message, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="error" if self.danger else "primary")
                yield Button("Cancel (n)", id="no")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


class HostPickerScreen(ModalScreen[str | None]):
    """Which host? (for `up` when the selection does not say)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: Sequence[tuple[str, str]]) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.choices = list(choices)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield OptionList(*(Option(text, id=name) for name, text in self.choices), id="choices")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class RunCommandScreen(ModalScreen[str | None]):
    """The command for a new run, with the commands run before (↑/↓ go through them, typing completes)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("up", "history(-1)", "Older", show=False),
        Binding("down", "history(1)", "Newer", show=False),
    ]

    def __init__(self, host: str, history: Sequence[str], default: str | None) -> None:
        super().__init__(classes="dialog-screen")
        self.host = host
        self.history = list(dict.fromkeys(reversed(history)))[::-1]  # unique, most recent last
        self.default = default
        self.position = len(self.history)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"New run on {self.host}", classes="dialog-title")
            yield Static(
                "A shell line, run detached in the project folder on the host after a sync"
                + (f" (empty: {self.default})" if self.default else ""),
                classes="dialog-body",
            )
            yield Input(
                placeholder=self.default or "python train.py",
                suggester=SuggestFromList(self.history[::-1], case_sensitive=True),
                id="command",
            )

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self.position = max(0, min(len(self.history), self.position + step))
        field = self.query_one(Input)
        field.value = self.history[self.position] if self.position < len(self.history) else ""
        field.cursor_position = len(field.value)

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        command = event.value.strip() or (self.default or "")
        self.dismiss(command or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ProgressScreen(ModalScreen[None]):
    """The lines of a long action as they come; closes itself when it worked, stays to show why when not."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, title: str) -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.finished = False
        self.failed = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Label(self.title_text, classes="dialog-title")
            yield Log(id="progress-log", max_lines=2000)
            yield Static("working… (esc hides this; it keeps going)", id="progress-status")

    def add(self, text: str, *, done: bool = False, failed: bool = False) -> None:
        self.query_one(Log).write_line(text)
        if done:
            self.finished, self.failed = True, failed
            status = self.query_one("#progress-status", Static)
            status.update("failed: esc closes" if failed else "done")
            if not failed:
                self.set_timer(1.0, self.action_close)

    def action_close(self) -> None:
        if self.is_current or self in self.app.screen_stack:
            self.dismiss(None)
