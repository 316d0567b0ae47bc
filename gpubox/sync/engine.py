"""Sync a project folder to one host: scan, plan against the ancestor, send batches, record what was acked."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.config import ProjectConfig
from gpubox.errors import RemoteError
from gpubox.remote.agent import calls
from gpubox.state import open_state
from gpubox.sync.ancestor_copy import AncestorCopy
from gpubox.sync.folder_index import FolderIndex, add_unchanged
from gpubox.sync.ignore import rules_for
from gpubox.sync.pending import PendingNote, rewrite, rewritten
from gpubox.sync.plan import (
    WIRE_CODES,
    FactsIndex,
    Op,
    Plan,
    RecentTrash,
    WipeGuard,
    differing,
    hold_deletions,
    outermost,
    pair_moves,
    plan_changes,
    tracked_under,
    wipe_reason,
)
from gpubox.sync.report import BatchProgress, DeletionsHeld, SyncReport
from gpubox.sync.scan import (
    VCS_FOLDERS,
    Entry,
    ScanResult,
    decode_manifest,
    open_to_read,
    read_upto,
    scan_path,
    scan_tree,
    still_local,
)

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession

__all__ = ["BatchProgress", "DeletionsHeld", "SyncReport", "Syncer"]

BATCH_BYTES = 8 * 1024 * 1024
PART_BYTES = 32 * 1024 * 1024
"""A file larger than this goes in pieces of this size (no frame to the agent may exceed its MAX_FRAME, 64 MiB:
a batch closes at BATCH_BYTES, so it holds at most BATCH_BYTES + PART_BYTES). Smaller ones ride the pipelined
batches; the pieces of a larger one each wait for their answer."""
BATCH_OPS = 2000
PIPELINE_DEPTH = 3


class Syncer:
    """Keeps one project folder mirrored on one host, one-way-safe."""

    def __init__(
        self,
        session: HostSession | Callable[[], HostSession],
        project: ProjectConfig,
        *,
        host_name: str | None = None,
        remote_dir: str | None = None,
        guard: WipeGuard | None = None,
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
        self.guard = guard or WipeGuard()
        self.trash_days = trash_days
        self._lock_path = paths.state_dir() / "locks" / f"sync-{host_name}-{digest}.lock"
        self._note = PendingNote(self._lock_path.with_name(f"sync-{host_name}-{digest}.pending"))
        """What a pass has sent but not yet seen made durable; left behind only by an interrupted pass."""
        self._ancestor: dict[str, Entry] | None = None
        self._generation: int | None = None
        """The ancestor's generation in the database that :attr:`_ancestor` is (None: not known)."""
        self._copy = AncestorCopy(
            self._lock_path.with_name(f"sync-{host_name}-{digest}.ancestor"), host_name, self.project_key
        )
        self._index = FolderIndex(
            self._lock_path.with_name(f"sync-{host_name}-{digest}.folders"),
            host_name,
            self.project_key,
            project.sync,
        )
        self._mutex = threading.Lock()
        self._pruned = False
        self._token = os.urandom(6).hex()
        self._writes = 0
        self._stamp: str | None = None
        """The lock file's content after this Syncer last wrote the ancestor (or first read it)."""
        self._wrote = False
        self.held: dict[str, Entry] = {}
        """Deletions held back (path -> the ancestor's entry) until confirmed or no longer a wipe."""
        self.held_reason: str | None = None
        self._checkouts: set[str] = set()
        """Folders seen holding a .git/.hg/.svn: one vanishing with its files is a wipe."""
        self._trashed = RecentTrash()
        self._by_facts: FactsIndex | None = None
        self._fallback: list[Op] = []
        self._grown: list[Op] = []

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
            self._ancestor, self._generation = self._load_ancestor()
        return self._ancestor

    def _load_ancestor(self) -> tuple[dict[str, Entry], int | None]:
        with open_state() as state:
            generation = state.ancestor_generation(self.host_name, self.project_key)
            if generation is not None:
                copy = self._copy.read(generation)
                if copy is not None:
                    return copy, generation
            rows, generation = state.ancestor_at(self.host_name, self.project_key)
        return {path: Entry._make(row) for path, row in rows.items()}, generation

    def _record(self, upserts: dict[str, Entry], removals: Iterable[str]) -> None:
        removals = list(removals)
        if not upserts and not removals:
            return
        self._wrote = True
        with open_state() as state:
            before, after = state.update_ancestor(
                self.host_name,
                self.project_key,
                ((p, (e.kind, e.size, e.mtime_ns, e.executable, e.target)) for p, e in upserts.items()),
                removals,
            )
        # What this Syncer holds is that generation only if nobody else changed the rows since it read them.
        self._generation = after if self._ancestor is not None and before == self._generation else None
        ancestor = self.ancestor()
        if self._by_facts is not None:
            self._by_facts.update(ancestor, upserts, removals)
        ancestor.update(upserts)
        for path in removals:
            ancestor.pop(path, None)

    def _facts_index(self) -> FactsIndex:
        if self._by_facts is None:
            self._by_facts = FactsIndex(self.ancestor())
        return self._by_facts

    def _unannounced_origins(self, scanned: ScanResult, candidates: set[str]) -> set[str]:
        """Tracked files gone from the folder that a new file of this batch may have been moved from, though no
        event named them yet: inotify tells of a folder moved into a folder made a moment before as a creation
        now and a deletion half a second later. Their parent folders that are gone too come with them."""
        ancestor = self.ancestor()
        new = [e for p, e in scanned.entries.items() if e.kind == "f" and p not in ancestor]
        if not new:
            return set()
        index = self._facts_index()
        found: set[str] = set()
        for entry in new:
            for path in index.get(entry.facts):
                if (
                    path in candidates
                    or path in found
                    or os.path.lexists(os.path.join(self._root_text, path))
                ):
                    continue
                found.add(path)
                parent = path.rpartition("/")[0]
                while parent and parent in ancestor and parent not in candidates | found:
                    if os.path.lexists(os.path.join(self._root_text, parent)):
                        break
                    found.add(parent)
                    parent = parent.rpartition("/")[0]
        return found

    def forget(self) -> None:
        """Drop the ancestor (the next full sync compares with the host's manifest from scratch)."""
        with self._exclusive():
            with open_state() as state:
                state.forget_ancestor(self.host_name, self.project_key)
            self._ancestor = None
            self._by_facts = None
            self._wrote = True
            self.held = {}

    def adopt(self, entries: Mapping[str, Entry]) -> None:
        """Record that the host and the local folder both hold *entries* now (a pull brought them home)."""
        with self._exclusive():
            self._record(dict(entries), [])
            for path in entries:
                self.held.pop(path, None)

    def changed_elsewhere(self) -> bool:
        """Whether another gpubox (or another Syncer) wrote this project's ancestor since this one last looked:
        a cheap read of the lock file, for a watcher that must not trust what it remembers."""
        if self._stamp is None or self._mutex.locked():
            return False
        try:
            return self._lock_path.read_text(errors="replace") != self._stamp
        except OSError:
            return False

    # -- writes sent but not yet safe on the host (see gpubox/sync/pending.py)

    def _boot(self) -> str | None:
        return self.session.agent.hello.get("boot_id")

    def _flush(self, pending: Iterable[str] = ()) -> None:
        """Have the host make durable what this pass (and, *pending*, an interrupted one) wrote; then nothing
        of it needs the note any more."""
        calls.flush(self.session.agent, root=self.remote_dir, paths=sorted(pending) or None)
        self._note.clear()

    def _adopt_pending(
        self, remote: dict[str, Entry], *, dry_run: bool
    ) -> tuple[dict[str, Entry], dict[str, Entry], dict[str, Entry]]:
        """(the ancestor plus what an interrupted pass wrote that the host still holds exactly as sent, those
        adopted entries alone, the suspect ones). After a reboot of the host since those writes, none of them is
        trusted, whatever the host's copy looks like (a crash can leave a file with the right size and mtime
        but not its bytes): they are returned as suspect, to be written again, and nothing is adopted."""
        ancestor = self.ancestor()
        pending, boots = self._note.read()
        boot = self._boot()
        if pending and (boot is None or boots != {boot}):
            return ancestor, {}, pending
        adopted = {
            path: entry
            for path, entry in pending.items()
            if entry.same(remote.get(path)) and not entry.same(ancestor.get(path))
        }
        if dry_run:
            return {**ancestor, **adopted}, adopted, {}
        if adopted:
            self._record(adopted, [])
        self._flush(pending)
        return self.ancestor(), adopted, {}

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One sync at a time per host and project, across threads and gpubox processes.

        The lock file also says who last wrote the ancestor: a Syncer that finds someone else's stamp there (a
        `gpubox sync`, `pull` or `run` in another terminal) reads the ancestor again instead of trusting memory.
        """
        paths.ensure_private_dir(self._lock_path.parent)
        with self._mutex, open(self._lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            found = handle.read()
            if found != self._stamp:
                self._reload()
                self._stamp = found
            self._wrote = False
            try:
                yield
            finally:
                if self._wrote:
                    self._writes += 1
                    self._stamp = f"{self._token} {self._writes}"
                    handle.seek(0)
                    handle.truncate()
                    handle.write(self._stamp)
                    handle.flush()

    def _reload(self) -> None:
        """Read the ancestor anew; held deletions the new ancestor no longer backs are let go."""
        self._ancestor = None
        self._by_facts = None
        if self.held:
            ancestor = self.ancestor()
            self.held = {path: entry for path, entry in self.held.items() if ancestor.get(path) == entry}
            if not self.held:
                self.held_reason = None

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
        send does not even connect. Deletions that look like a wipe are held back (:attr:`held`) unless
        *allow_mass_delete*; everything else goes.
        """
        with self._exclusive():
            started = time.monotonic()
            self.rules.forget_all()
            known = None if verify else self._index.current()
            scanned = scan_tree(
                self.root,
                self.rules,
                split=True,
                meanwhile=None if known else self.ancestor,
                index=known or {},
                token=self._index.token,
            )
            owed = (
                scanned.relisted
                or scanned.unreadable
                or scanned.too_large
                or self.held
                or self._note.exists()
            )
            if known and not owed:
                # Every folder holds what the index says, so the project holds the ancestor, which the host held.
                self._checkouts = set(scanned.checkouts)
                report = SyncReport(
                    held_back=sorted(scanned.held_back), outside_links=sorted(scanned.outside_links)
                )
                report.seconds = time.monotonic() - started
                return report
            ancestor = self.ancestor()
            add_unchanged(scanned.unchanged, scanned.entries, ancestor)
            if verify is None:
                verify = not ancestor
            interrupted = self._note.exists()
            remote = self.remote_manifest() if verify or interrupted else None
            adopted: dict[str, Entry] = {}
            suspect: dict[str, Entry] = {}
            if interrupted and remote is not None:
                ancestor, adopted, suspect = self._adopt_pending(remote, dry_run=dry_run)
                # A suspect host copy of a local file is as good as none: the file is written again.
                remote = {p: e for p, e in remote.items() if not rewritten(p, suspect, scanned.entries)}
            untrack, leave = still_local(
                self.root, self.rules, ancestor.keys() - scanned.entries.keys(), scanned
            )
            plan = plan_changes(
                scanned.entries,
                ancestor,
                remote,
                paths=None if remote is not None else differing(scanned.entries, ancestor),
                still_local=untrack,
                leave_alone=leave,
            )
            if suspect:
                plan.ops = [rewrite(op, suspect) for op in plan.ops]
            report = self._execute(plan, scanned, dry_run, allow_mass_delete, progress, started)
            if suspect and not dry_run and self._note.exists():
                self._flush(suspect)  # nothing was sent: what the host holds of them is what must last
            if self._ancestor is not None and self._generation is not None:
                self._copy.keep(self._ancestor, self._generation)
                if not dry_run and not report.errors and self._ancestor and self._ancestor == scanned.entries:
                    self._index.keep(scanned.records, self._generation)
            report.verified = remote is not None
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
        verify: bool = False,
    ) -> SyncReport:
        """Re-stat just *changed* (and what lies under them) and send what differs from the ancestor. *verify*:
        also every tracked path where the host's listing differs from the ancestor, planned against that listing
        (what ``full(verify=True)`` finds, when a watcher has just sent every local change: its flush barrier)."""
        if self._note.exists():  # an earlier pass was cut off: compare everything with the host first
            return self.full(verify=True, allow_mass_delete=allow_mass_delete, progress=progress)
        with self._exclusive():
            started = time.monotonic()
            ancestor = self.ancestor()
            remote = self.remote_manifest() if verify else None
            if remote is not None:
                changed = [*changed, *(p for p, entry in ancestor.items() if not entry.same(remote.get(p)))]
            scanned = ScanResult()
            candidates: set[str] = set()
            outer = outermost(changed)
            for path in outer:
                scan_path(self.root, self.rules, path, scanned)
            candidates.update(outer, tracked_under(outer, ancestor), scanned.entries)
            candidates |= self._unannounced_origins(scanned, candidates)
            gone = [path for path in candidates if path not in scanned.entries]
            untrack, leave = still_local(self.root, self.rules, gone, scanned)
            plan = plan_changes(
                scanned.entries,
                ancestor,
                remote,
                paths=candidates,
                still_local=untrack,
                leave_alone=leave,
            )
            report = self._execute(
                plan, scanned, False, allow_mass_delete, progress, started, covered=candidates
            )
            report.verified = remote is not None
            return report

    def release(self, progress: Callable[[BatchProgress], None] | None = None) -> SyncReport:
        """Carry out the deletions held back (the user confirmed them): into the host's trash, as any other."""
        return self.paths(list(self.held), allow_mass_delete=True, progress=progress)

    def push(
        self, names: Iterable[str], progress: Callable[[BatchProgress], None] | None = None
    ) -> SyncReport:
        """Send the local copy of each named path (and what lies under a folder) where the host's differs, even
        when it changed on the host: local wins, and the host's copy goes to the host's trash, not lost."""
        with self._exclusive():
            started = time.monotonic()
            names = outermost(names)
            scanned = ScanResult()
            for name in names:
                scan_path(self.root, self.rules, name, scanned)
            _result, blob = calls.manifest(self.session.agent, root=self.remote_dir, only=names)
            remote = decode_manifest(blob, self.session.agent.host)
            ancestor = self.ancestor()
            ops: list[Op] = []
            in_sync: dict[str, Entry] = {}
            for path, entry in scanned.entries.items():
                there = remote.get(path)
                if entry.same(there):
                    if not entry.same(ancestor.get(path)):
                        in_sync[path] = entry
                    continue
                kind = {"f": "write", "l": "link", "d": "mkdir"}[entry.kind]
                ops.append(Op(kind, path, entry, ancestor.get(path), force=True))  # type: ignore[arg-type]
            ops.sort(key=lambda op: (op.kind != "mkdir", op.path.count("/"), op.path))
            report = SyncReport(
                too_large=sorted(scanned.too_large),
                held_back=sorted(scanned.held_back),
                unreadable=sorted(scanned.unreadable),
                outside_links=sorted(scanned.outside_links),
                in_sync=len(in_sync),
                planned=ops,
                verified=True,
            )
            self._record(in_sync, [])
            if ops:
                self._send(ops, report, progress)
            report.seconds = time.monotonic() - started
            return report

    def _vanished_checkouts(self) -> set[str]:
        return {
            folder
            for folder in self._checkouts
            if not any(os.path.lexists(os.path.join(self._root_text, folder, name)) for name in VCS_FOLDERS)
        }

    def _execute(
        self,
        plan: Plan,
        scanned: ScanResult,
        dry_run: bool,
        allow_mass_delete: bool,
        progress: Callable[[BatchProgress], None] | None,
        started: float,
        *,
        covered: set[str] | None = None,
    ) -> SyncReport:
        """Pair moves, hold back a wipe's deletions, record what needs no sending, send the rest. *covered*: the
        paths a live pass looked at (None: a full pass, which saw everything)."""
        ancestor = self.ancestor()
        if any(op.kind == "write" and op.expect is None for op in plan.ops):
            pair_moves(plan, ancestor, self._trashed.recent())
        earlier = {p: e for p, e in self.held.items() if covered is not None and p not in covered}
        vanished = self._vanished_checkouts()
        reason = None
        if not allow_mass_delete:
            reason = wipe_reason(
                plan, ancestor, self.guard, gone_already=earlier, vanished_checkouts=vanished
            )
            if reason is not None:
                hold_deletions(plan)
        held = {**earlier, **{op.path: op.expect for op in plan.held if op.expect is not None}}
        report = SyncReport(
            held_back=sorted(scanned.held_back),
            too_large=sorted(scanned.too_large),
            too_large_kept=sorted(path for path, _size in scanned.too_large if path in ancestor),
            outside_links=sorted(scanned.outside_links),
            unreadable=sorted(scanned.unreadable),
            host_changed=plan.host_changed,
            planned=plan.ops + plan.held,
            in_sync=len(plan.in_sync),
            held_deletions=sorted(path for path, entry in held.items() if entry.kind != "d"),
            held_reason=reason or (self.held_reason if earlier else None),
        )
        if dry_run:
            report.seconds = time.monotonic() - started
            return report
        self.held, self.held_reason = held, report.held_reason if held else None
        # A checkout that vanished stays remembered until a full pass finds nothing of it left to delete, or
        # the user lets its deletions go.
        if covered is None:
            self._checkouts = scanned.checkouts | (vanished if reason else set())
        elif allow_mass_delete:
            self._checkouts = (self._checkouts - vanished) | scanned.checkouts
        else:
            self._checkouts |= scanned.checkouts
        if plan.in_sync or plan.untrack:
            self._record(plan.in_sync, plan.untrack)
        if plan.ops:
            self._send(plan.ops, report, progress)
        report.seconds = time.monotonic() - started
        return report

    # -- sending

    def _limit(self, path: str) -> int | None:
        """The size a file may have when it is read (None: no limit, or the file is listed in [sync] include)."""
        limit = self.rules.max_file_size
        return None if limit is None or self.rules.included(path) else limit

    def _too_large(self, op: Op, size: int, report: SyncReport) -> None:
        """A file found over the limit when read: nothing of it is sent; a tracked one keeps its host copy."""
        report.too_large.append((op.path, size))
        if op.path in self.ancestor():
            report.too_large_kept.append(op.path)

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
            if op.force:
                item["r"] = 1
            if op.rewrite:
                item["a"] = 1
            if op.kind == "write":
                content = self._read(op, report)
                if content is None:
                    continue
                data, entry = content
                op = Op(op.kind, op.path, entry, op.expect, force=op.force, rewrite=op.rewrite)
                item.update(n=entry.size, m=entry.mtime_ns, x=entry.executable)
                chunks.append(data)
                size += len(data)
            elif op.kind == "move":
                digest = self._local_digest(op, report)
                if digest is None:
                    continue
                assert op.entry is not None
                item.update(n=op.entry.size, m=op.entry.mtime_ns, x=op.entry.executable, h=digest)
                item["T" if op.from_trash else "f"] = op.source
            elif op.kind == "link" and op.entry is not None:
                item["t"] = op.entry.target
            batch.append(op)
            wire.append(item)
            if size >= BATCH_BYTES or len(batch) >= BATCH_OPS:
                yield batch, wire, b"".join(chunks)
                batch, wire, chunks, size = [], [], [], 0
        if batch:
            yield batch, wire, b"".join(chunks)

    def _local_digest(self, op: Op, report: SyncReport) -> str | None:
        """The SHA-256 of a move's local file, read only if it still has the facts the move was paired on;
        otherwise the move becomes a write and a delete (sent after this round)."""
        digest = hashlib.sha256()
        try:
            fd = open_to_read(os.path.join(self._root_text, op.path))
        except OSError:
            self._unpair(op)
            return None
        try:
            before = os.fstat(fd)
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
            after = os.fstat(fd)
        except OSError:
            self._unpair(op)
            return None
        finally:
            os.close(fd)
        now = Entry("f", after.st_size, after.st_mtime_ns, bool(after.st_mode & 0o100))
        if before.st_mtime_ns != after.st_mtime_ns or not now.same(op.entry):
            self._unpair(op)
            return None
        return digest.hexdigest()

    def _unpair(self, move: Op) -> None:
        """A move that cannot be one: the new file is written, its origin deleted as any deletion would be."""
        self._fallback.append(Op("write", move.path, move.entry, None))
        if not move.from_trash:
            self._fallback.append(Op("delete", move.source, None, move.expect))

    def _read(self, op: Op, report: SyncReport) -> tuple[bytes, Entry] | None:
        """The file's bytes and the facts that go with exactly those bytes (it may have changed since the scan).

        The size limit holds at this moment: a file over it (grown since the scan) is not sent at all. A file
        grown past one frame is sent in pieces instead (after this round)."""
        try:
            fd = open_to_read(os.path.join(self._root_text, op.path))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        limit = self._limit(op.path)
        cap = PART_BYTES if limit is None else min(limit, PART_BYTES)
        try:
            before = os.fstat(fd)
            if limit is not None and before.st_size > limit:
                self._too_large(op, before.st_size, report)
                return None
            data = read_upto(fd, cap + 1, before.st_size)
            after = os.fstat(fd)
        except OSError as exc:
            report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        finally:
            os.close(fd)
        if len(data) > cap:
            if limit is not None and max(len(data), after.st_size) > limit:
                self._too_large(op, max(len(data), after.st_size), report)
            else:
                self._grown.append(op)
            return None
        # Sent with the mtime read after the bytes: a write racing the read shows up as a later change.
        return data, Entry(
            "f", len(data), min(before.st_mtime_ns, after.st_mtime_ns), bool(after.st_mode & 0o100)
        )

    def _send(
        self, ops: list[Op], report: SyncReport, progress: Callable[[BatchProgress], None] | None
    ) -> None:
        """Send *ops* in pipelined batches, then what could not go that way: files grown past one frame, and
        moves the host could not make (sent as writes and deletes in a second round)."""
        self._fallback, self._grown = [], []
        total_files = len(ops)
        total_bytes = sum(op.entry.size for op in ops if op.kind == "write" and op.entry is not None)
        done = [0, 0]

        def step(batch: list[Op]) -> None:
            done[0] += len(batch)
            done[1] += sum(op.entry.size for op in batch if op.kind == "write" and op.entry is not None)
            if progress is not None:
                progress(BatchProgress(done[0], total_files, done[1], total_bytes))

        self._send_round(ops, report, step)
        if self._fallback:
            again, self._fallback = self._fallback, []
            self._send_round(again, report, lambda batch: None)
        self._flush()

    def _send_round(self, ops: list[Op], report: SyncReport, step: Callable[[list[Op]], None]) -> None:
        sent_batches: list[list[Op]] = []
        large = [
            op for op in ops if op.kind == "write" and op.entry is not None and op.entry.size > PART_BYTES
        ]
        small = [op for op in ops if op not in large]

        boot = self._boot()

        def note(batch: list[Op]) -> None:
            self._note.note({op.path: op.entry for op in batch if op.entry is not None}, boot)

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
            step(batch)
        grown, self._grown = self._grown, []
        for op in large + grown:
            sent = self._send_large(op, report, note)
            if sent is not None:
                upserts, removals = self._absorb([sent[0]], sent[1], report)
                self._record(upserts, removals)
            step([op])

    def _send_large(
        self, op: Op, report: SyncReport, note: Callable[[list[Op]], None] = lambda batch: None
    ) -> tuple[Op, calls.ApplyAnswer] | None:
        """A file too large for one frame: its bytes go in pieces into a staging file on the host (never all in
        memory at once), then one `apply` puts it in place with the same just-in-time checks as any write. A
        file that grows past the size limit while it is read is abandoned and its staged pieces discarded."""
        agent = self.session.agent
        try:
            fd = open_to_read(os.path.join(self._root_text, op.path))
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                report.unreadable.append((op.path, exc.strerror or str(exc)))
            return None
        limit = self._limit(op.path)
        name: str | None = None
        size = 0
        try:
            before = os.fstat(fd)
            if limit is not None and before.st_size > limit:
                self._too_large(op, before.st_size, report)
                return None
            while True:
                piece = os.pread(fd, PART_BYTES, size)
                if limit is not None and size + len(piece) > limit:
                    if name is not None:
                        calls.discard_staged(agent, root=self.remote_dir, name=name)
                    self._too_large(op, max(size + len(piece), os.fstat(fd).st_size), report)
                    return None
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
        if op.force:
            item["r"] = 1
        if op.rewrite:
            item["a"] = 1
        sent = Op(op.kind, op.path, entry, op.expect, force=op.force, rewrite=op.rewrite)
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
            if op.kind == "move" and op.entry is not None:
                if op.from_trash:
                    self._trashed.forget(op.source.split("/", 1)[-1])
                if status in ("ok", "same", "conflict"):
                    upserts[op.path] = op.entry
                    if not op.from_trash:
                        removals.append(op.source)
                    report.moved += 1
                elif status == "miss":
                    self._unpair(op)
                else:
                    report.errors.append(outcome[1] if len(outcome) > 1 else f"{op.path}: failed")
            elif status in ("ok", "same", "conflict") and op.entry is not None:
                upserts[op.path] = op.entry
                if status != "same":
                    report.sent += 1
                    if op.kind == "write":
                        report.bytes_sent += op.entry.size
            elif status in ("ok", "gone") and op.entry is None:
                removals.append(op.path)
                report.deleted += status == "ok" and op.kind == "delete"  # files; folders go with them
                if status == "ok" and len(outcome) > 1 and op.expect is not None:
                    self._trashed.remember(op.path, op.expect, str(outcome[1]))
            elif status == "kept":
                removals.append(op.path)
                report.kept_on_host.append(op.path)
            else:
                report.errors.append(outcome[1] if len(outcome) > 1 else f"{op.path}: failed")
        return upserts, removals
