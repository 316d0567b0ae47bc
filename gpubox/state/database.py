"""The local state database: what gpubox knows between commands.

One SQLite file in the user's state folder (``$GPUBOX_HOME/state`` when set). The host is always the source of
truth for what runs there; this file is a cache that lets commands answer without connecting, plus the records
only this machine has (which supervisor holds which host, billing intervals).

The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS`, each applied in its own
transaction. WAL mode and a busy timeout let two gpubox processes use the file at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpubox import paths
from gpubox.errors import StateError

__all__ = [
    "MIGRATIONS",
    "BillingInterval",
    "HostRecord",
    "State",
    "Supervisor",
    "holder_alive",
    "open_state",
    "process_token",
]

DB_NAME = "gpubox.db"
BUSY_TIMEOUT_MS = 10_000

MIGRATIONS: Sequence[str] = (
    # 1: hosts, the supervisors holding them, and billing intervals
    """
    CREATE TABLE hosts (
        name        TEXT PRIMARY KEY,
        provider    TEXT NOT NULL,
        endpoint    TEXT,              -- user@host:port last connected
        probe       TEXT,              -- JSON of the last probe
        probed_at   REAL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE supervisors (
        host        TEXT PRIMARY KEY,
        pid         INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        detached    INTEGER NOT NULL,
        log_file    TEXT
    );
    CREATE TABLE billing (
        id              INTEGER PRIMARY KEY,
        host            TEXT NOT NULL,
        price_per_hour  REAL NOT NULL,
        started_at      REAL NOT NULL,
        ended_at        REAL
    );
    CREATE INDEX billing_host ON billing(host, ended_at);
    """,
    # 2: the sync ancestor, the last state each host acknowledged per project (paths as raw bytes, since
    # file names need not be valid UTF-8)
    """
    CREATE TABLE sync_ancestors (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL,
        path        BLOB NOT NULL,
        kind        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        executable  INTEGER NOT NULL,
        target      BLOB NOT NULL,
        PRIMARY KEY (host, project, path)
    ) WITHOUT ROWID;
    """,
    # 3: the money ledger. Billing intervals get their holder (pid and process start time), a heartbeat and the
    # time held as measured by the holder's clock that never jumps; a price may be unknown (hours still count)
    # or an estimate. Budget warnings given (each once), each supervisor's monitor report (autostop countdown)
    # and the interactive `gpubox ssh` shells running now. Closed old intervals keep their wall-clock length;
    # an old open one gets the live supervisor of its host as holder, if any.
    """
    CREATE TABLE billing_v3 (
        id              INTEGER PRIMARY KEY,
        host            TEXT NOT NULL,
        price_per_hour  REAL,
        price_source    TEXT,
        estimate        INTEGER NOT NULL DEFAULT 0,
        started_at      REAL NOT NULL,
        held_seconds    REAL NOT NULL DEFAULT 0,
        heartbeat_at    REAL,
        ended_at        REAL,
        holder_pid      INTEGER,
        holder_token    TEXT,
        end_reason      TEXT
    );
    INSERT INTO billing_v3(id, host, price_per_hour, price_source, started_at, held_seconds, heartbeat_at,
                           ended_at, holder_pid)
        SELECT id, host, price_per_hour, 'recorded by an older gpubox', started_at,
               CASE WHEN ended_at IS NULL THEN 0 ELSE MAX(0, ended_at - started_at) END,
               CASE WHEN ended_at IS NULL THEN started_at ELSE ended_at END,
               ended_at,
               CASE WHEN ended_at IS NULL THEN (SELECT pid FROM supervisors s WHERE s.host = billing.host) END
        FROM billing;
    DROP TABLE billing;
    ALTER TABLE billing_v3 RENAME TO billing;
    CREATE INDEX billing_host ON billing(host, ended_at);
    CREATE TABLE budget_alerts (
        scope       TEXT NOT NULL,
        threshold   INTEGER NOT NULL,
        budget_usd  REAL NOT NULL,
        spent_usd   REAL NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (scope, threshold, budget_usd)
    );
    CREATE TABLE monitors (
        host        TEXT PRIMARY KEY,
        pid         INTEGER NOT NULL,
        updated_at  REAL NOT NULL,
        report      TEXT NOT NULL
    );
    CREATE TABLE shells (
        pid         INTEGER PRIMARY KEY,
        host        TEXT NOT NULL,
        token       TEXT,
        started_at  REAL NOT NULL
    );
    """,
    # 4: what gpubox last heard about each run (the host's run folder stays the truth), for per-run cost
    """
    CREATE TABLE runs (
        host        TEXT NOT NULL,
        id          TEXT NOT NULL,
        command     TEXT NOT NULL,
        name        TEXT,
        state       TEXT NOT NULL,
        started_at  REAL,
        ended_at    REAL,
        exit_code   INTEGER,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (host, id)
    );
    """,
    # 5: the tunnels a supervisor holds open (no secrets: a Jupyter token is fetched from the host when needed)
    """
    CREATE TABLE tunnels (
        host        TEXT NOT NULL,
        service     TEXT NOT NULL,
        local_port  INTEGER NOT NULL,
        host_port   INTEGER NOT NULL,
        path        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        PRIMARY KEY (host, service)
    );
    """,
    # 6: the interpreter a host's configured `python` resolved to, to start the agent without shell wrappers
    """
    CREATE TABLE agent_python (
        host        TEXT PRIMARY KEY,
        configured  TEXT NOT NULL,
        executable  TEXT NOT NULL
    );
    """,
    # 7: instances gpubox rented from cloud providers, recorded the moment the provider gives an id (before
    # waiting for SSH), so a machine that never came up is still known, shown as billing and terminable
    """
    CREATE TABLE instances (
        provider        TEXT NOT NULL,
        instance_id     TEXT NOT NULL,
        host            TEXT NOT NULL,
        name            TEXT NOT NULL,
        api_url         TEXT NOT NULL,
        launched_at     REAL NOT NULL,
        price_per_hour  REAL,
        gpu             TEXT,
        region          TEXT,
        ssh_host        TEXT,
        ssh_port        INTEGER,
        state           TEXT NOT NULL,
        ended_at        REAL,
        end_reason      TEXT,
        PRIMARY KEY (provider, instance_id)
    );
    CREATE INDEX instances_host ON instances(host, ended_at);
    """,
)

EXTRAPOLATE_MAX_SECONDS = 60.0
"""How far past an open interval's last heartbeat a reader counts while its holder lives (the holder writes one
every few seconds; a holder that stalls longer catches up at its next heartbeat)."""
DIED_REASON = "gpubox holding the host died; closed at its last heartbeat"


@dataclass(frozen=True)
class HostRecord:
    name: str
    provider: str
    endpoint: str | None
    probe: dict[str, Any] | None
    probed_at: float | None


@dataclass(frozen=True)
class Supervisor:
    host: str
    pid: int
    started_at: float
    detached: bool
    log_file: str | None

    def alive(self) -> bool:
        return pid_alive(self.pid)


@dataclass(frozen=True)
class BillingInterval:
    """One stretch of time a host was billing, as the ledger holds it.

    Its length is ``held_seconds``, measured by the holder on a clock that never jumps (wall-clock changes do
    not stretch, shrink or repeat it); ``started_at``, ``heartbeat_at`` and ``ended_at`` are wall-clock times
    for showing and for ``--since``.
    """

    id: int
    host: str
    price_per_hour: float | None
    """US dollars per hour; None when unknown (the hours still count)."""
    price_source: str | None
    estimate: bool
    started_at: float
    held_seconds: float
    heartbeat_at: float | None
    ended_at: float | None
    holder_pid: int | None
    end_reason: str | None

    @property
    def open(self) -> bool:
        return self.ended_at is None

    def seconds(self, now: float | None = None) -> float:
        """Billed seconds so far: what the holder measured, plus, while open, the time since its last heartbeat
        (never negative, and at most :data:`EXTRAPOLATE_MAX_SECONDS` when a holder is known)."""
        if self.ended_at is not None:
            return self.held_seconds
        now = time.time() if now is None else now
        if self.holder_pid is None:
            return max(self.held_seconds, now - self.started_at, 0.0)
        since_beat = now - (self.heartbeat_at if self.heartbeat_at is not None else self.started_at)
        return self.held_seconds + min(max(0.0, since_beat), EXTRAPOLATE_MAX_SECONDS)

    def spent_usd(self, now: float | None = None) -> float:
        return (self.price_per_hour or 0.0) * self.seconds(now) / 3600.0


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


class State:
    """A connection to the state database; cheap to open, safe to use from one thread."""

    def __init__(self, path: Path, migrations: Sequence[str] = MIGRATIONS) -> None:
        self.path = path
        try:
            paths.ensure_private_dir(path.parent)
            self.db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._enable_wal()
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {path} cannot be used: {exc}") from None
        except OSError as exc:
            raise StateError(f"state folder {path.parent} cannot be used: {exc.strerror or exc}") from None

    def _enable_wal(self) -> None:
        """Switch a new file to WAL. SQLite answers "locked" at once, without the busy timeout, when another
        process opens the same new file at that moment, so retry for as long as the busy timeout would wait."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _migrate(self, migrations: Sequence[str]) -> None:
        current = self.db.execute("PRAGMA user_version").fetchone()[0]
        if current > len(migrations):
            raise StateError(
                f"state database {self.path} has schema {current}, newer than this gpubox knows "
                f"({len(migrations)}): upgrade gpubox"
            )
        for version in range(current + 1, len(migrations) + 1):
            with self.transaction():
                # Re-read inside the write lock: another process may have migrated meanwhile.
                if self.db.execute("PRAGMA user_version").fetchone()[0] >= version:
                    continue
                for statement in _statements(migrations[version - 1]):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {version}")

    @property
    def schema_version(self) -> int:
        version: int = self.db.execute("PRAGMA user_version").fetchone()[0]
        return version

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hosts

    def record_host(self, name: str, provider: str, endpoint: str | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO hosts(name, provider, endpoint, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET provider = excluded.provider, "
                "endpoint = COALESCE(excluded.endpoint, hosts.endpoint), updated_at = excluded.updated_at",
                (name, provider, endpoint, time.time()),
            )

    def record_probe(self, name: str, probe: dict[str, Any]) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE hosts SET probe = ?, probed_at = ?, updated_at = ? WHERE name = ?",
                (json.dumps(probe), time.time(), time.time(), name),
            )

    def host(self, name: str) -> HostRecord | None:
        row = self.db.execute(
            "SELECT name, provider, endpoint, probe, probed_at FROM hosts WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return HostRecord(row[0], row[1], row[2], json.loads(row[3]) if row[3] else None, row[4])

    # -- supervisors (the `gpubox up` process holding a host)

    def claim_supervisor(self, host: str, pid: int, *, detached: bool, log_file: str | None = None) -> None:
        """Record *pid* as the supervisor of *host*; refuse while another live process holds it."""
        from gpubox.errors import UsageError

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

    # -- billing intervals (the ledger)
    #
    # A supervisor opens an interval with itself as holder, writes a heartbeat (time held so far, measured on
    # a clock that never jumps) every few seconds, and closes it with the final time when it lets go. An
    # interval whose holder died (kill -9, a crash, power loss) is closed at its last heartbeat by whoever sees
    # it next: nothing stays open forever, and no time is counted twice.

    _BILLING_COLUMNS = (
        "id, host, price_per_hour, price_source, estimate, started_at, held_seconds, heartbeat_at, ended_at, "
        "holder_pid, end_reason"
    )

    def open_billing(
        self,
        host: str,
        price_per_hour: float | None,
        at: float | None = None,
        *,
        holder_pid: int | None = None,
        holder_token: str | None = None,
        price_source: str | None = None,
        estimate: bool = False,
    ) -> int:
        """Start a billing interval for *host* held by *holder_pid*, unless one is already open; return its id.

        Intervals left open by a dead holder are closed first (at their last heartbeat); an open interval with
        no holder (recorded without one) is closed now when a holder takes over."""
        at = time.time() if at is None else at
        with self.transaction():
            self._repair_billing(host)
            row = self.db.execute(
                "SELECT id, holder_pid FROM billing WHERE host = ? AND ended_at IS NULL ORDER BY id", (host,)
            ).fetchone()
            if row and (holder_pid is None or row[1] is not None):
                return int(row[0])
            if row:
                self._close_open(host, at, "taken over by a gpubox process")
            cursor = self.db.execute(
                "INSERT INTO billing(host, price_per_hour, price_source, estimate, started_at, heartbeat_at, "
                "holder_pid, holder_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (host, price_per_hour, price_source, int(estimate), at, at, holder_pid, holder_token),
            )
            return int(cursor.lastrowid or 0)

    def heartbeat_billing(self, interval_id: int, held_seconds: float, at: float | None = None) -> bool:
        """The holder's heartbeat: *held_seconds* so far (never decreases). False when the interval was closed
        meanwhile (by `gpubox down`, say), so the holder knows to open a new one if it still holds the host."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE billing SET held_seconds = MAX(held_seconds, ?), heartbeat_at = ? "
                "WHERE id = ? AND ended_at IS NULL",
                (max(0.0, held_seconds), time.time() if at is None else at, interval_id),
            )
            return cursor.rowcount == 1

    def end_billing(
        self, interval_id: int, held_seconds: float, at: float | None = None, reason: str = "released"
    ) -> None:
        """The holder closes its own interval with the final time held."""
        at = time.time() if at is None else at
        with self.transaction():
            self.db.execute(
                "UPDATE billing SET held_seconds = MAX(held_seconds, ?), heartbeat_at = ?, ended_at = ?, "
                "end_reason = ? WHERE id = ? AND ended_at IS NULL",
                (max(0.0, held_seconds), at, at, reason, interval_id),
            )

    def close_billing(self, host: str, at: float | None = None, reason: str = "closed") -> None:
        """Close *host*'s open intervals from outside their holder (`gpubox down`, after stopping it)."""
        at = time.time() if at is None else at
        with self.transaction():
            self._repair_billing(host)
            self._close_open(host, at, reason)

    def _close_open(self, host: str, at: float, reason: str) -> None:
        # No holder: the wall clock is all there is. A live holder (rare: it is normally stopped first): its
        # time held plus the time since its heartbeat, never negative.
        self.db.execute(
            "UPDATE billing SET held_seconds = CASE WHEN holder_pid IS NULL "
            "THEN MAX(held_seconds, ? - started_at, 0) "
            "ELSE held_seconds + MIN(MAX(? - COALESCE(heartbeat_at, started_at), 0), ?) END, "
            "ended_at = ?, end_reason = ? WHERE host = ? AND ended_at IS NULL",
            (at, at, EXTRAPOLATE_MAX_SECONDS, at, reason, host),
        )

    def repair_billing(self, host: str | None = None) -> int:
        """Close intervals whose holder is gone, at their last heartbeat; return how many."""
        with self.transaction():
            return self._repair_billing(host)

    def _repair_billing(self, host: str | None) -> int:
        query = "SELECT id, holder_pid, holder_token FROM billing WHERE ended_at IS NULL AND holder_pid IS NOT NULL"
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " AND host = ?"
            args = (host,)
        dead = [row[0] for row in self.db.execute(query, args) if not holder_alive(row[1], row[2])]
        for interval_id in dead:
            self.db.execute(
                "UPDATE billing SET ended_at = COALESCE(heartbeat_at, started_at + held_seconds), end_reason = ? "
                "WHERE id = ?",
                (DIED_REASON, interval_id),
            )
        return len(dead)

    def billing(self, host: str | None = None, *, repair: bool = True) -> list[BillingInterval]:
        """The ledger, oldest first; intervals of dead holders are closed on the way (unless *repair* is off)."""
        if repair and self._has_dead_holders(host):
            self.repair_billing(host)
        query = f"SELECT {self._BILLING_COLUMNS} FROM billing"
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " WHERE host = ?"
            args = (host,)
        return [
            BillingInterval(
                id=int(r[0]),
                host=str(r[1]),
                price_per_hour=None if r[2] is None else float(r[2]),
                price_source=r[3],
                estimate=bool(r[4]),
                started_at=float(r[5]),
                held_seconds=float(r[6]),
                heartbeat_at=None if r[7] is None else float(r[7]),
                ended_at=None if r[8] is None else float(r[8]),
                holder_pid=None if r[9] is None else int(r[9]),
                end_reason=r[10],
            )
            for r in self.db.execute(query + " ORDER BY started_at, id", args)
        ]

    def _has_dead_holders(self, host: str | None) -> bool:
        query = (
            "SELECT holder_pid, holder_token FROM billing WHERE ended_at IS NULL AND holder_pid IS NOT NULL"
        )
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " AND host = ?"
            args = (host,)
        return any(not holder_alive(pid, token) for pid, token in self.db.execute(query, args))

    def billing_intervals(self, host: str | None = None) -> list[tuple[str, float, float, float | None]]:
        """(host, price_per_hour, started_at, ended_at or None while open) of priced intervals, oldest first."""
        return [
            (i.host, i.price_per_hour, i.started_at, i.ended_at)
            for i in self.billing(host)
            if i.price_per_hour is not None
        ]

    # -- budget warnings (each threshold of each budget once)

    def record_budget_alert(
        self, scope: str, threshold: int, budget_usd: float, spent_usd: float, at: float | None = None
    ) -> bool:
        """Record that *scope* (a host name, or ``*`` for all hosts) reached *threshold* % of *budget_usd*;
        True only the first time, so each warning is given once even with several gpubox processes."""
        with self.transaction():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO budget_alerts(scope, threshold, budget_usd, spent_usd, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (scope, threshold, budget_usd, spent_usd, time.time() if at is None else at),
            )
            return cursor.rowcount == 1

    def budget_alerts(self, scope: str | None = None) -> list[tuple[str, int, float, float, float]]:
        """(scope, threshold %, budget, spent when reached, when), oldest first."""
        query = "SELECT scope, threshold, budget_usd, spent_usd, at FROM budget_alerts"
        args: tuple[Any, ...] = ()
        if scope is not None:
            query += " WHERE scope = ?"
            args = (scope,)
        return [
            (str(s), int(t), float(b), float(p), float(a))
            for s, t, b, p, a in self.db.execute(query + " ORDER BY at, threshold", args)
        ]

    # -- monitor reports (what a supervisor last saw: idle countdown, budget)

    def record_monitor(self, host: str, pid: int, report: dict[str, Any], at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO monitors(host, pid, updated_at, report) VALUES (?, ?, ?, ?)",
                (host, pid, time.time() if at is None else at, json.dumps(report)),
            )

    def monitor(self, host: str) -> tuple[float, dict[str, Any]] | None:
        """(when, report) from the live supervisor of *host*; None when none runs."""
        row = self.db.execute(
            "SELECT pid, updated_at, report FROM monitors WHERE host = ?", (host,)
        ).fetchone()
        if row is None or not pid_alive(int(row[0])):
            return None
        return float(row[1]), json.loads(row[2])

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

    # -- sync ancestors

    def ancestor(self, host: str, project: str) -> dict[str, tuple[str, int, int, bool, str]]:
        rows = self.db.execute(
            "SELECT path, kind, size, mtime_ns, executable, target FROM sync_ancestors WHERE host = ? AND project = ?",
            (host, project),
        )
        return {
            _decode(path): (kind, size, mtime_ns, bool(executable), _decode(target))
            for path, kind, size, mtime_ns, executable, target in rows
        }

    def update_ancestor(
        self,
        host: str,
        project: str,
        upserts: Iterable[tuple[str, tuple[str, int, int, bool, str]]],
        removals: Iterable[str],
    ) -> None:
        """Record what the host acknowledged, in one transaction (all of a batch or none of it)."""
        with self.transaction():
            self.db.executemany(
                "DELETE FROM sync_ancestors WHERE host = ? AND project = ? AND path = ?",
                ((host, project, _encode(path)) for path in removals),
            )
            self.db.executemany(
                "INSERT OR REPLACE INTO sync_ancestors VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (host, project, _encode(path), kind, size, mtime, int(executable), _encode(target))
                    for path, (kind, size, mtime, executable, target) in upserts
                ),
            )

    def forget_ancestor(self, host: str, project: str | None = None) -> None:
        with self.transaction():
            if project is None:
                self.db.execute("DELETE FROM sync_ancestors WHERE host = ?", (host,))
            else:
                self.db.execute("DELETE FROM sync_ancestors WHERE host = ? AND project = ?", (host, project))


