"""Services kept running while a host is held: a Jupyter, TensorBoard or custom server that died on the host is
started again (on the same port and with the same token when they are free) and its tunnel follows it.

A service that keeps dying is not restarted forever: after :data:`MAX_RESTARTS` restarts within
:data:`RESTART_WINDOW` seconds the watch says so, with the service's log on the host, and leaves it stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gpubox.errors import GpuboxError
from gpubox.remote.agent import calls
from gpubox.train.services import ensure_services, service_key

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.remote.tunnels import Tunnel

__all__ = ["CHECK_SECONDS", "MAX_RESTARTS", "RESTART_WINDOW", "ServiceWatch"]

CHECK_SECONDS = 10.0
MAX_RESTARTS = 3
RESTART_WINDOW = 300.0


class ServiceWatch:
    """Looks at the project's services on the host every *interval* seconds and starts a stopped one again."""

    def __init__(
        self,
        session: HostSession,
        project: ProjectConfig,
        venv: str | None,
        tunnels: Mapping[str, Tunnel],
        *,
        say: Callable[[str], None],
        stop: threading.Event,
        interval: float = CHECK_SECONDS,
    ) -> None:
        self.session = session
        self.project = project
        self.venv = venv
        self.tunnels = tunnels
        self.say = say
        self.stop = stop
        self.interval = interval
        self.restarts: dict[str, list[float]] = {}
        self.given_up: set[str] = set()
        self._thread: threading.Thread | None = None

    def start(self) -> ServiceWatch:
        if self.tunnels:
            self._thread = threading.Thread(target=self._loop, name="gpubox-service-watch", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.check()
            except GpuboxError:
                continue  # the link is down: the supervisor reconnects, the next look tries again

    def check(self) -> list[str]:
        """One look: start every stopped service again; return the names started."""
        rows = calls.service_list(self.session.agent, key=service_key(self.session))["services"]
        states = {str(row.get("name")): row for row in rows}
        started = []
        for name, tunnel in self.tunnels.items():
            row = states.get(name)
            if name in self.given_up or (row is not None and row.get("state") != "stopped"):
                continue
            now = time.monotonic()
            recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW]
            if len(recent) >= MAX_RESTARTS:
                self.given_up.add(name)
                log = f" (its log on the host: {row.get('log')})" if row and row.get("log") else ""
                self.say(
                    f"! {name} stopped {len(recent) + 1} times in {RESTART_WINDOW / 60:g} min; "
                    f"not starting it again{log}"
                )
                continue
            self.restarts[name] = [*recent, now]
            (state,) = ensure_services(self.session, self.project, self.venv, names=[name])
            tunnel.remote_port = state.host_port
            self.say(f"! {name} had stopped on the host; started it again (host port {state.host_port})")
            started.append(name)
        return started
