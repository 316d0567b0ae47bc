"""Bring what the host wrote back to the local project, incrementally: the outputs folders and the notebooks
created or edited on the host (Jupyter), or the paths named.

A local file that matches the host's (size and mtime) is skipped. A local file that differs is replaced, but
first kept as ``NAME.gpubox-local-<UTC time>`` when it holds something the host's copy does not: in an outputs
folder, when it is newer than the host's; elsewhere, when it changed since gpubox last synced it (both sides
changed: a conflict copy). Files arrive through a temp name and a rename, with the host's mtime and exec bit.
A file outside the outputs that pull brought home is recorded as in step on both sides, so sync does not send
it back. By default only notebooks the host changed since gpubox synced them come home (``*.ipynb``).

Newest files come first (the latest checkpoint before older ones). While `gpubox up` holds the host, the outputs
follower (:mod:`gpubox.sync.follow`) pulls this way every few seconds, asking only for the files that stood
still since its previous look (*ready*) and remembering what it wrote (*pulled*): a local file that changed
since is kept aside before it is replaced, and a growing log (an event file, ``*.log``) it pulled before gets
only its new bytes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpubox.config import ProjectConfig
from gpubox.errors import UsageError
from gpubox.remote.agent import calls
from gpubox.sync.engine import BatchProgress, Syncer
from gpubox.sync.ignore import Decision
from gpubox.sync.scan import Entry, decode_manifest

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession

__all__ = ["GROWING_LOGS", "PullReport", "growing_log", "normalise_paths", "pull"]

CHUNK = 8 * 1024 * 1024
NOTEBOOK_SUFFIX = ".ipynb"
GROWING_LOGS = ("events.out.tfevents.*", "*.log", "*.csv", "*.jsonl", "*.txt")
"""Files a run only appends to while it goes on: what they hold at any moment is whole as far as it goes, so the
follower takes them while they grow (a checkpoint must stand still first)."""


def growing_log(rel: str) -> bool:
    name = rel.rpartition("/")[2]
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in GROWING_LOGS)


@dataclass
class PullReport:
    fetched: int = 0
    bytes_fetched: int = 0
    unchanged: int = 0
    kept_local: list[str] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)
    """Notebooks created or edited on the host that came home (a default pull looks for them)."""
    skipped_links: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    waiting: int = 0
    """Host files left for later because they were still changing (not *ready*)."""
    behind_files: int = 0
    """Host files that differ from the local copy after this pull (still changing, failed, or not reached)."""
    behind_bytes: int = 0
    fetched_paths: list[str] = field(default_factory=list)
    listing: dict[str, Entry] = field(default_factory=dict, repr=False)
    """The host's entries this pull looked at."""

    def summary(self) -> str:
        text = f"{self.fetched:,} fetched ({self.bytes_fetched / 1e6:.1f} MB), {self.unchanged:,} unchanged"
        if self.notebooks:
            text += f", {len(self.notebooks)} notebook{'' if len(self.notebooks) == 1 else 's'} from the host"
        if self.kept_local:
            text += (
                f", {len(self.kept_local)} local cop{'y' if len(self.kept_local) == 1 else 'ies'} kept aside"
            )
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
    syncer: Syncer | None = None,
    progress: Callable[[BatchProgress], None] | None = None,
    notebooks: bool = True,
    ready: Callable[[str, Entry], bool] | None = None,
    pulled: dict[str, Entry] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> PullReport:
    """Pull *paths* (relative to the current folder), or the outputs folders and (with *notebooks*) the host's
    new notebooks. *syncer* (one is made when not given) knows what was last synced, for files outside the
    outputs. *ready* says which changed host files to take now (the others count as waiting); *pulled* is the
    caller's memory of what it wrote (updated here); *should_stop* ends the pull between files."""
    started = time.monotonic()
    syncer = syncer if syncer is not None else Syncer(session, project)
    named = normalise_paths(paths, project.root)
    outputs = [o.strip("/") for o in project.sync.outputs]
    _result, blob = calls.manifest(session.agent, root=session.remote_dir, only=named or outputs)
    remote = decode_manifest(blob, session.agent.host)
    ancestor = syncer.ancestor()
    if not named and notebooks:
        remote.update(_host_notebooks(session, syncer, ancestor, outputs))
    report = PullReport(listing=remote)
    todo: list[tuple[str, Entry, bool]] = []
    adopt: dict[str, Entry] = {}
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
        here = _local_entry(local)
        synced = syncer.rules.decide_path(rel, False, entry.size) is Decision.SEND
        if here == entry:
            report.unchanged += 1
            if pulled is not None:
                pulled[rel] = entry
            if synced and not entry.same(ancestor.get(rel)):
                adopt[rel] = entry
            continue
        if local.is_dir() and not local.is_symlink():
            report.errors.append(f"{rel}: a folder is in the way of the host's file")
            continue
        if ready is not None and not ready(rel, entry):
            report.waiting += 1
            report.behind_files += 1
            report.behind_bytes += entry.size
            continue
        if synced or rel in ancestor:
            # A file sync carries: local's copy is kept aside when it changed since gpubox last synced it.
            keep = here is not None and here.kind == "f" and not here.same(ancestor.get(rel))
        elif pulled is not None and rel in pulled:
            # Pulled before: local's copy is kept aside when it changed since (an edit here, not the host's).
            keep = here is not None and here.kind == "f" and not here.same(pulled[rel])
        else:
            keep = here is not None and here.kind == "f" and here.mtime_ns > entry.mtime_ns
        todo.append((rel, entry, keep))
    # The newest first: the latest checkpoint is the one to have if the host goes away mid-pull.
    todo.sort(key=lambda item: -item[1].mtime_ns)
    total_bytes = sum(e.size for _, e, _ in todo)
    done_bytes = 0
    for index, (rel, entry, keep) in enumerate(todo):
        if should_stop is not None and should_stop():
            left = todo[index:]
            report.behind_files += len(left)
            report.behind_bytes += sum(e.size for _, e, _ in left)
            break
        here = _local_entry(project.root / rel)
        grown = (
            pulled is not None
            and not keep
            and here is not None
            and here.kind == "f"
            and here.same(pulled.get(rel))
            and entry.size >= here.size
            and growing_log(rel)
        )
        start = here.size if grown and here is not None else 0
        fetched = _fetch(session, rel, entry, project.root / rel, report, keep, start)
        if not fetched:
            report.behind_files += 1
            report.behind_bytes += entry.size
        elif pulled is not None:
            pulled[rel] = entry
        if fetched:
            report.fetched += 1
            report.bytes_fetched += entry.size - start
            report.fetched_paths.append(rel)
            if syncer.rules.decide_path(rel, False, entry.size) is Decision.SEND:
                adopt[rel] = entry
            if not named and rel.endswith(NOTEBOOK_SUFFIX) and not _in_outputs(rel, outputs):
                report.notebooks.append(rel)
        done_bytes += entry.size
        if progress is not None:
            progress(BatchProgress(index + 1, len(todo), done_bytes, total_bytes))
    if adopt:
        syncer.adopt(adopt)
    report.seconds = time.monotonic() - started
    return report