@dataclass(frozen=True)
class InstanceRecord:
    """A rented instance as gpubox recorded it; the provider's API stays the truth about whether it runs."""

    provider: str
    instance_id: str
    host: str
    name: str
    api_url: str
    launched_at: float
    price_per_hour: float | None
    gpu: str | None
    region: str | None
    ssh_host: str | None
    ssh_port: int | None
    state: str
    """``launching`` (id known, not yet answering SSH), ``running``, ``terminate-failed``, ``ended``."""
    ended_at: float | None
    end_reason: str | None

    @property
    def billing(self) -> bool:
        return self.ended_at is None


_INSTANCE_COLUMNS = (
    "provider, instance_id, host, name, api_url, launched_at, price_per_hour, gpu, region, ssh_host, ssh_port, "
    "state, ended_at, end_reason"
)


def _instance(row: Sequence[Any]) -> InstanceRecord:
    return InstanceRecord(
        provider=str(row[0]),
        instance_id=str(row[1]),
        host=str(row[2]),
        name=str(row[3]),
        api_url=str(row[4]),
        launched_at=float(row[5]),
        price_per_hour=None if row[6] is None else float(row[6]),
        gpu=row[7],
        region=row[8],
        ssh_host=row[9],
        ssh_port=None if row[10] is None else int(row[10]),
        state=str(row[11]),
        ended_at=None if row[12] is None else float(row[12]),
        end_reason=row[13],
    )


