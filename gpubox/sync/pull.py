"""Bring what the host wrote (the outputs folders, or named paths) back to the local project, incrementally.

A local file that matches the host's (size and mtime) is skipped. A local file that differs is replaced, but
when it is newer than the host's copy it is first kept as ``NAME.gpubox-local-<UTC time>``: pull never loses
a newer local file. Files arrive through a temp name and a rename, with the host's mtime and exec bit.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gpubox.config import ProjectConfig
from gpubox.errors import UsageError
from gpubox.remote.agent import calls
from gpubox.remote.session import HostSession
from gpubox.sync.engine import BatchProgress, decode_manifest
from gpubox.sync.scan import Entry

__all__ = ["PullReport", "normalise_paths", "pull"]

CHUNK = 8 * 1024 * 1024


@dataclass
class PullReport:
    fetched: int = 0
    bytes_fetched: int = 0
    unchanged: int = 0
    kept_local: list[str] = field(default_factory=list)
    skipped_links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"{self.fetched:,} fetched ({self.bytes_fetched / 1e6:.1f} MB), {self.unchanged:,} unchanged"
        if self.kept_local:
            text += f", {len(self.kept_local)} newer local files kept aside"
        if self.errors:
            text += f", {len(self.errors)} errors"
        return text + f" in {self.seconds:.2f} s"


def normalise_paths(paths: Iterable[str], root: Path) -> list[str]:
    """The named paths relative to the project root; a path outside it is a usage error."""
    cleaned = []
    for raw in paths:
        candidate = Path(raw)
        absolute = candidate if candidate.is_absolute() else Path.cwd() / candidate
        try:
            rel = absolute.resolve(strict=False).relative_to(root.resolve()).as_posix()
        except ValueError:
            raise UsageError(f"{raw}: not inside the project folder {root}") from None
        if rel in ("", "."):
            raise UsageError("pull the whole project? name the folders to pull, or use the outputs default")
        cleaned.append(rel)
    return cleaned


def pull(
    session: HostSession,
    project: ProjectConfig,
    paths: Iterable[str] = (),
    *,
    progress: Callable[[BatchProgress], None] | None = None,
) -> PullReport:
    started = time.monotonic()
    wanted = normalise_paths(paths, project.root) or [o.strip("/") for o in project.sync.outputs]
    _result, blob = calls.manifest(session.agent, root=session.remote_dir, only=wanted)
    remote = decode_manifest(blob, session.agent.host)
    report = PullReport()
    todo: list[tuple[str, Entry]] = []
    for rel, entry in sorted(remote.items()):
        refused = _refusal(project.root, rel)
        if refused:
            report.errors.append(refused)
            continue
        local = project.root / rel
        if entry.kind == "d":
            _ensure_folder(local, report, rel)
            continue
        if entry.kind == "l":
            report.skipped_links.append(rel)
            continue
        if entry.kind != "f":
            continue
        if _local_entry(local) == entry:
            report.unchanged += 1
            continue
        if local.is_dir() and not local.is_symlink():
            report.errors.append(f"{rel}: a folder is in the way of the host's file")
            continue
        todo.append((rel, entry))
    total_bytes = sum(e.size for _, e in todo)
    done_bytes = 0
    for index, (rel, entry) in enumerate(todo):
        fetched = _fetch(session, rel, entry, project.root / rel, report)
        if fetched:
            report.fetched += 1
            report.bytes_fetched += entry.size
        done_bytes += entry.size
        if progress is not None:
            progress(BatchProgress(index + 1, len(todo), done_bytes, total_bytes))
    report.seconds = time.monotonic() - started
    return report


def _refusal(root: Path, rel: str) -> str | None:
    """Why the host's path *rel* must not be written locally, or None: pull writes only inside the project,
    never through a local symlink (a link to ~/.ssh there must not let the host write into ~/.ssh)."""
    parts = rel.split("/")
    if rel.startswith("/") or "\0" in rel or any(part in ("", ".", "..") for part in parts):
        return f"{rel!r}: refusing a path from the host that is not inside the project"
    folder = root
    for part in parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            return f"{rel}: refusing to write through the local symlink {folder.relative_to(root)}"
    return None


def _local_entry(path: Path) -> Entry | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    if not path.is_file() or path.is_symlink():
        return Entry("o")
    return Entry("f", st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o100))


def _ensure_folder(path: Path, report: PullReport, rel: str) -> None:
    if path.is_dir() and not path.is_symlink():
        return
    if path.exists() or path.is_symlink():
        report.errors.append(f"{rel}: a file is in the way of the host's folder")
        return
    path.mkdir(parents=True, exist_ok=True)


def _fetch(session: HostSession, rel: str, entry: Entry, target: Path, report: PullReport) -> bool:
    try:
        return _fetch_into(session, rel, entry, target, report)
    except OSError as exc:
        # A local file in the way of a folder, a full disk: this path fails, the pull goes on.
        report.errors.append(f"{rel}: {exc.strerror or exc}")
        return False


def _fetch_into(session: HostSession, rel: str, entry: Entry, target: Path, report: PullReport) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.gpubox-pull-{os.getpid()}")
    offset = 0
    try:
        with open(temp, "wb") as handle:
            while True:
                answer, data = calls.read(
                    session.agent, root=session.remote_dir, files=[[rel, offset, CHUNK]]
                )
                _path, facts, error, _count = answer["files"][0]
                if error:
                    report.errors.append(f"{rel}: {error}")
                    return False
                if facts[1] != entry.mtime_ns:
                    report.errors.append(f"{rel}: changed on the host while being pulled; pull again")
                    return False
                handle.write(data)
                offset += len(data)
                if not data or offset >= facts[0]:
                    break
        os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns))
        temp.chmod(0o755 if entry.executable else 0o644)
        local = _local_entry(target)
        if local is not None and local.kind == "f" and local.mtime_ns > entry.mtime_ns:
            kept = target.with_name(
                f"{target.name}.gpubox-local-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            )
            os.replace(target, kept)
            report.kept_local.append(f"{rel} -> {kept.name}")
        os.replace(temp, target)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
