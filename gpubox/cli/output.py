"""What every command shares: printing lines and JSON, asking the user, finding the project and its hosts.

Imported only once a command is dispatched (never for ``--help``); rich stays lazy even here, because most
commands print no progress bar.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox import config
from gpubox.cli.parser import terminal_columns
from gpubox.errors import UsageError
from gpubox.fmt import columns, format_duration, format_usd

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = [
    "LiveProgress",
    "ask_to_pin",
    "check_first_sync",
    "confirm",
    "err",
    "is_terminal",
    "load_hosts",
    "load_project",
    "out",
    "price",
    "print_json",
    "progress_bar",
    "shown",
    "step",
    "table",
    "tell_moved_here",
    "terminal_width",
]


def is_terminal() -> bool:
    """Whether a person is at this command's stdin and stdout (so it may ask, and draw progress)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def out(text: str = "") -> None:
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=False))


def ask_to_pin() -> Callable[[str, str, str], bool] | None:
    """On a terminal, ask before pinning an unknown host key; elsewhere refuse (the caller says how to accept)."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def ask(host: str, key_type: str, fingerprint: str) -> bool:
        err(f"The authenticity of host {host} can't be established.")
        err(f"{key_type} key fingerprint is {fingerprint}.")
        try:
            answer = input("Pin this key and connect? [y/N] ")
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    return ask


def confirm(question: str, *, yes: bool) -> bool:
    """Ask a yes/no question on the terminal; ``--yes`` answers it. Without a terminal and without ``--yes``,
    refuse clearly instead of guessing."""
    if yes:
        out(f"  {question} yes (--yes)")
        return True
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"{question.rstrip('?')}: asking needs a terminal; pass --yes to go ahead")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def step(text: str) -> None:
    out(f"  {text}" if text.startswith("! ") else f"  · {text}")


def terminal_width() -> int | None:
    """The columns a table may take: the terminal's (or ``COLUMNS``), None when output goes to a pipe or file."""
    if not sys.stdout.isatty() and not os.environ.get("COLUMNS"):
        return None
    return terminal_columns(100)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    for line in columns([h.upper() for h in headers], rows):
        out(line)


def price(amount: float | None) -> str:
    return "?" if amount is None else format_usd(amount)


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar on a terminal (files, bytes, rate, ETA), not started yet; None elsewhere."""
    if not enabled or not sys.stdout.isatty():
        return None
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
    )


def shown(path: str) -> str:
    """A file name as one printable line: control characters and bytes that are not UTF-8 are escaped (and the
    name quoted), so a name with a newline cannot pass for two files and an undecodable one cannot crash."""
    if path.isprintable():
        return path
    escaped = "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c if c.isprintable() else repr(c)[1:-1]
        for c in path
    )
    return f"'{escaped}'"


def load_project(*, quiet: bool = False) -> ProjectConfig:
    """The project of the current folder, found like git finds a repository (see
    :func:`gpubox.config.project.locate_project`); says which folder when it is not the current one."""
    from gpubox.actions.project import root_note

    project = config.load_project(held=_roots_in_state("held"), synced=_roots_in_state("synced"))
    note = root_note(project)
    if note is not None and not quiet:
        err(f"gpubox: {note}")
    return project


def _roots_in_state(kind: str) -> Iterator[Path]:
    """Project folders gpubox's state knows, read only if the search for the project gets that far: those a
    gpubox process holds up now (*kind* "held", asked when no marker file is found), or those gpubox has synced
    from on this machine ("synced", asked when nothing nearer marks a root)."""
    from gpubox.state import open_state

    with open_state() as state:
        roots = [s.root for s in state.supervisors() if s.root] if kind == "held" else state.project_roots()
    yield from map(Path, roots)


def tell_moved_here(session: HostSession) -> None:
    """After a command made the project's folder on the host: the folders there of projects that left this
    machine's disk, in case this project is one of them, moved or renamed."""
    from gpubox.remote.folder import moved_here_lines

    for line in moved_here_lines(session.folder):
        err(f"gpubox: {line}")


def check_first_sync(project: ProjectConfig, host: HostConfig, *, yes: bool) -> None:
    """Before the first sync of a folder that is no clear project (the home folder, ``/``, or over 1 GB or
    20,000 files without a gpubox.toml, hosts.toml or git work tree): ask, or with ``--yes`` go on; without a
    terminal refuse."""
    from gpubox.actions.project import first_sync_question

    question = first_sync_question(project, host)
    if question is None:
        return
    if not confirm(question, yes=yes):
        raise UsageError(
            "nothing sent: `gpubox init` in the project's own folder marks it (or answer yes, or --yes)"
        )


def load_hosts(project: ProjectConfig | None = None) -> HostsConfig:
    return config.load_hosts((project or load_project()).root)


class LiveProgress:
    """Progress that changes in place on a terminal: the first sync's bytes as a bar, the env build's current
    step with the time it has taken so far. Anything printed for good goes through :meth:`say`, which clears
    them first; nothing is drawn when stdout is not a terminal. A bar is only drawn while bytes flow, so a
    question asked meanwhile is never overwritten."""

    def __init__(self) -> None:
        self.enabled = sys.stdout.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._line = ""
        self._activity = ""
        self._since: float | None = None
        self._lock = threading.RLock()
        self._ticker: threading.Thread | None = None

    def sync(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._clear_line()
            if self._bar is None:
                self._bar = progress_bar(True)
                self._bar.start()
                self._task = self._bar.add_task("sync", total=total or 1)
            self._bar.update(self._task, completed=done, total=total or 1)

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._stop_bar()
            width = terminal_columns(80) - 1
            self._line = text if len(text) <= width else text[: max(0, width - 1)] + "…"
            sys.stdout.write("\r\x1b[2K" + self._line)
            sys.stdout.flush()

    def activity(self, text: str) -> None:
        """The env build's current step, shown as ``  · env    STEP · 1:23`` (the clock keeps ticking while a
        step is silent, such as pip installing a big wheel)."""
        if not self.enabled:
            return
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            self._activity = text
            self._draw_activity()
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="progress-clock", daemon=True)
                self._ticker.start()

    def _draw_activity(self) -> None:
        if self._since is not None and self._activity:
            self.line(f"  · env    {self._activity} · {format_duration(time.monotonic() - self._since)}")

    def _tick(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                if self._since is not None and self._line:
                    self._draw_activity()

    def say(self, text: str) -> None:
        with self._lock:
            self.pause()
            self._since = None
            self._activity = ""
            out(text)

    def pause(self) -> None:
        """Clear what is drawn (before a line for good, or a question)."""
        with self._lock:
            self._stop_bar()
            self._clear_line()

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def _clear_line(self) -> None:
        if self._line:
            sys.stdout.write("\r\x1b[2K")
            sys.stdout.flush()
            self._line = ""
