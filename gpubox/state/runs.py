"""What gpubox last heard about each run, for per-run cost and listings without connecting (the host's run
folder stays the truth)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gpubox.state.database import Database

__all__ = ["RunRecord", "RunTables"]


@dataclass(frozen=True)
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


class RunTables(Database):
    """The runs table (part of :class:`gpubox.state.State`)."""

    def cache_runs(self, host: str, runs: Iterable[Any]) -> None:
        """Remember what the host said about these runs (objects with the fields of train.runs.RunInfo)."""
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO runs(host, id, command, name, state, started_at, ended_at, exit_code, "
                "seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        host,
                        r.id,
                        r.command,
                        r.name,
                        r.state,
                        r.started_at,
                        r.ended_at,
                        r.exit_code,
                        time.time(),
                    )
                    for r in runs
                ],
            )

    def cached_runs(self) -> list[RunRecord]:
        """Every run gpubox has heard of, oldest first."""
        rows = self.db.execute(
            "SELECT host, id, command, name, state, started_at, ended_at, exit_code FROM runs ORDER BY started_at"
        ).fetchall()
        return [RunRecord(*row) for row in rows]
