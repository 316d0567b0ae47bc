"""The sync ancestor: per host and project, the state of each path the host last acknowledged.

Paths and link targets are stored as raw bytes, since file names need not be valid UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from gpubox.state.database import Database

__all__ = ["AncestorEntry", "AncestorTables"]


class AncestorEntry(NamedTuple):
    """One path as the host acknowledged it (the fields of :class:`gpubox.sync.scan.Entry`)."""

    kind: str
    size: int
    mtime_ns: int
    executable: bool
    target: str


class AncestorTables(Database):
    """The sync_ancestors table (part of :class:`gpubox.state.State`)."""

    def ancestor(self, host: str, project: str) -> dict[str, AncestorEntry]:
        rows = self.db.execute(
            "SELECT path, kind, size, mtime_ns, executable, target FROM sync_ancestors WHERE host = ? AND project = ?",
            (host, project),
        )
        return {
            _decode(path): AncestorEntry(kind, size, mtime_ns, bool(executable), _decode(target))
            for path, kind, size, mtime_ns, executable, target in rows
        }

    def has_ancestor(self, host: str, project: str) -> bool:
        """Whether the host has acknowledged anything of this project key (it was synced there)."""
        row = self.db.execute(
            "SELECT 1 FROM sync_ancestors WHERE host = ? AND project = ? LIMIT 1", (host, project)
        ).fetchone()
        return row is not None

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