def record_instance(
    state: State,
    *,
    provider: str,
    instance_id: str,
    host: str,
    name: str,
    api_url: str,
    price_per_hour: float | None,
    gpu: str | None = None,
    region: str | None = None,
    at: float | None = None,
) -> None:
    """Write down a just-launched instance; called before anything else can fail."""
    at = time.time() if at is None else at
    with state.transaction():
        state.db.execute(
            f"INSERT OR REPLACE INTO instances({_INSTANCE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 'launching', NULL, NULL)",
            (provider, instance_id, host, name, api_url, at, price_per_hour, gpu, region),
        )


def update_instance(
    state: State,
    provider: str,
    instance_id: str,
    *,
    instance_state: str | None = None,
    ssh_host: str | None = None,
    ssh_port: int | None = None,
    price_per_hour: float | None = None,
) -> None:
    with state.transaction():
        state.db.execute(
            "UPDATE instances SET state = COALESCE(?, state), ssh_host = COALESCE(?, ssh_host), "
            "ssh_port = COALESCE(?, ssh_port), price_per_hour = COALESCE(?, price_per_hour) "
            "WHERE provider = ? AND instance_id = ?",
            (instance_state, ssh_host, ssh_port, price_per_hour, provider, instance_id),
        )


def end_instance(state: State, provider: str, instance_id: str, reason: str, at: float | None = None) -> None:
    with state.transaction():
        state.db.execute(
            "UPDATE instances SET state = 'ended', ended_at = ?, end_reason = ? "
            "WHERE provider = ? AND instance_id = ? AND ended_at IS NULL",
            (time.time() if at is None else at, reason, provider, instance_id),
        )


