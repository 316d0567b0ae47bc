"""Snapshots of everything a gpubox command could change, to prove that one changed nothing.

Three places are compared before and after a command: the local project folder, gpubox's own folder
(``GPUBOX_HOME``: config, state, pins, logs, and the SQLite database compared as a logical dump, since WAL
checkpoints move bytes without changing anything), and, where a host is involved, the remote project folder.
Files are compared by content hash, mode and mtime; files over 64 MiB (the 5 GB sparse file) by size and mtime,
so a snapshot never reads gigabytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["Facts", "difference", "sqlite_dump", "state_facts", "tree_facts"]

Facts = dict[str, tuple[object, ...]]
BIG = 64 << 20
DB_NAMES = ("gpubox.db", "gpubox.db-wal", "gpubox.db-shm", "gpubox.db-journal")


def _hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_facts(root: Path, *, skip: Iterable[str] = ()) -> Facts:
    """Every path under *root* (symlinks never followed, names kept as they are, even when not UTF-8)."""
    skipped = set(skip)
    facts: Facts = {}
    if not os.path.lexists(root):
        return facts
    stack = [""]
    while stack:
        folder = stack.pop()
        with os.scandir(os.path.join(root, folder) if folder else root) as listing:
            for item in listing:
                rel = f"{folder}/{item.name}" if folder else item.name
                if rel in skipped:
                    continue
                st = item.stat(follow_symlinks=False)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    facts[rel] = ("link", os.readlink(item.path))
                elif stat.S_ISDIR(st.st_mode):
                    facts[rel] = ("dir", mode)
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    content = f"{st.st_size} bytes" if st.st_size > BIG else _hash(item.path)
                    facts[rel] = ("file", content, mode, st.st_mtime_ns)
                else:
                    facts[rel] = ("other", stat.S_IFMT(st.st_mode), mode)
    return facts


def sqlite_dump(database: Path) -> list[str]:
    """The database as SQL statements, read from a copy (so the snapshot itself never touches the file)."""
    if not database.exists():
        return []
    with tempfile.TemporaryDirectory(prefix="gbx-dump-") as folder:
        for name in DB_NAMES[:2]:
            source = database.with_name(name)
            if source.exists():
                shutil.copy2(source, Path(folder) / name)
        connection = sqlite3.connect(Path(folder) / DB_NAMES[0])
        try:
            return list(connection.iterdump())
        finally:
            connection.close()


def state_facts(gpubox_home: Path, *, ignore_tables: Iterable[str] = ()) -> Facts:
    """GPUBOX_HOME: every file, with the state database as its logical dump.

    Sync's lock files are compared by existence only (taking the lock rewrites them, and that is no change).
    *ignore_tables* leaves rows of those tables out (a command that by design records what it saw).
    """
    state = gpubox_home / "state"
    facts = tree_facts(gpubox_home, skip=[f"state/{name}" for name in DB_NAMES])
    for rel in list(facts):
        if rel.startswith("state/locks/") and facts[rel][0] == "file":
            facts[rel] = ("lock file",)
    ignored = tuple(f'INSERT INTO "{table}"' for table in ignore_tables)
    for line in sqlite_dump(state / DB_NAMES[0]):
        if not line.startswith(ignored):
            facts[f"state/gpubox.db: {line}"] = ("row",)
    return facts


def difference(before: Mapping[str, object], after: Mapping[str, object], limit: int = 15) -> str:
    """What changed between two snapshots, readably; '' when nothing did."""
    lines = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            lines.append(f"  {key!r}: {before.get(key)!r} -> {after.get(key)!r}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... and {len(lines) - limit} more"]
    return "\n".join(lines)