def _in_outputs(rel: str, outputs: list[str]) -> bool:
    return any(rel == o or rel.startswith(o + "/") for o in outputs)


def _host_notebooks(
    session: HostSession, syncer: Syncer, ancestor: dict[str, Entry], outputs: list[str]
) -> dict[str, Entry]:
    """Notebooks on the host outside the outputs that sync would carry and that the host created or changed
    since gpubox last synced them (what a default pull brings home)."""
    _result, blob = calls.manifest(session.agent, root=session.remote_dir, skip=outputs)
    found = {}
    for rel, entry in decode_manifest(blob, session.agent.host).items():
        if entry.kind != "f" or not rel.endswith(NOTEBOOK_SUFFIX) or entry.same(ancestor.get(rel)):
            continue
        if syncer.rules.decide_path(rel, False, entry.size) is Decision.SEND:
            found[rel] = entry
    return found


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


def _fetch(
    session: HostSession,
    rel: str,
    entry: Entry,
    target: Path,
    report: PullReport,
    keep: bool,
    start: int = 0,
) -> bool:
    try:
        return _fetch_into(session, rel, entry, target, report, keep, start)
    except OSError as exc:
        # A local file in the way of a folder, a full disk: this path fails, the pull goes on.
        report.errors.append(f"{rel}: {exc.strerror or exc}")
        return False


def _fetch_into(
    session: HostSession,
    rel: str,
    entry: Entry,
    target: Path,
    report: PullReport,
    keep: bool,
    start: int = 0,
) -> bool:
    """Fetch *rel* into a temp name next to *target*, then rename it over. With *start* (a growing log whose
    first *start* bytes the local copy already holds), those bytes are copied locally and only the rest is
    read, up to the size the host listed (a log may grow meanwhile: what it held then is whole)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.gpubox-pull-{os.getpid()}-{threading.get_ident()}")
    offset = start
    try:
        with open(temp, "wb") as handle:
            if start:
                with open(target, "rb") as local:
                    shutil.copyfileobj(local, handle, CHUNK)
                offset = handle.tell()
            while offset < entry.size or not start:
                want = CHUNK if not start else min(CHUNK, entry.size - offset)
                answer, data = calls.read(session.agent, root=session.remote_dir, files=[[rel, offset, want]])
                _path, facts, error, _count = answer["files"][0]
                if error:
                    report.errors.append(f"{rel}: {error}")
                    return False
                if start and facts[0] < entry.size:
                    report.errors.append(f"{rel}: shrank on the host while being pulled; pull again")
                    return False
                if not start and facts[1] != entry.mtime_ns:
                    report.errors.append(f"{rel}: changed on the host while being pulled; pull again")
                    return False
                handle.write(data)
                offset += len(data)
                if not data or (not start and offset >= facts[0]):
                    break
            if start and offset != entry.size:
                report.errors.append(f"{rel}: shrank on the host while being pulled; pull again")
                return False
        os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns))
        temp.chmod(0o755 if entry.executable else 0o644)
        if keep and os.path.lexists(target):
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
