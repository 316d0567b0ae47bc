"""Who holds what on this machine: the supervisors holding hosts up (one per project holding a host), what each
last reported, the interactive shells open on a host, the tunnels a supervisor keeps open, and each project's
folder on each host.

Every row names a process; a row whose process died (kill -9, a crash, power loss) is ignored or dropped by
whoever reads it next, so a dead holder never keeps a host "up".
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from gpubox.errors import UsageError
from gpubox.record import record
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


@record
class Supervisor:
    host: str
    pid: int
    started_at: float
    detached: bool
    log_file: str | None
    project: str = ""
    """The id of the project it holds the host for ('' when recorded by a gpubox from before project ids)."""
    root: str | None = None
    """That project's folder on this machine."""
    folder: str | None = None
    """That project's folder on the host."""

    def alive(self) -> bool:
        return pid_alive(self.pid)

    @property
    def project_name(self) -> str:
        return os.path.basename(self.root.rstrip("/")) if self.root else "a project"


class MonitorReport(NamedTuple):
    """What the live supervisor of a host last reported (idle countdown, budget)."""

    at: float
    report: dict[str, Any]


@record
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
    project: str = ""
    """The id of the project whose service it reaches ('' when recorded by an older gpubox)."""
    service_key: str | None = None
    """The service's project key on the host (where its Jupyter token is kept)."""