def current_instance(state: State, host: str) -> InstanceRecord | None:
    """The newest instance recorded for *host* that has not ended."""
    row = state.db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE host = ? AND ended_at IS NULL "
        "ORDER BY launched_at DESC LIMIT 1",
        (host,),
    ).fetchone()
    return _instance(row) if row else None


def billing_instances(state: State) -> list[InstanceRecord]:
    """Every recorded instance that has not ended, oldest first."""
    rows = state.db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE ended_at IS NULL ORDER BY launched_at"
    ).fetchall()
    return [_instance(row) for row in rows]


def instance_record(state: State, provider: str, instance_id: str) -> InstanceRecord | None:
    row = state.db.execute(
        f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE provider = ? AND instance_id = ?",
        (provider, instance_id),
    ).fetchone()
    return _instance(row) if row else None


def resolved_python(state: State, host: str, configured: str) -> str | None:
    row = state.db.execute(
        "SELECT executable FROM agent_python WHERE host = ? AND configured = ?", (host, configured)
    ).fetchone()
    return str(row[0]) if row else None


def record_resolved_python(state: State, host: str, configured: str, executable: str) -> None:
    with state.transaction():
        state.db.execute(
            "INSERT OR REPLACE INTO agent_python(host, configured, executable) VALUES (?, ?, ?)",
            (host, configured, executable),
        )


