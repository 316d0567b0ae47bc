"""Helpers for the dashboard's thread workers (no screen, no app: every module of the dashboard may use them)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from textual.worker import get_current_worker

__all__ = ["Abandoned", "interruptible"]

T = TypeVar("T")


class Abandoned(Exception):
    """The worker was cancelled (the dashboard is closing) while its call was still waiting on a host; the
    call finishes (or dies with the process) in its own thread."""


def interruptible(call: Callable[[], T]) -> T:
    """Run *call* in a daemon thread and wait for it, but give up as soon as the current worker is cancelled.

    Quitting must not wait for a host that stopped answering: Textual's thread workers run in the event loop's
    executor, which the loop waits for on exit, and an SSH read on a dead link can block for a long time."""
    worker = get_current_worker()
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:
            box.append((False, exc))

    thread = threading.Thread(target=target, name=f"gpubox {worker.name}", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if worker.is_cancelled:
            raise Abandoned(worker.name)
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value
