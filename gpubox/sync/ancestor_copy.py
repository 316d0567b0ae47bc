"""A copy of one sync ancestor beside the lock file, so that a no-op pass does not read it out of SQLite.

The ancestor of a large project takes a while to read row by row (a 50,000-file project: most of a no-op
`gpubox sync`). The copy is one marshal blob of columns, taken at a generation of that ancestor (see migration 9
in gpubox/state/database.py): the database's number changes with every change to those rows, whoever makes it,
and a copy of another generation, of another project, or that does not check out, is never used.
"""

from __future__ import annotations

import array
import contextlib
import functools
import json
import marshal
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

from gpubox import paths
from gpubox.sync.scan import Entry

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
        try:
            data = self.path.read_bytes()
            header, _, body = data.partition(b"\n")
            form, host, key, stamp, checksum = json.loads(header)
            if (form, host, key, stamp) != (FORMAT, self.host, self.project_key, generation):
                return None
            if zlib.crc32(body) != checksum:
                return None
            found = _unpack(body)
        except (OSError, ValueError, TypeError, EOFError):
            return None
        self.generation = generation
        return found

    def keep(self, ancestor: Mapping[str, Entry], generation: int) -> None:
        """Write the copy of *ancestor* at *generation*, unless the copy on disk is already of it. No fsync:
        a copy lost or torn in a crash is not used (its generation or checksum does not match)."""
        if generation == self.generation:
            return
        body = _pack(ancestor)
        header = json.dumps([FORMAT, self.host, self.project_key, generation, zlib.crc32(body)])
        temp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            paths.ensure_private_dir(temp.parent)
            with open(temp, "wb") as handle:
                handle.write(header.encode() + b"\n" + body)
            os.replace(temp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            return
        self.generation = generation


def _pack(ancestor: Mapping[str, Entry]) -> bytes:
    """Columns (no path or link target holds a NUL), so that reading them back builds every entry in C."""
    entries = ancestor.values()
    return marshal.dumps(
        (
            "\0".join(ancestor),
            "".join(entry.kind for entry in entries),
            array.array("q", [entry.size for entry in entries]).tobytes(),
            array.array("q", [entry.mtime_ns for entry in entries]).tobytes(),
            bytes(entry.executable for entry in entries),
            "\0".join(entry.target for entry in entries),
        )
    )


def _unpack(body: bytes) -> dict[str, Entry]:
    names, kinds, size_bytes, mtime_bytes, executables, targets = marshal.loads(body)
    sizes, mtimes = array.array("q"), array.array("q")
    sizes.frombytes(size_bytes)
    mtimes.frombytes(mtime_bytes)
    keys = names.split("\0") if names else []
    if not len(keys) == len(kinds) == len(sizes) == len(mtimes) == len(executables):
        raise ValueError("the ancestor's copy is inconsistent")
    columns = zip(
        kinds, sizes, mtimes, map(bool, executables), targets.split("\0") if keys else [], strict=True
    )
    return dict(zip(keys, map(functools.partial(tuple.__new__, Entry), columns), strict=True))
