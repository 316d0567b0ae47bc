"""One reconnecting session per host: opened on first use, reopened after its link dropped, shared by threads.

For the commands that talk to several hosts at once or for a long time without holding them (a multi-host run's
launch, its log streams, its watcher; following one run's log): :meth:`SessionPool.get` hands out a live
session, connecting again with backoff when the last one died. The supervisor of ``gpubox up`` is different on
purpose: it keeps one session and reconnects it in place (:meth:`gpubox.remote.session.HostSession.reconnect`),
since its tunnels and live sync hold on to that session.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.session import FolderUse, HostSession

__all__ = ["SessionPool"]


class SessionPool:
    """One live session per host, opened on first use and reopened after the link dropped; thread-safe.

    A session's agent serialises its requests, so the threads that stream logs and the one that stops
    workers can share it. *deadline* bounds how long :meth:`get` keeps trying to reconnect (None: forever).
    """

    def __init__(
        self,
        hosts: Iterable[HostConfig],
        project: ProjectConfig | str,
        *,
        sessions: dict[str, HostSession] | None = None,
        deadline: float | None = 30.0,
        accept_new: bool = False,
        ask: AskToPin | None = None,
        folder: FolderUse = "look",
    ) -> None:
        self.hosts = {host.name: host for host in hosts}
        self.project = project
        self.folder: FolderUse = folder
        self.deadline = deadline
        self.accept_new = accept_new
        self.ask = ask
        self._sessions: dict[str, HostSession] = dict(sessions or {})
        self._locks = {name: threading.Lock() for name in self.hosts}

    def get(self, name: str) -> HostSession:
        from gpubox.remote.backoff import Backoff, with_backoff
        from gpubox.remote.session import connect_host

        with self._locks[name]:
            session = self._sessions.get(name)
            if session is not None and session.is_alive():
                return session
            if session is not None:
                session.close()
                del self._sessions[name]
            host = self.hosts[name]
            session = with_backoff(
                lambda: connect_host(
                    host,
                    self.project,
                    folder=self.folder,
                    accept_new=self.accept_new,
                    ask=self.ask,
                    probe=False,
                    launch=False,
                ),
                Backoff(initial=0.5, maximum=5.0, deadline=self.deadline),
            )
            self._sessions[name] = session
            return session

    def close(self) -> None:
        for name in list(self._sessions):
            with contextlib.suppress(Exception):
                self._sessions.pop(name).close()
