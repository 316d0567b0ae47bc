"""Polling: one agent round trip per host per refresh (:class:`HostPoller`), and when each poll and state read
happens (:class:`Polls`). No Textual here: the dashboard runs each poll as one worker and arms the next one when
it has answered, as :class:`Polls` says, so polls never pile up and a slow host only slows itself.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpubox.dashboard.read import HostSample, StateReader, host_sample
from gpubox.errors import GpuboxError
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = ["RECENT_FINISHED", "HostPoller", "PollRequest", "Polls"]

RECENT_FINISHED = 10
"""Finished runs shown per host, next to every run still going."""


@dataclass(frozen=True)
class PollRequest:
    """What one refresh asks a host for, beyond its GPUs and runs."""

    run: str | None = None
    log_offset: int | None = None
    """Next log byte wanted; None for the first look (the host sends the log's tail)."""
    scalars: Mapping[str, int] = field(default_factory=dict)
    """Points the dashboard already has, per tag."""
    recent: int = RECENT_FINISHED


class HostPoller:
    """Polls one host with one agent round trip per refresh, over a session of its own.

    A host that stops answering is retried with backoff (1 s doubling to 30 s) while its last failure is
    reported as ``unreachable since``; :meth:`poll` never raises for a lost link, so one dead host never stops
    the others' refreshes. Not thread-safe: one poll at a time (the dashboard's polls never overlap).
    """

    def __init__(
        self,
        host: HostConfig,
        project: ProjectConfig | str,
        *,
        connect: Callable[[], HostSession] | None = None,
        clock: Callable[[], float] = time.time,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.host = host
        self.project = project
        self._connect = connect or self._connect_host
        self.clock = clock
        self.session: HostSession | None = None
        self.unreachable_since: float | None = None
        self.error: str | None = None
        self.next_attempt = 0.0
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.delay = initial_backoff
        self.gpu = True

    def _connect_host(self) -> HostSession:
        from gpubox.remote.session import connect_host

        # Never launches anything: the dashboard watches what is up, `up` starts hosts.
        return connect_host(self.host, self.project, probe=False, launch=False)

    def poll(self, request: PollRequest) -> HostSample:
        now = self.clock()
        if self.session is None:
            if now < self.next_attempt:
                return self._failed(now, self.error or "reconnecting")
            try:
                self.session = self._connect()
            except Exception as exc:  # any failure to connect is "unreachable", never a crash
                return self._lost(now, exc)
        args: dict[str, Any] = {
            "gpu": self.gpu,
            "recent": request.recent,
            # Finished runs of this project only (by its id; older runs by its folder); running ones of any
            # (they all use the host).
            "project": self.session.remote_dir,
            "owner": None if isinstance(self.project, str) else self.project.id,
        }
        if request.run is not None:
            args.update(
                run=request.run,
                log_offset=request.log_offset,
                scalars=dict(request.scalars),
                log_tail=65536,
                log_max=262144,
            )
        try:
            answer, blob = calls.dash(self.session.agent, **args)
        except GpuboxError as exc:
            if "unknown op" in str(exc):
                raise GpuboxError(
                    f"the agent on {self.host.name} is older than this dashboard: {exc}"
                ) from None
            return self._lost(now, exc)
        except Exception as exc:  # paramiko and socket errors: the link is gone
            return self._lost(now, exc)
        if self.unreachable_since is not None:
            self.unreachable_since = None
            self.error = None
        self.delay = self.initial_backoff
        sample = host_sample(self.host.name, now, answer, blob)
        if sample.no_gpu:
            self.gpu = False  # a CPU host stays one: stop asking nvidia-smi every refresh
        return sample

    def _lost(self, now: float, exc: BaseException) -> HostSample:
        self.close()
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.error = str(exc) or type(exc).__name__
        self.next_attempt = now + self.delay
        self.delay = min(self.max_backoff, self.delay * 2)
        return self._failed(now, self.error)

    def _failed(self, now: float, error: str) -> HostSample:
        return HostSample(
            host=self.host.name,
            at=now,
            ok=False,
            error=error,
            unreachable_since=self.unreachable_since,
        )

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()


class Polls:
    """When the dashboard reads the state database and polls each host, without a UI.

    One :class:`HostPoller` per host a gpubox process holds up (and hosts.toml still names); each poll is one
    call, and the next one is armed only when it has answered (never two at once for one host): after
    *refresh_seconds*, at once when :meth:`poll_soon` asked meanwhile, after :attr:`FAILED_POLL_SECONDS` when the
    poll itself failed. The state is read every *state_seconds* (:attr:`FAILED_READ_SECONDS` after a failure)
    by the :class:`StateReader` this object owns."""

    FAILED_POLL_SECONDS = 10.0
    FAILED_READ_SECONDS = 5.0
    SOON_SECONDS = 0.01

    def __init__(
        self,
        hosts: HostsConfig,
        project: ProjectConfig,
        *,
        refresh_seconds: float,
        state_seconds: float,
        poller: Callable[[HostConfig, ProjectConfig], HostPoller] = HostPoller,
    ) -> None:
        self.hosts = hosts
        self.project = project
        self.refresh_seconds = refresh_seconds
        self.state_seconds = state_seconds
        self.state = StateReader(hosts, project)
        self._poller = poller
        self.pollers: dict[str, HostPoller] = {}
        self.in_flight: set[str] = set()
        """Hosts whose poll has been asked and not answered yet."""
        self.soon: set[str] = set()
        """Hosts to poll again as soon as the poll in flight has answered."""

    def follow(self, wanted: Iterable[str]) -> tuple[list[str], list[tuple[str, HostPoller]]]:
        """Poll the *wanted* hosts from now on: (the hosts to start polling, in name order; the pollers of the
        hosts no longer wanted, to close)."""
        wanted = set(wanted)
        started = []
        for name in sorted(wanted - set(self.pollers)):
            config = self.hosts.hosts.get(name)
            if config is None:
                continue  # held by a gpubox process but gone from hosts.toml: nothing to connect with
            self.pollers[name] = self._poller(config, self.project)
            started.append(name)
        stopped = [(name, self.pollers.pop(name)) for name in set(self.pollers) - wanted]
        return started, stopped

    def begin(self, name: str) -> HostPoller | None:
        """The poller to call now for *name*; None when it is not polled or its poll is still in flight."""
        poller = self.pollers.get(name)
        if poller is None or name in self.in_flight:
            return None
        self.in_flight.add(name)
        self.soon.discard(name)
        return poller

    def poll_soon(self, name: str) -> bool:
        """Whether to poll *name* right now (False: its poll in flight answers first, the next comes at once)."""
        if name in self.in_flight:
            self.soon.add(name)
            return False
        return True

    def answered(self, name: str, *, failed: bool, cancelled: bool) -> float | None:
        """The poll of *name* has ended: seconds until the next one, None for no next one."""
        self.in_flight.discard(name)
        if name not in self.pollers or cancelled:
            return None
        if failed:
            return self.FAILED_POLL_SECONDS
        return self.SOON_SECONDS if name in self.soon else self.refresh_seconds

    def state_read(self, *, failed: bool) -> float:
        """A state read has ended: seconds until the next one."""
        return self.FAILED_READ_SECONDS if failed else self.state_seconds
