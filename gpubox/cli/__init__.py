"""The ``gpubox`` command line: parse, call a use case in :mod:`gpubox.actions` (or a room below it), print.

Kept light on purpose: ``gpubox --help`` must not import paramiko, textual, watchdog or tensorflow, so this
package's ``__init__`` and :mod:`gpubox.cli.parser` import only the stdlib and gpubox's errors; each command's
module (``hosts``, ``up``, ``sync``, ``runs``, ``check``, ``cost``, ``shell``) is imported when it runs.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence

from gpubox.cli.parser import build_parser, handler_for
from gpubox.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, GpuboxError, UsageError

__all__ = ["main"]


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    # Everything after `--` belongs to the remote command, never to gpubox's own options.
    trailing: list[str] | None = None
    if "--" in arguments:
        split = arguments.index("--")
        arguments, trailing = arguments[:split], arguments[split + 1 :]
    debug = "--debug" in arguments
    for stream in (sys.stdout, sys.stderr):
        # A locale that encodes strictly must not turn a file name that is not UTF-8 into a crash.
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # No garbage collection while the command's modules load: they make thousands of objects and no garbage,
    # and the collector would walk them over and over (~3 ms of a one-shot command). What they made is then
    # set aside for good (gc.freeze), so later collections of a long command skip it.
    try:
        gc.disable()
        try:
            args = build_parser(arguments).parse_args(arguments)
            if trailing is not None:
                if not hasattr(args, "command_args"):
                    raise UsageError("`--` starts a remote command, which this command does not take")
                args.command_args = [*args.command_args, *trailing]
            if not getattr(args, "handler", None):
                build_parser().print_help()
                return EXIT_BAD_INPUT if arguments else 0
            handler = handler_for(args.handler)
            gc.freeze()
        finally:
            gc.enable()
        return int(handler(args))
    except GpuboxError as exc:
        if debug:
            raise
        for line in exc.details:
            _err(f"    | {line}")
        _err(f"gpubox: {exc}")
        return exc.exit_code
    except KeyboardInterrupt as exc:
        # A command may say what Ctrl-C left behind (a run that keeps running) as the interrupt's message.
        _err(f"gpubox: interrupted: {exc}" if str(exc) else "gpubox: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`gpubox hosts | head`); point stdout at /dev/null so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if debug:
            raise
        _err(
            f"gpubox: internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)"
        )
        return 1
