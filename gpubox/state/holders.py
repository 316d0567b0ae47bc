"""Who holds what on this machine: the supervisors holding hosts up, what each last reported, the interactive
shells open on a host and the tunnels a supervisor keeps open.

Every row names a process; a row whose process died (kill -9, a crash, power loss) is ignored or dropped by
whoever reads it next, so a dead holder never keeps a host "up".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from gpubox.errors import UsageError
from gpubox.state.database import Database

__all__ = [
    "HolderTables",
    "MonitorReport",
    "Supervisor",
    "TunnelRecord",
    "holder_alive",
    "pid_alive",
    "process_token",
]


def process_token(pid: int) -> str | None:
    """When process *pid* started (clock ticks since boot), to tell it from a later process given the same pid;
    None where /proc cannot say."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(pid: int, token: str | None) -> bool:
    """Whether the process that recorded (*pid*, *token*) still runs (not just some process with that pid)."""
    if not pid_alive(pid):
        return False
    if token is None:
        return True
    current = process_token(pid)
    return current is None or current == token


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not alive in any sense a user cares about.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Supervisor:
    host: str
    pid: int
    started_at: float
    detached: bool
    log_file: str | None

    def alive(self) -> bool:
        return pid_alive(self.pid)


class MonitorReport(NamedTuple):
    """What the live supervisor of a host last reported (idle countdown, budget)."""

    at: float
    report: dict[str, Any]


@dataclass(frozen=True)
class TunnelRecord:
    """A tunnel a supervisor holds open: ``127.0.0.1:local_port`` here reaches ``host_port`` on the host."""

    host: str
    service: str
    local_port: int
    host_port: int
    path: str
    """The URL path the service answers on (``/lab`` for Jupyter, say)."""
    pid: int
    """The supervisor holding the tunnel."""


class HolderTables(Database):
    """The supervisors, monitors, shells and tunnels tables (part of :class:`gpubox.state.State`)."""

    # -- supervisors (the `gpubox up` process holding a host)

    def claim_supervisor(self, host: str, pid: int, *, detached: bool, log_file: str | None = None) -> None:
        """Record *pid* as the supervisor of *host*; refuse while another live process holds it."""
        with self.transaction():
            row = self.db.execute("SELECT pid FROM supervisors WHERE host = ?", (host,)).fetchone()
            if row and row[0] != pid and pid_alive(row[0]):
                raise UsageError(
                    f"{host} is already up in gpubox process {row[0]}: `gpubox up {host} --stop` ends it"
                )
            self.db.execute(
                "INSERT OR REPLACE INTO supervisors(host, pid, started_at, detached, log_file) VALUES (?,?,?,?,?)",
                (host, pid, time.time(), int(detached), log_file),
            )

    def release_supervisor(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM supervisors WHERE host = ? AND pid = ?", (host, pid))

    def supervisor(self, host: str) -> Supervisor | None:
        """The live supervisor of *host*; a record left by a dead process is dropped on the way."""
        row = self.db.execute(
            "SELECT host, pid, started_at, detached, log_file FROM supervisors WHERE host = ?", (host,)
        ).fetchone()
        if row is None:
            return None
        found = Supervisor(row[0], row[1], row[2], bool(row[3]), row[4])
        if not found.alive():
            self.release_supervisor(host, found.pid)
            return None
        return found

    def supervisors(self) -> list[Supervisor]:
        rows = self.db.execute("SELECT host FROM supervisors ORDER BY host").fetchall()
        return [s for (name,) in rows if (s := self.supervisor(name)) is not None]

    # -- monitor reports (what a supervisor last saw: idle countdown, budget)

    def record_monitor(self, host: str, pid: int, report: dict[str, Any], at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO monitors(host, pid, updated_at, report) VALUES (?, ?, ?, ?)",
                (host, pid, time.time() if at is None else at, json.dumps(report)),
            )

    def monitor(self, host: str) -> MonitorReport | None:
        """What the live supervisor of *host* last reported; None when none runs."""
        row = self.db.execute(
            "SELECT pid, updated_at, report FROM monitors WHERE host = ?", (host,)
        ).fetchone()
        if row is None or not pid_alive(int(row[0])):
            return None
        return MonitorReport(float(row[1]), json.loads(row[2]))

    def clear_monitor(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM monitors WHERE host = ? AND pid = ?", (host, pid))

    # -- interactive `gpubox ssh` shells (they keep a host from idling out)

    def add_shell(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO shells(pid, host, token, started_at) VALUES (?, ?, ?, ?)",
                (pid, host, process_token(pid), time.time()),
            )

    def remove_shell(self, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM shells WHERE pid = ?", (pid,))

    def shells(self, host: str) -> list[int]:
        """Pids of the interactive shells open on *host* now; records of dead ones are dropped."""
        rows = self.db.execute("SELECT pid, token FROM shells WHERE host = ?", (host,)).fetchall()
        live = [int(pid) for pid, token in rows if holder_alive(int(pid), token)]
        if len(live) != len(rows):
            with self.transaction():
                for pid, _token in rows:
                    if int(pid) not in live:
                        self.db.execute("DELETE FROM shells WHERE pid = ?", (pid,))
        return live

    # -- tunnels (no secrets: a Jupyter token is fetched from the host when needed)

    def record_tunnels(self, host: str, pid: int, tunnels: Iterable[tuple[str, int, int, str]]) -> None:
        """(service, local port, host port, URL path) of the tunnels process *pid* now holds for *host*."""
        with self.transaction():
            self.db.execute("DELETE FROM tunnels WHERE host = ?", (host,))
            self.db.executemany(
                "INSERT INTO tunnels(host, service, local_port, host_port, path, pid) VALUES (?, ?, ?, ?, ?, ?)",
                [(host, service, local, remote, path, pid) for service, local, remote, path in tunnels],
            )

    def clear_tunnels(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM tunnels WHERE host = ? AND pid = ?", (host, pid))

    def live_tunnels(self, host: str | None = None) -> list[TunnelRecord]:
        """Tunnels whose holder still runs (rows a killed supervisor left behind are ignored)."""
        query = "SELECT host, service, local_port, host_port, path, pid FROM tunnels"
        rows = self.db.execute(
            query + (" WHERE host = ?" if host else ""), (host,) if host else ()
        ).fetchall()
        return [
            TunnelRecord(str(h), str(service), int(local), int(remote), str(path), int(pid))
            for h, service, local, remote, path, pid in rows
            if pid_alive(pid)
        ]
