"""Sync a project folder to one host: scan, plan against the ancestor, send batches, record what was acked."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.config import ProjectConfig
from gpubox.errors import GpuboxError, RemoteError
from gpubox.remote.agent import calls
from gpubox.state import open_state
from gpubox.sync.ignore import IgnoreRules
from gpubox.sync.plan import WIRE_CODES, MassDeletion, Op, Plan, check_mass_deletion, plan_changes
from gpubox.sync.scan import Entry, ScanResult, scan_path, scan_tree

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession

__all__ = ["BatchProgress", "MassDeletionRefused", "SyncReport", "Syncer", "decode_manifest", "rules_for"]

BATCH_BYTES = 8 * 1024 * 1024
PART_BYTES = 16 * 1024 * 1024
"""A file larger than this goes in pieces of this size (no frame to the agent may exceed its MAX_FRAME)."""
BATCH_OPS = 2000
PIPELINE_DEPTH = 3


def decode_manifest(blob: bytes, host: str) -> dict[str, Entry]:
    """The agent's manifest (zlib-compressed JSON rows); anything else from the channel is an AgentError."""
    from gpubox.errors import AgentError

    try:
        rows = json.loads(zlib.decompress(blob)) if blob else []
        found = {row[0]: Entry.from_row(row[1:]) for row in rows}
    except (zlib.error, ValueError, TypeError, KeyError, IndexError):
        raise AgentError(f"the agent on {host} sent a file listing gpubox cannot read") from None
    if not all(isinstance(path, str) for path in found):
        raise AgentError(f"the agent on {host} sent a file listing gpubox cannot read")
    return found


def rules_for(project: ProjectConfig) -> IgnoreRules:
    sync = project.sync
    return IgnoreRules(
        project.root,
        extra_ignores=sync.ignore,
        includes=sync.include,
        outputs=sync.outputs,
        max_file_size=int(sync.max_file_size_mb * 1024 * 1024),
    )


@dataclass(frozen=True)
class BatchProgress:
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


@dataclass
class SyncReport:
    """What one sync pass did; every list is worth telling the user about."""

    sent: int = 0
    bytes_sent: int = 0
    deleted: int = 0
    in_sync: int = 0
    seconds: float = 0.0
    conflicts: list[str] = field(default_factory=list)
    host_changed: list[str] = field(default_factory=list)
    kept_on_host: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)
    too_large: list[tuple[str, int]] = field(default_factory=list)
    outside_links: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    planned: list[Op] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.sent:,} sent ({_size(self.bytes_sent)})", f"{self.deleted:,} deleted"]
        if self.in_sync:
            parts.append(f"{self.in_sync:,} already there")
        for label, items in (
            ("conflicts kept on the host", self.conflicts),
            ("changed on the host, left alone", self.host_changed),
            ("errors", self.errors),
            ("unreadable", self.unreadable),
        ):
            if items:
                parts.append(f"{len(items)} {label}")
        return ", ".join(parts) + f" in {self.seconds:.2f} s"


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{count} B"


