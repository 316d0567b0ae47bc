"""The real ``gpubox`` command line on a terminal (a pty), the way a person at a keyboard runs it."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

__all__ = ["Shown", "on_a_terminal"]


class Shown(NamedTuple):
    code: int
    screen: str
    """Everything the terminal received (stderr too, unless asked for apart)."""
    stderr: str
    """stderr, when asked for apart from the terminal."""


def on_a_terminal(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    answer: bytes | None = None,
    prompt: bytes = b"[y/N]",
    stderr_apart: bool = False,
    timeout: float = 120,
) -> Shown:
    """Run ``gpubox ARGS`` with a terminal for stdin and stdout (and stderr, unless *stderr_apart*), typing
    *answer* once *prompt* shows, until it exits or *timeout* seconds pass."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", *args],
        cwd=cwd,
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.PIPE if stderr_apart else terminal,
        env=env if env is not None else dict(os.environ, COLUMNS="160"),
    )
    os.close(terminal)
    shown = b""
    answered = answer is None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break  # the terminal's other end closed: the command exited
            if not chunk:
                break
            shown += chunk
            if not answered and prompt in shown:
                assert answer is not None
                os.write(controller, answer)
                answered = True
        elif process.poll() is not None:
            break
    os.close(controller)
    code = process.wait(30)
    stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
    return Shown(code, shown.decode("utf-8", "replace"), stderr)
