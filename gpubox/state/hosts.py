"""The hosts gpubox has connected to (endpoint, last probe) and the interpreter each host's ``python`` is."""

from __future__ import annotations

import json
import time
from typing import Any

from gpubox.record import record
from gpubox.state.database import Database

__all__ = ["HostRecord", "HostTables"]


@record
class HostRecord:
    name: str
    provider: str
    endpoint: str | None
    probe: dict[str, Any] | None
    probed_at: float | None


class HostTables(Database):
    """The hosts and agent_python tables (part of :class:`gpubox.state.State`)."""

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

    # -- the interpreter a host's configured `python` resolved to (the agent starts without shell wrappers)

    def resolved_python(self, host: str, configured: str) -> str | None:
        row = self.db.execute(
            "SELECT executable FROM agent_python WHERE host = ? AND configured = ?", (host, configured)
        ).fetchone()
        return str(row[0]) if row else None

    def record_resolved_python(self, host: str, configured: str, executable: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO agent_python(host, configured, executable) VALUES (?, ?, ?)",
                (host, configured, executable),
            )
