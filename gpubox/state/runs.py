"""What gpubox last heard about each run, for per-run cost and listings without connecting (the host's run
folder stays the truth)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from gpubox.record import record
from gpubox.state.database import Database

__all__ = ["RunRecord", "RunTables"]


@record
class RunRecord:
    """A run as a host last described it (the fields of :class:`gpubox.train.runs.RunInfo` gpubox keeps)."""

    host: str
    id: str
    command: str
    name: str | None
    state: str
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    project: str | None = None
    """The id of the project that started it (None: unknown, from before project ids)."""
    project_name: str | None = None


class RunTables(Database):
    """The runs table (part of :class:`gpubox.state.State`)."""

    def cache_runs(self, host: str, runs: Iterable[Any]) -> None:
        """Remember what the host said about these runs (objects with the fields of train.runs.RunInfo).

        Committed without an fsync of its own (WAL, synchronous=NORMAL: still all or nothing): a cache, which
        the next listing of the host fills again if a crash of this machine loses it. Only rows that differ from
        the cache are written (``seen_at``: when gpubox last heard something new of the run): a listing that
        repeats what is known writes nothing, so the command's closing of the database has no log to fold in
        (~10 ms of `gpubox runs` on a busy disk)."""
        rows = [
            (
                r.id,
                r.command,
                r.name,
                r.state,
                r.started_at,
                r.ended_at,
                r.exit_code,
                getattr(r, "project", None),
                getattr(r, "project_name", None),
            )
            for r in runs
        ]
        known = {
            row[0]: row
            for row in self.db.execute(
                "SELECT id, command, name, state, started_at, ended_at, exit_code, project, project_name FROM runs "
                "WHERE host = ?",
                (host,),
            )
        }
        changed = [row for row in rows if known.get(row[0]) != row]
        if not changed:
            return
        self.db.execute("PRAGMA synchronous = NORMAL")
        now = time.time()
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO runs(host, id, command, name, state, started_at, ended_at, exit_code, "
                "seen_at, project, project_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(host, *row[:7], now, *row[7:]) for row in changed],
            )

    def cached_runs(self, host: str | None = None) -> list[RunRecord]:
        """Every run gpubox has heard of (on *host* when given), oldest first."""
        query = "SELECT host, id, command, name, state, started_at, ended_at, exit_code, project, project_name FROM runs"
        rows = self.db.execute(
            query + (" WHERE host = ?" if host else "") + " ORDER BY started_at", (host,) if host else ()
        ).fetchall()
        return [RunRecord(*row) for row in rows]
