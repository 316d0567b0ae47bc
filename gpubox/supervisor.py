"""The ``gpubox up`` process: holds one host's connection, keeps it alive, records itself, reconnects.

It runs in the foreground (``--no-tui``) or detached in its own session (``--detach``); either way it claims the
host in the state database so ``status`` can show it and ``up --stop`` / ``down`` can end it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from gpubox.config import HostConfig
from gpubox.cost import BillingHold
from gpubox.errors import AgentError, HostUnreachable
from gpubox.remote.connection import Backoff
from gpubox.remote.providers import host_price
from gpubox.remote.session import HostSession
from gpubox.state import open_state

if TYPE_CHECKING:
    from gpubox.monitor import HostMonitor

__all__ = ["HEARTBEAT_SECONDS", "claim_host", "stop_supervisor", "supervise"]

HEARTBEAT_SECONDS = 5.0
RECONNECT = Backoff(initial=0.5, maximum=15.0, deadline=None)


@contextlib.contextmanager
def claim_host(
    host: HostConfig,
    *,
    detached: bool,
    log_file: str | None = None,
    probe: Mapping[str, Any] | None = None,
) -> Iterator[BillingHold]:
    """Record this process as the one holding *host* up, with billing running, for as long as the block lasts.

    The billing interval is held by this process (see :class:`gpubox.cost.BillingHold`): the caller's loop beats
    it, and it is closed with the exact time held on the way out (at its last heartbeat if the process is
    killed). *probe* (the host's) lets an ssh host without price_per_hour be billed at a catalog estimate."""
    pid = os.getpid()
    price = host_price(host, probe)
    with open_state() as state:
        state.claim_supervisor(host.name, pid, detached=detached, log_file=log_file)
    hold = BillingHold(host.name, price, pid=pid)
    try:
        hold.open()
        yield hold
    finally:
        hold.close()
        with open_state() as state:
            state.release_supervisor(host.name, pid)
            state.clear_monitor(host.name, pid)
            if host.spec.rents:
                _bill_unheld(state, host, price)


def _bill_unheld(state: Any, host: HostConfig, price: Any) -> None:
    """A rented instance goes on billing after its holder lets go: count that time until it is terminated."""
    record = state.current_instance(host.name)
    if record is not None and record.billing:
        state.open_billing(
            host.name,
            record.price_per_hour if record.price_per_hour is not None else price.amount,
            price_source=f"live price from {host.provider}",
        )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event, *also: threading.Event) -> Iterator[None]:
    """Turn SIGTERM, SIGINT and SIGHUP into a clean stop instead of an exception in the middle of I/O.

    *also* are events the stopping loop may be waiting on (set too, so it wakes at once)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        for event in also:
            event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def supervise(
    session: HostSession,
    *,
    stop: threading.Event,
    log: Callable[[str], None],
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    wake: threading.Event | None = None,
    monitor: HostMonitor | None = None,
) -> None:
    """Keep *session* alive until *stop* is set: heartbeat, and reconnect with backoff when the link drops.

    *wake* lets another thread (live sync, after a failed batch) ask for a heartbeat now instead of at the next
    tick, so a dead link is noticed at once. *monitor* (billing heartbeat, budgets, idle autostop) then paces
    the loop and does the link check itself; it may stop the host, and *stop* with it.
    """
    name = session.host.name
    wake = wake or threading.Event()
    while not stop.is_set():
        woken = wake.wait(heartbeat_seconds if monitor is None else monitor.wait_seconds())
        wake.clear()
        if stop.is_set():
            return
        try:
            if monitor is None:
                session.heartbeat()
            else:
                monitor.tick(check_link=woken)
            continue
        except (HostUnreachable, AgentError) as exc:
            log(f"link to {name} lost ({exc}); reconnecting")
        if monitor is not None:
            monitor.link_lost()
        lost_at = time.monotonic()
        try:
            session.reconnect(
                RECONNECT,
                retry_on=(HostUnreachable, AgentError),
                should_stop=stop.is_set,
                sleep=(lambda delay: stop.wait(delay) and None) if monitor is None else monitor.sleep,
            )
        except (HostUnreachable, AgentError):
            if stop.is_set():
                return
            raise
        log(f"reconnected to {name} after {time.monotonic() - lost_at:.1f} s")


def stop_supervisor(host_name: str, *, timeout: float = 15.0) -> int | None:
    """SIGTERM the process holding *host_name* up and wait for it to go; return its pid, None if none ran."""
    with open_state() as state:
        found = state.supervisor(host_name)
    if found is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(found.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not found.alive():
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(found.pid, signal.SIGKILL)
    with open_state() as state:
        state.release_supervisor(host_name, found.pid)
        rented = state.current_instance(host_name)
        if rented is None or not rented.billing:
            state.close_billing(host_name)
        else:
            # A rented instance bills on without its holder (even one that had to be killed) until terminated.
            state.open_billing(
                host_name, rented.price_per_hour, price_source=f"live price from {rented.provider}"
            )
    return found.pid
