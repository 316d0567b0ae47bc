"""The command line's grammar: every command, its options and the handler that runs it.

Handlers are named ``"module:function"`` (a module of :mod:`gpubox.cli`) and imported only when their command is
dispatched, so ``gpubox --help`` loads argparse and this file, nothing heavy (see tests/unit/test_house_rules.py).
argparse (stdlib) rather than click or typer for the same reason.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gpubox import __version__
from gpubox.errors import UsageError

__all__ = ["COMMANDS", "build_parser", "handler_for", "terminal_columns"]

Handler = Callable[[argparse.Namespace], int]


def terminal_columns(fallback: int) -> int:
    """``shutil.get_terminal_size().columns`` (``COLUMNS`` first, then the terminal, then *fallback*), without
    importing shutil and the compression modules under it (~2 ms of every command)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else fallback


class _Formatter(argparse.HelpFormatter):
    """argparse's help layout, its width found by :func:`terminal_columns` (argparse imports shutil for it)."""

    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, terminal_columns(80) - 2 if width is None else width
        )


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is one line and exit 2, like every other bad input."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        choice = _INVALID_CHOICE.match(message)
        if choice is not None:
            import difflib

            word, options = choice.group(2), _QUOTED.findall(choice.group(3))
            close = difflib.get_close_matches(word, options, n=1, cutoff=0.75)
            what = "command" if choice.group(1) == "COMMAND" else f"{choice.group(1)}"
            hint = f"; did you mean `{self.prog} {close[0]}`?" if close and what == "command" else ""
            if close and what != "command":
                hint = f'; did you mean "{close[0]}"?'
            listed = "" if hint else f" (one of: {', '.join(options)})"
            raise UsageError(f"unknown {what} {word!r}{hint}{listed} (see `{self.prog} --help`)")
        raise UsageError(f"{message} (see `{self.prog} --help`)")


_INVALID_CHOICE = re.compile(r"argument (\S+?): invalid choice: '([^']*)' \(choose from (.*)\)$")
_QUOTED = re.compile(r"'([^']*)'")


