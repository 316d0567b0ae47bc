"""The supervisor: the ``gpubox up`` process that holds one host's connection, keeps it alive, records itself
and reconnects.

It runs in the foreground (``--no-tui``) or in the background in its own session (``--detach``, ``up`` on a
terminal, the dashboard); either way it claims the host in the state database so ``status`` can show it and
``up --stop`` / ``down`` can end it.

How the background supervisor reports its progress: a structured channel, not its printed log. The starting
process (:func:`start_supervisor`) gives it the write end of a pipe (``--events-fd``); the supervisor writes one
JSON object per line (:class:`EventChannel`) until the host is held, then closes it:

    {"event": "line", "text": "  ✓ sync   14 sent ..."}      a line for the user, worded as the CLI prints it
    {"event": "sync", "done": 1048576, "total": 9437184}     bytes of the first sync (for a progress bar)
    {"event": "env", "text": "collecting tensorflow"}        what the env build is doing now
    {"event": "alive"}                                       every few seconds while nothing else is said
    {"event": "ready", "pid": 4242, "tunnels": [["jupyter", "http://127.0.0.1:8888/lab?token=<redacted>"]]}
    {"event": "failed", "message": "...", "exit_code": 1, "details": ["ERROR: ..."]}

    {"event": "ask", "question": "host_key", "host": ..., "key_type": ..., "fingerprint": ...}
    {"event": "ask", "question": "mass_delete", "message": ..., "deleting": 31}

A question waits for one JSON line on the second pipe (``--answers-fd``): ``{"yes": true}``. The starting
process may be a terminal (`gpubox up`) or the dashboard: either shows the lines and asks the user.
Everything the supervisor says also goes to its log (``state/logs/up-HOST.log``), before and after ``ready``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.config import HostConfig, ProjectConfig
from gpubox.cost import BillingHold
from gpubox.errors import (
    EXIT_BAD_INPUT,
    EXIT_HOST,
    AgentError,
    BadInput,
    GpuboxError,
    HostError,
    HostUnreachable,
)
from gpubox.remote.backoff import Backoff
from gpubox.remote.providers import host_price
from gpubox.remote.session import HostSession
from gpubox.state import open_state

if TYPE_CHECKING:
    from gpubox.actions import Say
    from gpubox.actions.monitor import HostMonitor
    from gpubox.actions.up import Ready, UpOptions
    from gpubox.remote.connection import AskToPin
    from gpubox.sync.engine import BatchProgress

__all__ = [
    "HEARTBEAT_SECONDS",
    "EventChannel",
    "Supervised",
    "claim_host",
    "start_background",
    "start_supervisor",
    "stop_note",
    "stop_on_signals",
    "stop_supervisor",
    "supervise",
]

HEARTBEAT_SECONDS = 5.0
RECONNECT = Backoff(initial=0.5, maximum=15.0, deadline=None)


@contextlib.contextmanager
def claim_host(
    host: HostConfig,
    project: ProjectConfig | None = None,
    *,
    detached: bool,
    folder: str | None = None,
    log_file: str | None = None,
    probe: Mapping[str, Any] | None = None,
) -> Iterator[BillingHold]:
    """Record this process as the one holding *host* up for *project* (whose folder there is *folder*), with
    billing running, for as long as the block lasts.

    The billing interval is the host's, whichever projects hold it (see :class:`gpubox.cost.BillingHold`): the
    first supervisor opens it, the others join it, and the last one out closes it with the exact time held (at
    its last heartbeat if the process is killed); one that leaves earlier hands it to another still holding the
    host. *probe* (the host's) lets an ssh host without price_per_hour be billed at a catalog estimate."""
    pid = os.getpid()
    price = host_price(host, probe)
    with open_state() as state:
        state.claim_supervisor(
            host.name,
            pid,
            detached=detached,
            log_file=log_file,
            project=project.id if project is not None else "",
            root=str(project.root) if project is not None else None,
            folder=folder,
        )
    hold = BillingHold(host.name, price, pid=pid)
    try:
        hold.open()
        yield hold
    finally:
        with open_state() as state:
            others = [s for s in state.host_supervisors(host.name) if s.pid != pid]
        hold.close(hand_to=others[0].pid if others else None)
        with open_state() as state:
            state.release_supervisor(host.name, pid)
            state.clear_monitor(host.name, pid)
            if host.spec.rents and not others:
                _bill_unheld(state, host, price)


def _bill_unheld(state: Any, host: HostConfig, price: Any) -> None:
    """A rented instance goes on billing after its supervisor lets go: count that time until it is terminated."""
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
    say: Callable[[str], None],
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
            say(f"link to {name} lost ({exc}); reconnecting")
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
        say(f"reconnected to {name} after {time.monotonic() - lost_at:.1f} s")
        if monitor is not None:
            monitor.link_back()


def stop_supervisor(
    host_name: str, project: str | None = None, *, timeout: float = 15.0, why: str | None = None
) -> int | None:
    """SIGTERM the process holding *host_name* up for the project *project* (its id; None: whichever holds the
    host first) and wait for it to go; return its pid, None if none ran. Billing goes on while other projects
    still hold the host. *why* is what happens to the host next (``gpubox down`` stops it): the supervisor's
    last line says it."""
    with open_state() as state:
        found = state.supervisor(host_name, project)
    if found is None:
        return None
    if why is not None:
        with contextlib.suppress(OSError):
            paths.ensure_private_dir(paths.state_dir() / "logs")
            _stop_note(found.pid).write_text(why)
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
        if state.host_supervisors(host_name):
            return found.pid  # another project still holds the host: its billing goes on with them
        rented = state.current_instance(host_name)
        if rented is None or not rented.billing:
            state.close_billing(host_name)
        else:
            # A rented instance bills on without its supervisor (even one that had to be killed) until terminated.
            state.open_billing(
                host_name, rented.price_per_hour, price_source=f"live price from {rented.provider}"
            )
    return found.pid


def _stop_note(pid: int) -> Path:
    return paths.state_dir() / "logs" / f"stopping-{pid}.txt"


def stop_note() -> str | None:
    """What the process that stopped this supervisor said happens to the host next (read once)."""
    note = _stop_note(os.getpid())
    try:
        text = note.read_text().strip()
    except OSError:
        return None
    with contextlib.suppress(OSError):
        note.unlink()
    return text or None


# ------------------------------------------------------------------------------- the background supervisor


ALIVE_SECONDS = 5.0
"""How often a background supervisor that has nothing to say says that it is alive."""


class EventChannel:
    """The background supervisor's end of its progress channel (see the module's docstring).

    Every line is also printed to this process's stdout (the supervisor's log). Writes never fail: when the
    starting process has gone (Ctrl-C on `gpubox up`, a closed dashboard), the channel just closes, and a
    question asked then is answered no.
    """

    def __init__(self, events_fd: int | None, answers_fd: int | None = None) -> None:
        self._pipe = None if events_fd is None else os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)
        self._answers = None if answers_fd is None else os.fdopen(answers_fd, "r", encoding="utf-8")
        self._lock = threading.Lock()
        self._quiet = threading.Event()
        self._last = time.monotonic()
        if self._pipe is not None:
            threading.Thread(target=self._keep_alive, name="events-alive", daemon=True).start()

    def _send(self, event: dict[str, Any]) -> bool:
        with self._lock:
            if self._pipe is None:
                return False
            try:
                self._pipe.write(json.dumps(event, ensure_ascii=False) + "\n")
                self._last = time.monotonic()
                return True
            except (OSError, ValueError):
                self._close()
                return False

    def _close(self) -> None:
        pipe, self._pipe = self._pipe, None
        answers, self._answers = self._answers, None
        self._quiet.set()
        for stream in (pipe, answers):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    def _keep_alive(self) -> None:
        while not self._quiet.wait(ALIVE_SECONDS / 5):
            if time.monotonic() - self._last >= ALIVE_SECONDS:
                self._send({"event": "alive"})

    def _ask(self, event: dict[str, Any]) -> bool:
        """Ask the starting process and wait for its answer; no when it cannot answer (or has gone)."""
        if self._answers is None or not self._send({"event": "ask", **event}):
            return False
        try:
            line = self._answers.readline()
        except (OSError, ValueError):
            return False
        try:
            return bool(json.loads(line).get("yes")) if line else False
        except ValueError:
            return False

    def say(self, text: str) -> None:
        print(text, flush=True)
        self._send({"event": "line", "text": text})

    def ask_to_pin(self, host: str, key_type: str, fingerprint: str) -> bool:
        """An :data:`~gpubox.remote.connection.AskToPin` that asks the user where the starting process is."""
        answer = self._ask(
            {"question": "host_key", "host": host, "key_type": key_type, "fingerprint": fingerprint}
        )
        print(
            f"  · host key {key_type} {fingerprint} for {host}: {'pinned' if answer else 'refused'}",
            flush=True,
        )
        return answer

    def confirm_mass_delete(self, message: str, deleting: int) -> bool:
        return self._ask({"question": "mass_delete", "message": message, "deleting": deleting})

    def sync_progress(self, step: BatchProgress) -> None:
        self._send({"event": "sync", "done": step.bytes_done, "total": step.bytes_total})

    def env_activity(self, text: str) -> None:
        """What the env build is doing now (pip's whole output stays in its log on the host)."""
        print(f"  · env    {text}", flush=True)
        self._send({"event": "env", "text": text})

    def ready(self, ready: Ready) -> None:
        """The host is held: say so, with the tunnels, and close the channel (the log goes on)."""
        self.ready_with(pid=ready.pid, tunnels=[list(t) for t in ready.tunnels])

    def ready_with(self, **fields: Any) -> None:
        """The background process is up and on its own now: send ``ready`` with *fields*, close the channel."""
        self._send({"event": "ready", **fields})
        self.close()

    def failed(self, error: GpuboxError) -> None:
        self._send(
            {
                "event": "failed",
                "message": str(error),
                "exit_code": error.exit_code,
                "details": list(error.details),
            }
        )
        self.close()

    def close(self) -> None:
        with self._lock:
            self._close()