def record_tunnels(state: State, host: str, pid: int, tunnels: Iterable[tuple[str, int, int, str]]) -> None:
    """(service, local port, host port, URL path) of the tunnels process *pid* now holds for *host*."""
    with state.transaction():
        state.db.execute("DELETE FROM tunnels WHERE host = ?", (host,))
        state.db.executemany(
            "INSERT INTO tunnels(host, service, local_port, host_port, path, pid) VALUES (?, ?, ?, ?, ?, ?)",
            [(host, service, local, remote, path, pid) for service, local, remote, path in tunnels],
        )


def clear_tunnels(state: State, host: str, pid: int) -> None:
    with state.transaction():
        state.db.execute("DELETE FROM tunnels WHERE host = ? AND pid = ?", (host, pid))


def live_tunnels(state: State, host: str | None = None) -> list[dict[str, Any]]:
    """Tunnels whose holder still runs (rows a killed supervisor left behind are ignored)."""
    query = "SELECT host, service, local_port, host_port, path, pid FROM tunnels"
    rows = state.db.execute(query + (" WHERE host = ?" if host else ""), (host,) if host else ()).fetchall()
    keys = ("host", "service", "local_port", "host_port", "path", "pid")
    return [dict(zip(keys, row, strict=True)) for row in rows if pid_alive(row[5])]


def cache_runs(state: State, host: str, runs: Iterable[Any]) -> None:
    """Remember what the host said about these runs (objects with the fields of train.runs.RunInfo)."""
    with state.transaction():
        state.db.executemany(
            "INSERT OR REPLACE INTO runs(host, id, command, name, state, started_at, ended_at, exit_code, seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (host, r.id, r.command, r.name, r.state, r.started_at, r.ended_at, r.exit_code, time.time())
                for r in runs
            ],
        )


def cached_runs(state: State) -> list[dict[str, Any]]:
    rows = state.db.execute(
        "SELECT host, id, command, name, state, started_at, ended_at, exit_code FROM runs ORDER BY started_at"
    ).fetchall()
    keys = ("host", "id", "command", "name", "state", "started_at", "ended_at", "exit_code")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our DDL strings)."""
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]


def open_state(path: Path | None = None) -> State:
    return State(path or paths.state_dir() / DB_NAME)
