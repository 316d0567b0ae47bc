"""The one retry policy of gpubox: exponential backoff with jitter, bounded by a deadline.

Apart from :mod:`gpubox.remote.connection` (which re-exports it) so that code retrying a connection through the
control socket of a held host does not load paramiko."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from gpubox.errors import HostUnreachable
from gpubox.record import record

__all__ = ["Backoff", "with_backoff"]

T = TypeVar("T")


@record
class Backoff:
    """Exponential backoff with jitter, bounded by a deadline: the one retry policy of gpubox."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0
    jitter: float = 0.2
    deadline: float | None = 120.0

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield delay * (1 + random.uniform(-self.jitter, self.jitter))
            delay = min(delay * self.factor, self.maximum)


def with_backoff(
    action: Callable[[], T],
    backoff: Backoff = Backoff(),
    *,
    retry_on: tuple[type[BaseException], ...] = (HostUnreachable,),
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
) -> T:
    """Run *action* until it succeeds; retry only what waiting can fix (an unreachable host, not a bad key)."""
    started = time.monotonic()
    delays = backoff.delays()
    while True:
        try:
            return action()
        except retry_on as exc:
            delay = next(delays)
            elapsed = time.monotonic() - started
            if should_stop() or (backoff.deadline is not None and elapsed + delay > backoff.deadline):
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            sleep(delay)