@dataclass(frozen=True)
class Supervised:
    """A background supervisor that holds a host."""

    pid: int
    log_path: Path
    tunnels: tuple[tuple[str, str], ...] = ()
    """(service, URL without secrets) of each tunnel it opened."""


def start_supervisor(
    host: HostConfig,
    *,
    options: UpOptions,
    say: Say | None = None,
    on_sync: Callable[[int, int], None] | None = None,
    on_env: Callable[[str], None] | None = None,
    ask_to_pin: AskToPin | None = None,
    confirm_mass_delete: Callable[[str, int], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    project: ProjectConfig | None = None,
) -> Supervised:
    """Start the supervisor that holds *host* from the background (its own session, log in the state folder)
    and return once it holds it. *say* hears its lines (connect, report, sync, env, services, tunnels),
    *on_sync* the first sync's bytes (done, total), *on_env* what the env build is doing, each time that
    changes. It runs in *cwd*, the project folder (default: this process's).

    The two questions a background process meets are passed up and answered here: an unknown host key
    (*ask_to_pin*; the supervisor pins the key it was shown) and a first sync that would delete many host files
    (*confirm_mass_delete*, given the reason and the count). Without a callback the answer is no. *timeout* is
    how long it may stay silent (it says it is alive every few seconds, so this catches a hung process, not a
    slow env build). *project* (the one in *cwd*) names its log; it runs in the project's root when *cwd* is not
    given."""
    if cwd is None and project is not None:
        cwd = project.root
    log_dir = paths.ensure_private_dir(paths.state_dir() / "logs")
    # One log per host and project: several projects may hold one host at once.
    project_id = project.id if project is not None else None
    log_path = log_dir / (f"up-{host.name}-{project_id}.log" if project_id else f"up-{host.name}.log")
    arguments = ["up", host.name, "--no-tui", "--supervise-child"]
    if options.accept_new:
        arguments.append("--accept-new")
    if not options.sync:
        arguments.append("--no-sync")
    if not options.services:
        arguments.append("--no-services")
    if options.allow_mass_delete:
        arguments.append("--allow-mass-delete")
    ready = start_background(
        arguments,
        what=f"the background gpubox for {host.name}",
        log_path=log_path,
        say=say,
        on_sync=on_sync,
        on_env=on_env,
        ask_to_pin=ask_to_pin,
        confirm_mass_delete=confirm_mass_delete,
        should_stop=should_stop,
        cwd=cwd,
        timeout=timeout,
        gave_up=f"gave up bringing {host.name} up",
        not_ready="before holding it",
    )
    tunnels = tuple((str(name), str(url)) for name, url in ready.get("tunnels", []))
    return Supervised(int(ready["pid"]), log_path, tunnels)


def start_background(
    arguments: list[str],
    *,
    what: str,
    log_path: Path,
    say: Say | None = None,
    on_sync: Callable[[int, int], None] | None = None,
    on_env: Callable[[str], None] | None = None,
    ask_to_pin: AskToPin | None = None,
    confirm_mass_delete: Callable[[str, int], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
    gave_up: str = "gave up",
    not_ready: str = "before it was ready",
) -> dict[str, Any]:
    """Start ``gpubox ARGUMENTS --events-fd N --answers-fd M`` in its own session (its output appended to
    *log_path*), relay its event channel (see the module's docstring) until it says ``ready``, and return that
    event. A ``failed`` event is raised here as the same kind of error; a process that dies or stays silent for
    *timeout* seconds is a GpuboxError naming *what* and the log. The ``up`` supervisor and the sweep scheduler
    both start this way."""
    events_read, events_write = os.pipe()
    answers_read, answers_write = os.pipe()
    command = [sys.executable, "-m", "gpubox", *arguments]
    command += ["--events-fd", str(events_write), "--answers-fd", str(answers_read)]
    try:
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                pass_fds=(events_write, answers_read),
                env=None if env is None else {**os.environ, **env},
            )
    finally:
        os.close(events_write)
        os.close(answers_read)
    with os.fdopen(events_read, "rb") as events, os.fdopen(answers_write, "w", encoding="utf-8") as answers:
        pending = b""
        deadline = time.monotonic() + timeout
        while True:
            if should_stop is not None and should_stop():
                child.terminate()
                raise GpuboxError(gave_up)
            readable, _, _ = select.select([events], [], [], 0.2)
            if not readable:
                if time.monotonic() > deadline:
                    raise GpuboxError(f"{what} said nothing for {timeout:g} s (log {log_path})")
                continue
            data = os.read(events.fileno(), 1 << 16)
            if not data:
                break  # closed without `ready` or `failed`: it died
            deadline = time.monotonic() + timeout
            pending += data
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                event = json.loads(raw)
                kind = event.get("event")
                if kind == "line" and say is not None:
                    say(str(event["text"]))
                elif kind == "sync" and on_sync is not None:
                    on_sync(int(event["done"]), int(event["total"]))
                elif kind == "env" and on_env is not None:
                    on_env(str(event["text"]))
                elif kind == "ask":
                    yes = _answer(event, ask_to_pin, confirm_mass_delete)
                    answers.write(json.dumps({"yes": yes}) + "\n")
                    answers.flush()
                    deadline = time.monotonic() + timeout
                elif kind == "ready":
                    return dict(event)
                elif kind == "failed":
                    child.wait()
                    error = _error(str(event.get("message") or "failed"), int(event.get("exit_code") or 1))
                    error.details = tuple(str(line) for line in event.get("details") or ())
                    raise error
    code = child.wait()
    raise GpuboxError(f"{what} exited (status {code}) {not_ready} (log {log_path})")


def _answer(
    event: Mapping[str, Any],
    ask_to_pin: AskToPin | None,
    confirm_mass_delete: Callable[[str, int], bool] | None,
) -> bool:
    question = event.get("question")
    if question == "host_key" and ask_to_pin is not None:
        return ask_to_pin(str(event["host"]), str(event["key_type"]), str(event["fingerprint"]))
    if question == "mass_delete" and confirm_mass_delete is not None:
        return confirm_mass_delete(str(event["message"]), int(event["deleting"]))
    return False


def _error(message: str, exit_code: int) -> GpuboxError:
    """The background supervisor's error, as the same kind (so the same exit code) in this process."""
    if exit_code == EXIT_BAD_INPUT:
        return BadInput(message)
    if exit_code == EXIT_HOST:
        return HostError(message)
    return GpuboxError(message)
