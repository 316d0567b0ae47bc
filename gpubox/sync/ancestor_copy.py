"""A copy of one sync ancestor beside the lock file, so that a no-op pass does not read it out of SQLite.

The ancestor of a large project takes a while to read row by row (a 50,000-file project: most of a no-op
`gpubox sync`). The copy is one marshal blob of columns, taken at a generation of that ancestor (see migration 9
in gpubox/state/database.py): the database's number changes with every change to those rows, whoever makes it,
and a copy of another generation, of another project, or that does not check out, is never used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gpubox.sync.scan import Entry, pack_entries, unpack_entries
from gpubox.sync.stamped import read_stamped, write_stamped

__all__ = ["AncestorCopy"]

FORMAT = 1
"""The layout: a JSON header line [FORMAT, host, project key, generation, CRC-32 of the rest], then the blob."""


class AncestorCopy:
    def __init__(self, path: Path, host: str, project_key: str) -> None:
        self.path = path
        self.host = host
        self.project_key = project_key
        self.generation: int | None = None
        """The generation of the copy on disk, as far as this process knows."""

    def read(self, generation: int) -> dict[str, Entry] | None:
        """The ancestor at *generation*, or None when the copy is not of it."""
        body = read_stamped(self.path, [FORMAT, self.host, self.project_key, generation])
        if body is None:
            return None
        try:
            found = unpack_entries(body)
        except (ValueError, TypeError, EOFError):
            return None
        self.generation = generation
        return found

    def keep(self, ancestor: Mapping[str, Entry], generation: int) -> None:
        """Write the copy of *ancestor* at *generation*, unless the copy on disk is already of it. No fsync:
        a copy lost or torn in a crash is not used (its generation or checksum does not match)."""
        if generation == self.generation:
            return
        if write_stamped(
            self.path, [FORMAT, self.host, self.project_key, generation], pack_entries(ancestor)
        ):
            self.generation = generation
