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
    """The sync_ancestors table and its generation numbers (part of :class:`gpubox.state.State`).

    A generation number (per host and project) changes with every change to that ancestor's rows, by whoever
    makes it (a trigger, see migration 9); None when the ancestor has never had a row since that migration.
    """

    def ancestor(self, host: str, project: str) -> dict[str, AncestorEntry]:
        return self.ancestor_at(host, project)[0]

    def ancestor_at(self, host: str, project: str) -> tuple[dict[str, AncestorEntry], int | None]:
        """The ancestor and its generation, read in one transaction (they belong together)."""
        self.db.execute("BEGIN")
        try:
            generation = self._generation(host, project)
            rows = self.db.execute(
                "SELECT path, kind, size, mtime_ns, executable, target FROM sync_ancestors "
                "WHERE host = ? AND project = ?",
                (host, project),
            ).fetchall()
        finally:
            self.db.execute("COMMIT")
        found = {
            _decode(path): AncestorEntry(kind, size, mtime_ns, bool(executable), _decode(target))
            for path, kind, size, mtime_ns, executable, target in rows
        }
        return found, generation

    def ancestor_generation(self, host: str, project: str) -> int | None:
        return self._generation(host, project)

    def _generation(self, host: str, project: str) -> int | None:
        row = self.db.execute(
            "SELECT generation FROM sync_generations WHERE host = ? AND project = ?", (host, project)
        ).fetchone()
        return None if row is None else int(row[0])

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
    ) -> tuple[int | None, int | None]:
        """Record what the host acknowledged, in one transaction (all of a batch or none of it). Returns the
        ancestor's generation just before and just after this change.

        Committed without an fsync of its own (WAL, synchronous=NORMAL: still all or nothing): an ancestor that
        loses its last batches in a crash of this machine only makes the next pass send those files again, and
        the host answers that it has them."""
        self.db.execute("PRAGMA synchronous = NORMAL")
        with self.transaction():
            before = self._generation(host, project)
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
            return before, self._generation(host, project)

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
