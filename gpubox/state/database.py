"""The state database itself: its schema, its migrations, one connection to it.

One SQLite file in the user's state folder (``$GPUBOX_HOME/state`` when set). The host is always the source of
truth for what runs there; this file is a cache that lets commands answer without connecting, plus the records
only this machine has (which supervisor holds which host, billing intervals).

The schema is versioned with ``PRAGMA user_version`` and upgraded by :data:`MIGRATIONS`, each applied in its own
transaction. WAL mode and a busy timeout let two gpubox processes use the file at once. A migration is only ever
added at the end: a database written by any earlier gpubox must open unchanged.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Self

from gpubox import paths
from gpubox.errors import StateError

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "Database"]

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
    # 8: several projects on one host. A supervisor, its monitor report and its tunnels are per project (the id
    # of gpubox.config.ProjectConfig; '' for rows of an older gpubox), each project's folder on each host is
    # remembered once settled, and a cached run says which project started it.
    """
    CREATE TABLE supervisors_v8 (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL DEFAULT '',
        root        TEXT,
        folder      TEXT,
        pid         INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        detached    INTEGER NOT NULL,
        log_file    TEXT,
        PRIMARY KEY (host, project)
    );
    INSERT INTO supervisors_v8(host, project, pid, started_at, detached, log_file)
        SELECT host, '', pid, started_at, detached, log_file FROM supervisors;
    DROP TABLE supervisors;
    ALTER TABLE supervisors_v8 RENAME TO supervisors;
    CREATE TABLE monitors_v8 (
        host        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        updated_at  REAL NOT NULL,
        report      TEXT NOT NULL,
        PRIMARY KEY (host, pid)
    );
    INSERT INTO monitors_v8(host, pid, updated_at, report) SELECT host, pid, updated_at, report FROM monitors;
    DROP TABLE monitors;
    ALTER TABLE monitors_v8 RENAME TO monitors;
    CREATE TABLE tunnels_v8 (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL DEFAULT '',
        service     TEXT NOT NULL,
        local_port  INTEGER NOT NULL,
        host_port   INTEGER NOT NULL,
        path        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        service_key TEXT,
        PRIMARY KEY (host, project, service)
    );
    INSERT INTO tunnels_v8(host, project, service, local_port, host_port, path, pid)
        SELECT host, '', service, local_port, host_port, path, pid FROM tunnels;
    DROP TABLE tunnels;
    ALTER TABLE tunnels_v8 RENAME TO tunnels;
    CREATE TABLE project_folders (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL,
        root        TEXT NOT NULL,
        folder      TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (host, project)
    );
    ALTER TABLE runs ADD COLUMN project TEXT;
    ALTER TABLE runs ADD COLUMN project_name TEXT;
    """,
    # 9: a generation number per sync ancestor (host, project), bumped by a trigger on every change to its rows
    # whoever makes it (any gpubox version, a hand-run DELETE), so that a copy of the ancestor kept beside this
    # file (gpubox.sync.engine) is trusted only while the number is the one it was taken at. Each starts at a
    # random number, so that a database made anew never repeats the numbers of the one before.
    """
    CREATE TABLE sync_generations (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL,
        generation  INTEGER NOT NULL,
        PRIMARY KEY (host, project)
    ) WITHOUT ROWID;
    INSERT INTO sync_generations
        SELECT host, project, abs(random() % 4611686018427387904)
        FROM (SELECT DISTINCT host, project FROM sync_ancestors);
    CREATE TRIGGER sync_ancestor_added AFTER INSERT ON sync_ancestors BEGIN
        INSERT INTO sync_generations VALUES (NEW.host, NEW.project, abs(random() % 4611686018427387904))
            ON CONFLICT (host, project) DO UPDATE SET generation = generation + 1;
    END;
    CREATE TRIGGER sync_ancestor_changed AFTER UPDATE ON sync_ancestors BEGIN
        UPDATE sync_generations SET generation = generation + 1
            WHERE (host = OLD.host AND project = OLD.project) OR (host = NEW.host AND project = NEW.project);
    END;
    CREATE TRIGGER sync_ancestor_removed AFTER DELETE ON sync_ancestors BEGIN
        UPDATE sync_generations SET generation = generation + 1 WHERE host = OLD.host AND project = OLD.project;
    END;
    """,
    # 10: a rented instance stopped with its disk kept (by its guardian, with the laptop gone) stays recorded,
    # not billing its GPU, until `up` starts it again or `down` terminates it: when and why it stopped.
    """
    ALTER TABLE instances ADD COLUMN stopped_at REAL;
    ALTER TABLE instances ADD COLUMN stop_reason TEXT;
    """,
)


class Database:
    """A connection to the state database at the latest schema; cheap to open, safe to use from one thread.

    The tables' reads and writes are in the modules beside this one; :class:`gpubox.state.State` has them all.
    """

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (a trigger's body holds semicolons of its own; no string in
    our DDL does)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;") and not pending.strip().startswith("--"):
                statements.append(pending.strip())
            pending = ""
    return statements
