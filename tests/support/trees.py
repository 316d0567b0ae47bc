"""Compare two folders the way sync promises they match: bytes, symlink targets, exec bits and folders."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

Fact = tuple[object, ...]

# What never travels: gpubox's own built-in ignores that tests meet (VCS, caches, editor temp files).
ALWAYS_LOCAL = (".git", "__pycache__", "*.pyc", "*~", "*.swp", "*___jb_tmp___", "*___jb_old___")


def _excluded(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rpartition("/")[2]
    for pattern in patterns:
        if pattern.startswith("/"):  # anchored at the root
            pattern = pattern[1:]
            if rel == pattern or rel.startswith(pattern + "/") or fnmatch.fnmatchcase(rel, pattern):
                return True
            continue
        if rel == pattern or rel.startswith(pattern.rstrip("/") + "/"):
            return True
        if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
            return True
        if "/" in pattern and fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def snapshot(root: Path, *, exclude: Iterable[str] = ()) -> dict[str, Fact]:
    """Every path under *root* (symlinks never followed) → ('f', sha256, exec) / ('l', target) / ('d',).

    An excluded folder is not entered; *exclude* holds names or name globs (matched at any depth), paths with a
    '/' inside (from the root), or '/'-led paths (anchored at the root).
    """
    patterns = tuple(exclude)
    facts: dict[str, Fact] = {}
    stack = [""]
    while stack:
        folder = stack.pop()
        with os.scandir(root / folder if folder else root) as listing:
            for item in listing:
                rel = f"{folder}/{item.name}" if folder else item.name
                if _excluded(rel, patterns):
                    continue
                st = item.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    facts[rel] = ("l", os.readlink(item.path))
                elif stat.S_ISDIR(st.st_mode):
                    facts[rel] = ("d",)
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    digest = hashlib.sha256(Path(item.path).read_bytes()).hexdigest()
                    facts[rel] = ("f", digest, bool(st.st_mode & 0o100))
                else:
                    facts[rel] = ("o",)
    return facts


def difference(left: Mapping[str, Fact], right: Mapping[str, Fact], limit: int = 20) -> str:
    """A readable list of what differs; '' when the two snapshots match."""
    lines = []
    for rel in sorted(set(left) | set(right)):
        a, b = left.get(rel), right.get(rel)
        if a != b:
            lines.append(f"  {rel!r}: local={a} host={b}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"  ... and {len(lines) - limit} more"]
    return "\n".join(lines)


def assert_same_tree(
    local: Path,
    host: Path,
    *,
    local_exclude: Iterable[str] = (),
    host_exclude: Iterable[str] = (),
) -> dict[str, Fact]:
    """The host holds exactly the synced part of local: nothing missing, nothing different, nothing extra."""
    mine = snapshot(local, exclude=(*ALWAYS_LOCAL, *local_exclude))
    theirs = snapshot(host, exclude=tuple(host_exclude))
    differ = difference(mine, theirs)
    assert not differ, f"local {local} and host {host} differ:\n{differ}"
    return mine


def same_tree(
    local: Path, host: Path, *, local_exclude: Iterable[str] = (), host_exclude: Iterable[str] = ()
) -> bool:
    try:
        mine = snapshot(local, exclude=(*ALWAYS_LOCAL, *local_exclude))
        theirs = snapshot(host, exclude=tuple(host_exclude))
    except (FileNotFoundError, NotADirectoryError):
        return False  # a path vanished while walking: the tree is still moving
    return mine == theirs


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll *predicate* until it holds or *timeout* seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def write(root: Path, rel: str, data: bytes | str = b"", *, executable: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o755 if executable else 0o644)
    return path


def make_files(
    root: Path, count: int, *, folder: str = "bulk", size: int = 64, per_folder: int = 200
) -> None:
    """*count* small files with distinct contents, *per_folder* to a sub-folder."""
    for index in range(count):
        path = root / folder / f"d{index // per_folder:03d}" / f"f{index:05d}.txt"
        if index % per_folder == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        body = (f"{index:08d}\n" * (size // 9 + 1))[:size]
        path.write_text(body)
