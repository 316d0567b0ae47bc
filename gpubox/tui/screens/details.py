"""Full-screen details: cost (the `gpubox cost` report), a host's GPU check, and help."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Static

from gpubox.config import HostsConfig, ProjectConfig
from gpubox.errors import GpuboxError
from gpubox.tui.keys import ACTIONS
from gpubox.tui.screens.main.panels import PANELS
from gpubox.tui.workers import interruptible

__all__ = ["CheckScreen", "CostScreen", "HelpScreen", "LinesScreen", "panels_help"]

HELP_WIDTH = 96
"""Where the help's panel lines wrap."""


class LinesScreen(Screen[None]):
    """A title and lines of text produced by a thread worker (the same lines the CLI prints)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "back", "Back"),
        Binding("r", "reload", "Reload"),
    ]
    WORKER_NAME = "details"

    @dataclass
    class Loaded(Message, bubble=False):
        """The worker's lines."""

        lines: list[str]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title
        self.lines: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(self.title_text, classes="screen-title")
        with VerticalScroll(id="details-scroll"):
            yield Static("working…", id="details-body")
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_reload(self) -> None:
        self.query_one("#details-body", Static).update("working…")
        self._load()

    def produce(self) -> list[str]:
        raise NotImplementedError

    @work(thread=True, exclusive=True, exit_on_error=False, name="details", group="details")
    def _load(self) -> None:
        try:
            lines = interruptible(self.produce)
        except GpuboxError as exc:
            lines = [f"✗ {exc}"]
        # A message, not a call: if the screen was closed meanwhile, nobody is left to draw and nothing breaks.
        self.post_message(self.Loaded(lines))

    @on(Loaded)
    def _show(self, message: Loaded) -> None:
        self.lines = message.lines
        self.query_one("#details-body", Static).update(Text("\n".join(message.lines)))


class CostScreen(LinesScreen):
    """`gpubox cost`: per host $/h, hours, spent and budget; per run; totals."""

    def __init__(self, hosts: HostsConfig) -> None:
        super().__init__("Cost: everything gpubox recorded (r reloads)")
        self.hosts = hosts

    def produce(self) -> list[str]:
        from gpubox.cost import cost_report, render_cost
        from gpubox.remote.providers import host_price
        from gpubox.state import open_state

        with open_state() as state:
            document = cost_report(state, self.hosts, host_price)
        return render_cost(document)


class CheckScreen(LinesScreen):
    """`gpubox check HOST`: the GPU, driver and CUDA verdict for the project's TensorFlow, with reasons."""

    def __init__(self, hosts: HostsConfig, project: ProjectConfig, host: str) -> None:
        super().__init__(f"Check {host}: can TensorFlow use its GPU? (r checks again)")
        self.hosts = hosts
        self.project = project
        self.host = host

    def produce(self) -> list[str]:
        from gpubox.actions.check import check_host
        from gpubox.remote.gpu import render_check

        result = check_host(self.hosts.get(self.host), self.project)
        return [f"gpubox check {self.host} (nvidia-smi {result.snapshot.format})", *render_check(result)]


def panels_help() -> str:
    """Each panel's help line (the panels carry their own), its name in a column of its own."""
    lines = []
    for panel in PANELS:
        if panel.HELP_NAME:
            lines += textwrap.wrap(
                panel.HELP_TEXT,
                width=HELP_WIDTH,
                initial_indent=f"  {panel.HELP_NAME:<8}",
                subsequent_indent=" " * 10,
                break_on_hyphens=False,
            )
    return "".join(f"{line}\n" for line in lines)


class HelpScreen(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "back", "Back")]

    def __init__(self, describe: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.describe = describe

    def compose(self) -> ComposeResult:
        yield Static("gpubox dashboard: help", classes="screen-title")
        with VerticalScroll(id="help-scroll"):
            text = Text()
            text.append("Keys (also in the command palette, ctrl+p)\n\n", style="bold")
            for spec in ACTIONS:
                text.append(f"  {spec.key_display:<3} ", style="bold cyan")
                text.append(f"{spec.label:<12}", style="bold")
                text.append(f"{spec.help}\n")
            text.append("\nPanels\n\n")
            text.append(panels_help())
            text.append(
                "\nQuitting leaves every host and run as it is; `gpubox down HOST` stops a host.\n"
                "The mouse works: click rows, footer keys and buttons.\n"
            )
            yield Static(text)
        yield Footer()

    def action_back(self) -> None:
        self.dismiss(None)