class Syncer:
    """Keeps one project folder mirrored on one host, one-way-safe."""

    def __init__(
        self,
        session: HostSession | Callable[[], HostSession],
        project: ProjectConfig,
        *,
        host_name: str | None = None,
        remote_dir: str | None = None,
        max_delete_count: int = 1000,
        max_delete_share: float = 0.5,
        trash_days: float = 7.0,
    ) -> None:
        """*session* may be a callable that connects: a pass with nothing to send then never connects."""
        self._session: HostSession | None = None
        self._connect: Callable[[], HostSession] | None = None
        # Not isinstance: importing HostSession would load paramiko before a no-op pass needs it.
        if callable(session):
            self._connect = session
            if host_name is None or remote_dir is None:
                raise TypeError("a lazily connected Syncer needs host_name and remote_dir")
        else:
            self._session = session
            host_name, remote_dir = session.host.name, session.remote_dir
        self.host_name = host_name
        self.project = project
        self.root = project.root
        self._root_text = str(project.root)
        self.rules = rules_for(project)
        self.remote_dir = remote_dir
        self.project_key = f"{self.root}|{self.remote_dir}"
        digest = hashlib.sha1(self.project_key.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        self.trash = f"{os.path.basename(self.remote_dir.rstrip('/')) or 'project'}-{digest}"
        self.max_delete_count = max_delete_count
        self.max_delete_share = max_delete_share
        self.trash_days = trash_days
        self._lock_path = paths.state_dir() / "locks" / f"sync-{host_name}-{digest}.lock"
        self._pending_path = self._lock_path.with_name(f"sync-{host_name}-{digest}.pending")
        """What a pass has sent but not yet seen acknowledged; left behind only by an interrupted pass."""
        self._ancestor: dict[str, Entry] | None = None
        self._mutex = threading.Lock()
        self._pruned = False

    @property
    def session(self) -> HostSession:
        if self._session is None:
            assert self._connect is not None
            self._session = self._connect()
        if not self._pruned:
            self._pruned = True
            self.prune_trash()
        return self._session

    @property
    def connected(self) -> bool:
        return self._session is not None

    # -- ancestor

    def ancestor(self) -> dict[str, Entry]:
        if self._ancestor is None:
            with open_state() as state:
                rows = state.ancestor(self.host_name, self.project_key)
            self._ancestor = {path: Entry(*row) for path, row in rows.items()}
        return self._ancestor

    def _record(self, upserts: dict[str, Entry], removals: Iterable[str]) -> None:
        removals = list(removals)
        with open_state() as state:
            state.update_ancestor(
                self.host_name,
                self.project_key,
                ((p, (e.kind, e.size, e.mtime_ns, e.executable, e.target)) for p, e in upserts.items()),
                removals,
            )
        ancestor = self.ancestor()
        ancestor.update(upserts)
        for path in removals:
            ancestor.pop(path, None)

    def forget(self) -> None:
        """Drop the ancestor (the next full sync compares with the host's manifest from scratch)."""
        with open_state() as state:
            state.forget_ancestor(self.host_name, self.project_key)
        self._ancestor = None

    # -- writes sent but not acknowledged
    #
    # A pass killed (or cut off) after the host applied a batch but before its answer was recorded leaves files on
    # the host that gpubox wrote but its ancestor does not know. Without a note of them, the next pass took them for
    # the host's own work and set each one aside as a conflict copy as soon as the local file changed again. So every
    # batch's entries are noted before it is sent, the note is removed when the pass ends, and a pass that finds a
    # note compares with the host and adopts the host copies that are exactly what gpubox sent.

    def _pending(self) -> dict[str, Entry]:
        """The note: one JSON line of {path: row} per batch, later lines winning; a torn last line is skipped."""
        found: dict[str, Entry] = {}
        try:
            lines = self._pending_path.read_text(errors="replace").splitlines()
        except OSError:
            return found
        for line in lines:
            try:
                found.update((str(path), Entry.from_row(row)) for path, row in json.loads(line).items())
            except (ValueError, TypeError, AttributeError, IndexError):
                continue
        return found

    def _note_pending(self, batch: dict[str, Entry]) -> None:
        paths.ensure_private_dir(self._pending_path.parent)
        with open(self._pending_path, "a") as handle:
            handle.write(json.dumps({path: entry.row() for path, entry in batch.items()}) + "\n")

    def _clear_pending(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pending_path.unlink()

    def _adopt_pending(
        self, remote: dict[str, Entry], *, dry_run: bool
    ) -> tuple[dict[str, Entry], dict[str, Entry]]:
        """The ancestor, plus what an interrupted pass wrote that the host still holds exactly as sent (also
        returned on its own)."""
        ancestor = self.ancestor()
        pending = self._pending()
        adopted = {
            path: entry
            for path, entry in pending.items()
            if entry.same(remote.get(path)) and not entry.same(ancestor.get(path))
        }
        if dry_run:
            return {**ancestor, **adopted}, adopted
        if adopted:
            self._record(adopted, [])
        if pending:
            self._clear_pending()
        return self.ancestor(), adopted

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One sync at a time per host and project, across threads and gpubox processes."""
        paths.ensure_private_dir(self._lock_path.parent)
        with self._mutex, open(self._lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # -- host side

    def remote_manifest(self) -> dict[str, Entry]:
        skip = [output.strip("/") for output in self.project.sync.outputs]
        _result, blob = calls.manifest(self.session.agent, root=self.remote_dir, skip=skip)
        return decode_manifest(blob, self.session.agent.host)

    def prune_trash(self) -> int:
        """Remove trash batches older than trash_days on the host (done once per connection)."""
        self._pruned = True
        return calls.prune_trash(self.session.agent, trash=self.trash, days=self.trash_days)

    # -- passes

    def full(
        self,
        *,
        dry_run: bool = False,
        allow_mass_delete: bool = False,
        verify: bool | None = None,
        progress: Callable[[BatchProgress], None] | None = None,
    ) -> SyncReport:
        """Scan everything, compare with the ancestor, send what differs.

        *verify* also compares with the host's own manifest (finds files changed or removed on the host behind
        gpubox's back); by default only when there is no ancestor yet. Without it, a pass that finds nothing to
        send does not even connect.
        """
        with self._exclusive():
            started = time.monotonic()
            self.rules.forget_all()
            scanned = scan_tree(self.root, self.rules)
            ancestor = self.ancestor()
            if verify is None:
                verify = not ancestor
            interrupted = self._pending_path.exists()
            remote = self.remote_manifest() if verify or interrupted else None
            adopted: dict[str, Entry] = {}
            if interrupted and remote is not None:
                ancestor, adopted = self._adopt_pending(remote, dry_run=dry_run)
            plan = plan_changes(
                scanned.entries, ancestor, remote, still_local=self._still_local(scanned, ancestor)
            )
            report = self._execute(plan, scanned, dry_run, allow_mass_delete, progress, started)
            # What the interrupted pass got there and local still holds: already there, like plan.in_sync.
            report.in_sync += sum(
                1 for path, entry in adopted.items() if entry.same(scanned.entries.get(path))
            )
            return report

    def paths(
        self,
        changed: Iterable[str],
        *,
        allow_mass_delete: bool = False,
        progress: Callable[[BatchProgress], None] | None = None,
    ) -> SyncReport:
        """Re-stat just *changed* (and what lies under them) and send what differs from the ancestor."""
        if self._pending_path.exists():  # an earlier pass was cut off: compare everything with the host first
            return self.full(verify=True, allow_mass_delete=allow_mass_delete, progress=progress)
        with self._exclusive():
            started = time.monotonic()
            ancestor = self.ancestor()
            scanned = ScanResult()
            candidates: set[str] = set()
            for path in _outermost(changed):
                scan_path(self.root, self.rules, path, scanned)
                candidates.add(path)
                prefix = path + "/"
                candidates.update(p for p in ancestor if p.startswith(prefix))
            candidates.update(scanned.entries)
            plan = plan_changes(
                scanned.entries,
                ancestor,
                None,
                paths=candidates,
                still_local=self._still_local(scanned, ancestor, candidates),
            )
            return self._execute(plan, scanned, False, allow_mass_delete, progress, started)

    def _still_local(
        self, scanned: ScanResult, ancestor: dict[str, Entry], candidates: Iterable[str] | None = None
    ) -> set[str]:
        """Tracked paths missing from the scan that still exist locally (now ignored): never deleted."""
        gone = [p for p in (candidates if candidates is not None else ancestor) if p not in scanned.entries]
        return {p for p in gone if p in scanned.skipped or os.path.lexists(os.path.join(self._root_text, p))}

    def _execute(
        self,
        plan: Plan,
        scanned: ScanResult,
        dry_run: bool,
        allow_mass_delete: bool,
        progress: Callable[[BatchProgress], None] | None,
        started: float,
    ) -> SyncReport:
        report = SyncReport(
            held_back=sorted(scanned.held_back),
            too_large=sorted(scanned.too_large),
            outside_links=sorted(scanned.outside_links),
            unreadable=sorted(scanned.unreadable),
            host_changed=plan.host_changed,
            planned=plan.ops,
            in_sync=len(plan.in_sync),
        )
        if not allow_mass_delete:
            tracked = sum(1 for entry in self.ancestor().values() if entry.kind != "d")
            try:
                check_mass_deletion(
                    plan, tracked, max_count=self.max_delete_count, max_share=self.max_delete_share
                )
            except MassDeletion as exc:
                raise MassDeletionRefused(exc.deleting, exc.tracked) from None
        if dry_run:
            report.seconds = time.monotonic() - started
            return report
        if plan.in_sync or plan.untrack:
            self._record(plan.in_sync, plan.untrack)
        if plan.ops:
            self._send(plan.ops, report, progress)
        report.seconds = time.monotonic() - started
        return report

    def _batches(
        self, ops: list[Op], report: SyncReport
    ) -> Iterator[tuple[list[Op], list[dict[str, Any]], bytes]]:
        batch: list[Op] = []
        wire: list[dict[str, Any]] = []
        chunks: list[bytes] = []
        size = 0
        for op in ops:
            item: dict[str, Any] = {
                "o": WIRE_CODES[op.kind],
                "p": op.path,
                "e": op.expect.row() if op.expect else None,
            }
            if op.kind == "write":
                content = self._read(op, report)
                if content is None:
                    continue
                data, entry = content
                op = Op(op.kind, op.path, entry, op.expect)
                item.update(n=entry.size, m=entry.mtime_ns, x=entry.executable)
                chunks.append(data)
                size += len(data)
            elif op.kind == "link" and op.entry is not None:
                item["t"] = op.entry.target
            batch.append(op)
            wire.append(item)
            if size >= BATCH_BYTES or len(batch) >= BATCH_OPS:
                yield batch, wire, b"".join(chunks)
                batch, wire, chunks, size = [], [], [], 0
        if batch:
            yield batch, wire, b"".join(chunks)

    def _read(self, op: Op, report: SyncReport) -> tuple[bytes, Entry] | None:
        """The file's bytes and the facts that go with exactly those bytes (it may have changed since the scan)."""
        try:
            fd = os.open(os.path.join(self._root_text, op.path), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        try:
            before = os.fstat(fd)
            data = _read_all(fd, before.st_size)
            after = os.fstat(fd)
        except OSError as exc:
            report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        finally:
            os.close(fd)
        # Sent with the mtime read after the bytes: a write racing the read shows up as a later change.
        return data, Entry(
            "f", len(data), min(before.st_mtime_ns, after.st_mtime_ns), bool(after.st_mode & 0o100)
        )

    def _send(
        self, ops: list[Op], report: SyncReport, progress: Callable[[BatchProgress], None] | None
    ) -> None:
        files_total = len(ops)
        bytes_total = sum(op.entry.size for op in ops if op.kind == "write" and op.entry is not None)
        done_files = 0
        done_bytes = 0
        sent_batches: list[list[Op]] = []
        large = [
            op for op in ops if op.kind == "write" and op.entry is not None and op.entry.size > PART_BYTES
        ]
        small = [op for op in ops if op not in large]

        def note(batch: list[Op]) -> None:
            self._note_pending({op.path: op.entry for op in batch if op.entry is not None})

        def wires() -> Iterator[tuple[list[dict[str, Any]], bytes]]:
            for batch, wire, blob in self._batches(small, report):
                sent_batches.append(batch)
                note(batch)
                yield wire, blob

        answers = calls.apply_batches(
            self.session.agent, wires(), root=self.remote_dir, trash=self.trash, depth=PIPELINE_DEPTH
        )
        for index, result in enumerate(answers):
            batch = sent_batches[index]
            upserts, removals = self._absorb(batch, result, report)
            self._record(upserts, removals)
            done_files += len(batch)
            done_bytes += sum(op.entry.size for op in batch if op.kind == "write" and op.entry is not None)
            if progress is not None:
                progress(BatchProgress(done_files, files_total, done_bytes, bytes_total))
        for op in large:
            sent = self._send_large(op, report, note)
            if sent is not None:
                upserts, removals = self._absorb([sent[0]], sent[1], report)
                self._record(upserts, removals)
            done_files += 1
            done_bytes += op.entry.size if op.entry is not None else 0
            if progress is not None:
                progress(BatchProgress(done_files, files_total, done_bytes, bytes_total))
        self._clear_pending()

    def _send_large(
        self, op: Op, report: SyncReport, note: Callable[[list[Op]], None] = lambda batch: None
    ) -> tuple[Op, calls.ApplyAnswer] | None:
        """A file too large for one frame: its bytes go in pieces into a staging file on the host (never all in
        memory at once), then one `apply` puts it in place with the same just-in-time checks as any write."""
        agent = self.session.agent
        try:
            fd = os.open(os.path.join(self._root_text, op.path), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        name: str | None = None
        size = 0
        try:
            before = os.fstat(fd)
            while True:
                piece = os.pread(fd, PART_BYTES, size)
                if piece or name is None:
                    name = calls.stage(agent, root=self.remote_dir, name=name, offset=size, blob=piece)
                    size += len(piece)
                if len(piece) < PART_BYTES:
                    break
            after = os.fstat(fd)
        except OSError as exc:
            report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        finally:
            os.close(fd)
        # As for small files: the mtime read after the bytes, so a write racing the read shows up as a change.
        entry = Entry("f", size, min(before.st_mtime_ns, after.st_mtime_ns), bool(after.st_mode & 0o100))
        item = {
            "o": WIRE_CODES["write"],
            "p": op.path,
            "e": op.expect.row() if op.expect else None,
            "n": entry.size,
            "m": entry.mtime_ns,
            "x": entry.executable,
            "s": name,
        }
        sent = Op(op.kind, op.path, entry, op.expect)
        note([sent])
        result = calls.apply(agent, root=self.remote_dir, trash=self.trash, ops=[item])
        return sent, result

    def _absorb(
        self, batch: list[Op], result: calls.ApplyAnswer, report: SyncReport
    ) -> tuple[dict[str, Entry], list[str]]:
        outcomes = result.get("results")
        if not isinstance(outcomes, list) or len(outcomes) != len(batch):
            raise RemoteError("the agent's answer to a sync batch does not match the batch")
        upserts: dict[str, Entry] = {}
        removals: list[str] = []
        report.conflicts += [str(c) for c in result.get("conflicts", [])]
        for op, outcome in zip(batch, outcomes, strict=True):
            status = outcome[0] if outcome else "error"
            if status in ("ok", "same", "conflict") and op.entry is not None:
                upserts[op.path] = op.entry
                if status != "same":
                    report.sent += 1
                    if op.kind == "write":
                        report.bytes_sent += op.entry.size
            elif status in ("ok", "gone") and op.entry is None:
                removals.append(op.path)
                report.deleted += status == "ok"
            elif status == "kept":
                removals.append(op.path)
                report.kept_on_host.append(op.path)
            else:
                report.errors.append(outcome[1] if len(outcome) > 1 else f"{op.path}: failed")
        return upserts, removals


class MassDeletionRefused(GpuboxError):
    """Raised instead of deleting many host files at once; the command line asks or says how to go on."""

    def __init__(self, deleting: int, tracked: int) -> None:
        super().__init__(
            f"sync paused: it would delete {deleting} of {tracked} tracked files on the host (a wiped folder or "
            f"a wrong checkout?); check the project folder, then re-run with --allow-mass-delete to go on"
        )
        self.deleting = deleting
        self.tracked = tracked


def _read_all(fd: int, expected: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, max(expected, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _outermost(changed: Iterable[str]) -> list[str]:
    """Drop paths that lie under another changed path: rescanning the folder covers them."""
    unique = set(changed)

    def covered(path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:depth]) in unique for depth in range(1, len(parts)))

    return sorted(path for path in unique if not covered(path))