def _seconds(text: str) -> float:
    """A number of seconds for an option: finite and not negative (argparse turns the error into usage)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser(arguments: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for *arguments* (gpubox's own, before any ``--``): every command is listed with its one-line
    help, but only the command asked for gets its options (building all 21 costs more than some commands take
    to run). Without *arguments*, or when they name no known command or ask for the list first (``gpubox -h
    run``), no command gets its options: the parser then only lists them, or says which are known."""
    parser = _Parser(
        prog="gpubox",
        description="A rented GPU machine that feels like part of your laptop.",
        epilog="Exit codes: 0 ok, 1 failed, 2 bad input, 3 cannot reach or trust the host, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"gpubox {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for unexpected errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wanted = _command_asked(arguments or ())
    for command in COMMANDS:
        if command.name == wanted:
            sub = commands.add_parser(command.name, help=command.help, description=command.help)
            sub.set_defaults(handler=command.handler)
            if command.options is not None:
                command.options(sub)
        else:
            # Listed (in `gpubox --help`, and among the choices argparse checks), never parsed.
            commands.add_parser(command.name, help=command.help, add_help=False)
    return parser


def _command_asked(arguments: Sequence[str]) -> str | None:
    """The command *arguments* name, or None (none, or ``-h`` before it: the whole list is wanted)."""
    for word in arguments:
        if word in ("-h", "--help"):
            return None
        if not word.startswith("-"):
            return word if word in _NAMES else None
    return None


def handler_for(name: str) -> Handler:
    """The function a ``"module:function"`` handler name stands for, imported now."""
    module, function = name.split(":")
    handler: Handler = getattr(importlib.import_module(f"gpubox.cli.{module}"), function)
    return handler


class _Command:
    """One command: its name, its handler (``"module:function"``, a module of :mod:`gpubox.cli`), its one-line
    help and what adds its options. A plain class: a dataclass costs a millisecond of start-up."""

    __slots__ = ("handler", "help", "name", "options")

    def __init__(
        self,
        name: str,
        handler: str,
        help: str,
        options: Callable[[argparse.ArgumentParser], None] | None,
    ) -> None:
        self.name = name
        self.handler = handler
        self.help = help
        self.options = options


def _hosts(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _status(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub.add_argument(
        "--show-secrets", action="store_true", help="include Jupyter's token in its URL (asks the host)"
    )


def _up(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "host", nargs="?", metavar="HOST", help="default: [defaults] host, the only host, or local"
    )
    sub.add_argument(
        "--no-tui", action="store_true", help="plain lines in the foreground until Ctrl-C (no dashboard)"
    )
    sub.add_argument("--detach", action="store_true", help="hold the host from a background process")
    sub.add_argument("--no-sync", action="store_true", help="do not mirror the project folder")
    sub.add_argument("--no-services", action="store_true", help="do not start Jupyter and TensorBoard")
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")
    sub.add_argument(
        "--yes",
        action="store_true",
        help="rent without asking (a rented host shows its price first); sync a big or unusual folder",
    )
    sub.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="let the first sync carry out deletions that look like a wipe",
    )
    sub.add_argument(
        "--stop", action="store_true", help="end the gpubox process holding the host (host keeps running)"
    )
    sub.add_argument("--supervise-child", action="store_true", help=argparse.SUPPRESS)
    sub.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    sub.add_argument("--answers-fd", type=int, help=argparse.SUPPRESS)


def _down(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST")
    sub.add_argument("--keep-instance", action="store_true", help="leave the machine running")
    sub.add_argument("--yes", action="store_true", help="do not ask (about active runs, or terminating)")
    sub.add_argument("--no-pull", action="store_true", help="terminate a rented host without pulling outputs")
    sub.add_argument(
        "--orphans",
        action="store_true",
        help="terminate instances gpubox launched that nobody holds (asks first)",
    )


def _ssh(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", metavar="HOST")
    sub.add_argument(
        "command_args", nargs="*", metavar="CMD", help="after `--`: the command and its arguments"
    )
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")


def _sync(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST")
    sub.add_argument("--watch", action="store_true", help="keep the host in step as you edit, until Ctrl-C")
    sub.add_argument(
        "--dry-run", action="store_true", help="list what would be sent and deleted; send nothing"
    )
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub.add_argument(
        "--verify", action="store_true", help="also compare with the host's files (finds changes made there)"
    )
    sub.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="carry out deletions held back as a wipe (also for a `gpubox up` or `sync --watch` running now)",
    )
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")
    sub.add_argument(
        "--yes", action="store_true", help="sync the home folder, /, or a first sync over 1 GB without asking"
    )


def _pull(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST")
    sub.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="default: the [sync] outputs folders and the notebooks created or changed on the host",
    )
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")


def _push(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST")
    sub.add_argument("paths", nargs="*", metavar="PATH", help="files or folders of the project")
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")


def _check(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST", help="default: like `gpubox up`")
    sub.add_argument(
        "--nvidia-smi",
        metavar="FILE",
        help="offline: a saved nvidia-smi table, `-q` text, `-q -x` XML or --query-gpu CSV (- reads stdin)",
    )
    sub.add_argument(
        "--framework",
        metavar="SPEC",
        help="tensorflow==2.21 or torch==2.10 (default: installed in the project's env on the host, the "
        "requirements pin, or the newest release gpubox knows)",
    )
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")


def _offers(sub: argparse.ArgumentParser) -> None:
    from gpubox.remote.providers.registry import CLOUD_NAMES  # light: names and strings, no client

    sub.add_argument("--provider", choices=CLOUD_NAMES, help="ask only this provider")
    sub.add_argument("--gpu", metavar="GPU", help='a GPU model, loosely matched: "A100", "RTX 4090"')
    sub.add_argument("--count", type=int, metavar="N", help="exactly N GPUs")
    sub.add_argument("--max-price", type=float, metavar="USD", help="at most this many US dollars per hour")
    sub.add_argument(
        "--compatible", action="store_true", help="only machines the project's TensorFlow can use"
    )
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _cost(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--since",
        metavar="DATE",
        help="only time from DATE on: 2026-11-01, 2026-11-01T09:30, or 7d / 12h / 30m",
    )
    sub.add_argument("--all", action="store_true", help="list every run (default: the dearest few per host)")
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _run(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "command_args", nargs="*", metavar="CMD", help="after `--`: the command and its arguments"
    )
    sub.add_argument("--host", metavar="HOST", help="default: [defaults] host, the only host, or local")
    sub.add_argument(
        "--hosts", metavar="H1,H2", help="one worker per host, TF_CONFIG set (MultiWorkerMirroredStrategy)"
    )
    sub.add_argument("--name", help="a label for the run")
    sub.add_argument("-f", "--follow", action="store_true", help="stream its log; exit with its exit code")
    sub.add_argument("--no-sync", action="store_true", help="start without syncing first")
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")
    sub.add_argument(
        "--yes", action="store_true", help="sync the home folder, /, or a first sync over 1 GB without asking"
    )


def _runs(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--host", metavar="HOST")
    sub.add_argument("--all", action="store_true", help="every run, not only active and the last 10")
    sub.add_argument(
        "--all-projects", action="store_true", help="every project's runs on the host, this one's marked *"
    )
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _logs(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "run", metavar="RUN", nargs="?", help="a run id or --name label (default: this project's latest run)"
    )
    sub.add_argument("--host", metavar="HOST")
    sub.add_argument("-f", "--follow", action="store_true", help="keep streaming until the run ends")
    sub.add_argument("--tail", type=int, metavar="N", help="start with the last N lines")


def _stop(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "run",
        metavar="RUN",
        nargs="?",
        help="a run id or --name label (default: this project's only active run)",
    )
    sub.add_argument("--host", metavar="HOST")
    sub.add_argument("--grace", type=_seconds, default=10.0, help="seconds between SIGTERM and SIGKILL")


def _sweep(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("name", nargs="?", metavar="NAME", help="default: the project's name")
    sub.add_argument(
        "--hosts", metavar="H1,H2", help="the hosts whose GPUs it uses (default: every host gpubox holds up)"
    )
    sub.add_argument("--trials", type=int, metavar="N", help="trials in all (instead of [sweep] trials)")
    sub.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: sqlite:///file.db, postgresql://user@host/db, mysql://... "
        "(default: a SQLite file in gpubox's state folder)",
    )
    sub.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="stay until it ends; exit 0 when every trial finished or was pruned",
    )
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sub.add_argument("--show", action="store_true", help="show it, start nothing")
    sub.add_argument("--stop", action="store_true", help="stop scheduling and stop the running trials")
    sub.add_argument("--accept-new", action="store_true", help="pin an unknown host key without asking")
    sub.add_argument("--scheduler", action="store_true", help=argparse.SUPPRESS)
    sub.add_argument("--events-fd", type=int, help=argparse.SUPPRESS)
    sub.add_argument("--answers-fd", type=int, help=argparse.SUPPRESS)


def _sweeps(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--storage", metavar="URL", help="also list the sweeps in this Optuna storage")
    sub.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _open(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "service", metavar="SERVICE", help="jupyter, tensorboard or a [services.NAME] from gpubox.toml"
    )
    sub.add_argument("host", nargs="?", metavar="HOST")
    sub.add_argument("--print", dest="print_only", action="store_true", help="print the URL instead")


def _dash(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("host", nargs="?", metavar="HOST", help="the host to select first")


COMMANDS: tuple[_Command, ...] = (
    _Command("init", "hosts:cmd_init", "write gpubox.toml and hosts.toml for this project", None),
    _Command("hosts", "hosts:cmd_hosts", "configured hosts: provider, state, GPU, $/h", _hosts),
    _Command("status", "hosts:cmd_status", "what is up now, its tunnels, and what it costs", _status),
    _Command("up", "up:cmd_up", "connect to a host (starting it if needed), probe it and hold it", _up),
    _Command("down", "up:cmd_down", "stop holding a host; pull outputs and terminate a rented one", _down),
    _Command(
        "ssh",
        "shell:cmd_ssh",
        "a shell on the host, or run one command there (its exit code is returned)",
        _ssh,
    ),
    _Command(
        "sync",
        "sync:cmd_sync",
        "mirror the project folder to the host now (one-way-safe); --watch keeps going",
        _sync,
    ),
    _Command(
        "pull",
        "sync:cmd_pull",
        "bring outputs and notebooks edited on the host (or the named paths) back from the host, incrementally",
        _pull,
    ),
    _Command(
        "push",
        "sync:cmd_push",
        "send the named paths to the host over copies edited there (local wins; the host's go to its trash)",
        _push,
    ),
    _Command(
        "check", "check:cmd_check", "can the framework use this host's GPU? exits 1 when it cannot", _check
    ),
    _Command(
        "offers",
        "hosts:cmd_offers",
        "rentable machines from the configured clouds, cheapest first, with verdict",
        _offers,
    ),
    _Command("cost", "cost:cmd_cost", "what each host has cost: $/h, hours, spent, budgets; totals", _cost),
    _Command(
        "run", "runs:cmd_run", "sync, then start a command on the host, detached; prints its run id", _run
    ),
    _Command("runs", "runs:cmd_runs", "this project's runs on the host: state, duration, exit code", _runs),
    _Command(
        "logs", "runs:cmd_logs", "a run's log; -f follows it to the end (and survives a dropped link)", _logs
    ),
    _Command(
        "stop",
        "runs:cmd_stop",
        "stop a run: SIGTERM to its process group, SIGKILL after a grace period",
        _stop,
    ),
    _Command(
        "sweep",
        "sweep:cmd_sweep",
        "start or resume the project's hyperparameter sweep ([sweep] in gpubox.toml) on every GPU held, detached; or show, follow or stop it",
        _sweep,
    ),
    _Command("sweeps", "sweep:cmd_sweeps", "hyperparameter sweeps: state, trials, best value, cost", _sweeps),
    _Command(
        "open",
        "shell:cmd_open",
        "open a tunnelled service (jupyter, tensorboard or a custom one) in the browser",
        _open,
    ),
    _Command("dash", "up:cmd_dash", "the dashboard: hosts, runs, GPUs, sync, tunnels and money, live", _dash),
    _Command(
        "ssh-config",
        "shell:cmd_ssh_config",
        "write `Host gpubox-NAME` entries for VS Code, JetBrains and ssh",
        None,
    ),
)
_NAMES = frozenset(command.name for command in COMMANDS)