class HolderTables(Database):
    """The supervisors, monitors, shells and tunnels tables (part of :class:`gpubox.state.State`)."""

    # -- supervisors (the `gpubox up` process holding a host for one project; several projects may hold one host)

    _SUPERVISOR_COLUMNS = "host, pid, started_at, detached, log_file, project, root, folder"

    def claim_supervisor(
        self,
        host: str,
        pid: int,
        *,
        detached: bool,
        log_file: str | None = None,
        project: str = "",
        root: str | None = None,
        folder: str | None = None,
    ) -> None:
        """Record *pid* as the supervisor holding *host* for *project*; refuse while another live process holds
        it for the same project (other projects may hold the same host at the same time)."""
        with self.transaction():
            row = self.db.execute(
                "SELECT pid FROM supervisors WHERE host = ? AND project = ?", (host, project)
            ).fetchone()
            if row and row[0] != pid and pid_alive(row[0]):
                raise UsageError(
                    f"{host} is already up in gpubox process {row[0]}: `gpubox up {host} --stop` ends it"
                )
            self.db.execute(
                "INSERT OR REPLACE INTO supervisors(host, project, root, folder, pid, started_at, detached, "
                "log_file) VALUES (?,?,?,?,?,?,?,?)",
                (host, project, root, folder, pid, time.time(), int(detached), log_file),
            )
            # A killed holder's last report says when the guardian was due to stop the host it left
            # (died_holder_report); once the host is held again, that is history, never a later stop's time.
            for (dead,) in self.db.execute("SELECT pid FROM monitors WHERE host = ?", (host,)).fetchall():
                if not pid_alive(int(dead)):
                    self.db.execute("DELETE FROM monitors WHERE host = ? AND pid = ?", (host, dead))

    def release_supervisor(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM supervisors WHERE host = ? AND pid = ?", (host, pid))

    def host_supervisors(self, host: str) -> list[Supervisor]:
        """Every live supervisor of *host* (one per project holding it), the longest-held first: the first is
        the host's lead, which alone runs its autostop. Records left by dead processes are dropped."""
        rows = self.db.execute(
            f"SELECT {self._SUPERVISOR_COLUMNS} FROM supervisors WHERE host = ? ORDER BY started_at, pid",
            (host,),
        ).fetchall()
        found = [Supervisor(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7]) for r in rows]
        dead = [s for s in found if not s.alive()]
        for gone in dead:
            self.release_supervisor(host, gone.pid)
        return [s for s in found if s not in dead]

    def supervisor(self, host: str, project: str | None = None) -> Supervisor | None:
        """The live supervisor holding *host* for *project*; without *project*, the host's lead (any project's),
        so None means nobody holds the host. A record left by a dead process is dropped on the way."""
        held = self.host_supervisors(host)
        if project is None:
            return held[0] if held else None
        return next((s for s in held if s.project == project), None)

    def supervisors(self) -> list[Supervisor]:
        """Every live supervisor: each host's lead first, then the other projects holding it."""
        rows = self.db.execute("SELECT DISTINCT host FROM supervisors ORDER BY host").fetchall()
        return [s for (name,) in rows for s in self.host_supervisors(name)]

    # -- monitor reports (what each supervisor last saw: idle countdown, budget, its live sync)

    def record_monitor(self, host: str, pid: int, report: dict[str, Any], at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO monitors(host, pid, updated_at, report) VALUES (?, ?, ?, ?)",
                (host, pid, time.time() if at is None else at, json.dumps(report)),
            )

    def monitor(self, host: str, pid: int | None = None) -> MonitorReport | None:
        """What supervisor *pid* of *host* last reported; without *pid*, the host's lead (whose report has the
        autostop countdown and budgets) or, when it has not reported yet, any live one. None when none runs."""
        rows = self.db.execute(
            "SELECT pid, updated_at, report FROM monitors WHERE host = ?" + (" AND pid = ?" if pid else ""),
            (host, pid) if pid else (host,),
        ).fetchall()
        live = {
            int(row[0]): MonitorReport(float(row[1]), json.loads(row[2]))
            for row in rows
            if pid_alive(int(row[0]))
        }
        if pid is not None:
            return live.get(pid)
        lead = self.supervisor(host)
        if lead is not None and lead.pid in live:
            return live[lead.pid]
        return next(iter(live.values()), None)

    def monitors(self, host: str) -> dict[int, MonitorReport]:
        """The last report of every live supervisor of *host*, by pid."""
        rows = self.db.execute(
            "SELECT pid, updated_at, report FROM monitors WHERE host = ?", (host,)
        ).fetchall()
        return {
            int(pid): MonitorReport(float(at), json.loads(report))
            for pid, at, report in rows
            if pid_alive(int(pid))
        }

    def died_holder_report(self, host: str) -> MonitorReport | None:
        """The newest report of any holder of *host*, when its holder is gone without letting go (killed, or
        its machine slept and never woke it; one that lets go clears its own). None while the newest is a live
        holder's: that one sees for itself what happens to the host."""
        row = self.db.execute(
            "SELECT pid, updated_at, report FROM monitors WHERE host = ? ORDER BY updated_at DESC LIMIT 1",
            (host,),
        ).fetchone()
        if row is None or pid_alive(int(row[0])):
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

    def record_tunnels(
        self,
        host: str,
        pid: int,
        tunnels: Iterable[tuple[str, int, int, str]],
        *,
        project: str = "",
        service_key: str | None = None,
    ) -> None:
        """(service, local port, host port, URL path) of the tunnels process *pid* now holds for *host* and
        *project* (whose services on the host are under *service_key*)."""
        with self.transaction():
            self.db.execute("DELETE FROM tunnels WHERE host = ? AND project = ?", (host, project))
            self.db.executemany(
                "INSERT INTO tunnels(host, project, service, local_port, host_port, path, pid, service_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (host, project, service, local, remote, path, pid, service_key)
                    for service, local, remote, path in tunnels
                ],
            )

    def clear_tunnels(self, host: str, pid: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM tunnels WHERE host = ? AND pid = ?", (host, pid))

    def live_tunnels(self, host: str | None = None, project: str | None = None) -> list[TunnelRecord]:
        """Tunnels whose holder still runs (rows a killed supervisor left behind are ignored), of *host* and of
        *project* when given."""
        query = "SELECT host, service, local_port, host_port, path, pid, project, service_key FROM tunnels"
        where, args = [], []
        if host:
            where.append("host = ?")
            args.append(host)
        if project is not None:
            where.append("project = ?")
            args.append(project)
        rows = self.db.execute(
            query + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY host, project, service",
            args,
        ).fetchall()
        return [
            TunnelRecord(
                str(h), str(service), int(local), int(remote), str(path), int(pid), str(p or ""), key
            )
            for h, service, local, remote, path, pid, p, key in rows
            if pid_alive(pid)
        ]

    # -- each project's folder on each host, once settled (see gpubox.remote.folder)

    def project_folder(self, host: str, project: str) -> str | None:
        row = self.db.execute(
            "SELECT folder FROM project_folders WHERE host = ? AND project = ?", (host, project)
        ).fetchone()
        return str(row[0]) if row else None

    def project_folders(self, host: str) -> dict[str, str]:
        """Every project's folder on *host* that this machine has settled: {project id: folder}."""
        rows = self.db.execute(
            "SELECT project, folder FROM project_folders WHERE host = ?", (host,)
        ).fetchall()
        return {str(project): str(folder) for project, folder in rows}

    def project_roots(self) -> list[str]:
        """The local folders of every project this machine has settled a host folder for."""
        return [str(row[0]) for row in self.db.execute("SELECT DISTINCT root FROM project_folders")]

    def record_project_folder(self, host: str, project: str, root: str, folder: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO project_folders(host, project, root, folder, updated_at) VALUES (?,?,?,?,?)",
                (host, project, root, folder, time.time()),
            )
