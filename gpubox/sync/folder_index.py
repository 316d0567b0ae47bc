"""What each folder of a project looked like the last time a full pass left the host exactly as the ancestor says.

A one-shot `gpubox sync` with nothing to send spent most of its time deciding, file by file, what the scan had
found and comparing it with the ancestor. Instead, each folder's listing is reduced to a digest of every entry's
name, mode, inode, size, mtime and ctime, chained with the digests of the rule files (.gitignore, .gpuboxignore)
of the folders above it. A folder whose digest is the one recorded here holds what it held then, under the same
rules: the ancestor's entries for it are still right, and its files need no decision.

The record is trusted only at the ancestor generation it was written at (any change to the ancestor, by any
gpubox, moves the generation; migration 9 in gpubox/state/database.py) and under the same [sync] settings and
format. It is written only when, after a full pass, the ancestor equals what the scan found. ctime cannot be set
by a user, so a file rewritten with its old size and mtime still changes its folder's digest.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox.sync.stamped import read_stamped, write_stamped

if TYPE_CHECKING:
    from gpubox.config import SyncConfig

__all__ = ["FolderIndex", "Record", "add_unchanged", "folder_digest", "rules_fingerprint", "rules_token"]

FORMAT = 1
"""Bump when what a digest covers, or what a folder's decisions depend on, changes."""

Record = tuple[bytes, list[str], list[str], list[str], list[tuple[str, int]], list[tuple[str, str]]]
"""(digest, subfolders to walk, names skipped, secrets held back, (name, size) too large, (name, target) links
leaving the project): all a walk would find in the folder besides the ancestor's entries. Names are relative to
the folder."""

_RULE_FILES = frozenset({".gitignore", ".gpuboxignore"})


def rules_fingerprint(*settings: object) -> bytes:
    """The token the project folder's rules start from: the index format and every [sync] setting."""
    from gpubox import __version__  # a new gpubox may decide differently (built-in ignores, secret names)

    text = json.dumps([FORMAT, __version__, *settings], sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()


def folder_digest(token: bytes, items: Sequence[os.DirEntry[str]], stats: Sequence[os.stat_result]) -> bytes:
    rows = sorted(
        [
            (item.name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            for item, st in zip(items, stats, strict=True)
        ]
    )
    digest = hashlib.blake2b(token, digest_size=16)
    digest.update(marshal.dumps(rows))
    return digest.digest()


def rules_token(
    token: bytes, items: Sequence[os.DirEntry[str]], stats: Sequence[os.stat_result]
) -> bytes | None:
    """The token of the folders below: the one above, and this folder's own rule files (they decide there).
    None when a rule file is a symlink: what it says can change while the folder's listing stays the same, so
    neither this folder nor any below it can be taken as unchanged."""
    rows = []
    for item, st in zip(items, stats, strict=True):
        if item.name in _RULE_FILES:
            if stat.S_ISLNK(st.st_mode):
                return None
            rows.append((item.name, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    rows.sort()
    if not rows:
        return token
    digest = hashlib.blake2b(token, digest_size=16)
    digest.update(marshal.dumps(rows))
    return digest.digest()


def add_unchanged(unchanged: set[str], entries: dict[str, Any], ancestor: Mapping[str, Any]) -> None:
    """Give a scan's *entries* the ancestor's entries of the folders it found as the index has them."""
    if not unchanged:
        return
    for path, entry in ancestor.items():
        if path.rpartition("/")[0] in unchanged:
            entries.setdefault(path, entry)


class FolderIndex:
    """The record, one file beside the sync lock: a JSON header line, then a marshal blob of the records."""

    def __init__(self, path: Path, host: str, project_key: str, sync: SyncConfig) -> None:
        self.path = path
        self.host = host
        self.project_key = project_key
        self.token = rules_fingerprint(sync.ignore, sync.include, sync.outputs, sync.max_file_size_mb)
        """Where the rules tokens of the project folder start (see :func:`rules_token`)."""
        self._written: tuple[int, bytes] | None = None
        """(generation, records) this object last wrote: a live sync's idle rescans need not write it again."""

    def current(self) -> dict[str, Record] | None:
        """The records, if they were taken at the ancestor's present generation."""
        from gpubox.state import open_state

        with open_state() as state:
            generation = state.ancestor_generation(self.host, self.project_key)
        return None if generation is None else self.read(generation)

    def read(self, generation: int) -> dict[str, Record] | None:
        """The records taken at *generation* under these [sync] settings, or None."""
        body = read_stamped(self.path, self._stamp(generation))
        try:
            records: Any = None if body is None else marshal.loads(body)
        except (ValueError, TypeError, EOFError):
            return None
        return records if isinstance(records, dict) else None

    def keep(self, records: Mapping[str, Record], generation: int) -> None:
        body = marshal.dumps(dict(records))
        if self._written == (generation, body) and self.path.exists():
            return
        if write_stamped(self.path, self._stamp(generation), body):
            self._written = (generation, body)

    def _stamp(self, generation: int) -> list[object]:
        return [FORMAT, self.host, self.project_key, generation, self.token.hex()]
