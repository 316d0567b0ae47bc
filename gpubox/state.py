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

__all__ = ["MIGRATIONS", "HostRecord", "State", "Supervisor", "open_state"]

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
)


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
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate(migrations)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"state database {path} cannot be used: {exc}") from None
        except OSError as exc:
            raise StateError(f"state folder {path.parent} cannot be used: {exc.strerror or exc}") from None

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

    # -- billing intervals

    def open_billing(self, host: str, price_per_hour: float, at: float | None = None) -> int:
        """Start a billing interval unless one is already open for *host*; return its id."""
        with self.transaction():
            row = self.db.execute(
                "SELECT id FROM billing WHERE host = ? AND ended_at IS NULL", (host,)
            ).fetchone()
            if row:
                return int(row[0])
            cursor = self.db.execute(
                "INSERT INTO billing(host, price_per_hour, started_at) VALUES (?, ?, ?)",
                (host, price_per_hour, at if at is not None else time.time()),
            )
            return int(cursor.lastrowid or 0)

    def close_billing(self, host: str, at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE billing SET ended_at = ? WHERE host = ? AND ended_at IS NULL",
                (at if at is not None else time.time(), host),
            )

    def billing_intervals(self, host: str | None = None) -> list[tuple[str, float, float, float | None]]:
        """(host, price_per_hour, started_at, ended_at or None while open), oldest first."""
        query = "SELECT host, price_per_hour, started_at, ended_at FROM billing"
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " WHERE host = ?"
            args = (host,)
        rows = self.db.execute(query + " ORDER BY started_at", args)
        return [(str(h), float(p), float(s), None if e is None else float(e)) for h, p, s, e in rows]

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


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (no semicolons inside our DDL strings)."""
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]


def open_state(path: Path | None = None) -> State:
    return State(path or paths.state_dir() / DB_NAME)
