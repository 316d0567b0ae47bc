"""Live sync: watchdog marks paths dirty, a debounced worker sends them, full rescans catch what it loses.

Events are hints, never data: every batch re-stats the paths it was told about (editor safe-writes, renames and
branch switches all end as "these paths changed"). A full rescan runs at start, after a reconnect, every
``rescan_seconds``, and at once when inotify reports a queue overflow; if inotify cannot watch the tree at all
(out of watches), periodic rescans alone keep the host in step. Those rescans also read the host's listing, so
files edited there are found and reported.

The watcher never trusts its memory of what the host holds: when another gpubox (`sync`, `pull`, `push`, `run`
in another terminal) wrote this project's sync record, it rescans against the record and the host. That is also
how deletions held back as a wipe are let go from another terminal (`gpubox sync --allow-mass-delete`).

The flush barrier (:meth:`LiveSync.flush`, asked for by `gpubox run` and `gpubox sync` through the holder's control
socket): everything saved before it was asked is on the host when it answers, without a scan. Events arrive late
(the kernel queues them, watchdog's threads pass them on), so "nothing dirty now" proves nothing. Like Watchman's
cookies, the barrier creates a marker file in the project folder and waits until the watcher hears of it: inotify
keeps one queue per watcher, in order, so every change made before the marker has been marked dirty by then. It
then waits until a batch taken after that point has succeeded (a pass owed to an overflow, a reconnect or a
refused batch included), and answers with what those batches did.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from watchdog.events import (
    DirAttribEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from gpubox.errors import AgentError, GpuboxError, HostUnreachable, RemoteError
from gpubox.sync.engine import Syncer, SyncReport
from gpubox.sync.ignore import IGNORE_FILES, relative

__all__ = ["LiveSync", "WatchSettings"]

_OVERFLOW_TEXT = "queue overflowed"
FLUSH_MARKER = ".gpubox-flush-"
"""Start of the name of the marker file of a flush barrier, in the project folder (never synced: a built-in
ignore of gpubox/sync/ignore.py)."""
MARKER_SECONDS = 5.0
"""How long a flush waits for the watcher to hear of its marker before it gives up (the caller then syncs on its
own): inotify delivers within milliseconds, so this only ends a barrier whose marker was lost (a queue overflow)."""
ELSEWHERE = "changed by another gpubox"
# Only events that can change what is sent. Opens and no-write closes are not even asked of inotify: sync reads
# every file it sends, and those two events per file would fill the kernel queue and force endless rescans.
_WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileAttribEvent,
    DirAttribEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]
_live: weakref.WeakSet[LiveSync] = weakref.WeakSet()


@dataclass(frozen=True)
class WatchSettings:
    quiet_seconds: float = 0.01
    """Send once the tree has been quiet this long (Mutagen coalesces for 20 ms). An editor's save (write a
    temporary file, rename it over the old one) is over within a millisecond or two; a write still going on when
    the file is read shows up in its mtime and is sent again, never recorded half-done."""
    max_wait_seconds: float = 0.25
    """...but never hold a change longer than this during a burst."""
    rescan_seconds: float = 60.0
    fallback_rescan_seconds: float = 2.0
    """How often to rescan when inotify cannot watch the tree."""
    retry_seconds: tuple[float, float] = (1.0, 15.0)
    """After the host refused a batch (its disk full, say): first retry, doubling up to the second."""
    elsewhere_seconds: float = 1.0
    """How often to look whether another gpubox wrote this project's sync record."""


def _rules_only(reason: str) -> bool:
    """A rescan asked for because a .gitignore or .gpuboxignore changed (see :meth:`LiveSync.mark`)."""
    return reason.endswith(tuple(f"{name} changed" for name in IGNORE_FILES))


class _OverflowListener(logging.Handler):
    """watchdog only logs an inotify overflow; turn that log line into a full rescan."""

    def emit(self, record: logging.LogRecord) -> None:
        if _OVERFLOW_TEXT in record.getMessage():
            for live in list(_live):
                live.request_rescan("inotify queue overflowed")


_listener = _OverflowListener(level=logging.WARNING)
for _name in ("watchdog.observers.inotify_c", "watchdog.observers.inotify"):
    logging.getLogger(_name).addHandler(_listener)


class _Marker(FileSystemEventHandler):
    def __init__(self, live: LiveSync) -> None:
        self.live = live

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Folder "modified" events only say a child changed; the child's own event carries the path.
        if event.is_directory and event.event_type in ("modified", "opened", "closed", "closed_no_write"):
            return
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.live.mark(event.src_path)
        if event.dest_path:
            self.live.mark(event.dest_path)


class LiveSync:
    """Keeps a Syncer's host in step with the local folder until stopped."""

    def __init__(
        self,
        syncer: Syncer,
        *,
        settings: WatchSettings = WatchSettings(),
        on_report: Callable[[SyncReport, str], None] = lambda report, why: None,
        on_problem: Callable[[str], None] = lambda text: None,
        on_link_lost: Callable[[], None] = lambda: None,
        link_generation: Callable[[], int] = lambda: 0,
        on_paused: Callable[[str], None] | None = None,
    ) -> None:
        """*on_problem* hears what went wrong; *on_paused* (else *on_problem*) that the link dropped, which is
        no fault of the sync's: it resumes, and rescans, once the supervisor has reconnected."""
        self.syncer = syncer
        self.root = syncer.root
        self.settings = settings
        self.on_report = on_report
        self.on_problem = on_problem
        self.on_link_lost = on_link_lost
        self.on_paused = on_paused or on_problem
        self.link_generation = link_generation
        self._dirty: set[str] = set()
        self._deferred: set[str] = set()
        self._retry_at: float | None = None
        self._retry_rescan: str | None = None
        self._retry_delay = settings.retry_seconds[0]
        self._first_dirty = 0.0
        self._last_dirty = 0.0
        self._rescan_reason: str | None = None
        self._rules_changed: str | None = None
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        """Wakes the worker."""
        self._settled = threading.Condition(lock)
        """Wakes flushes waiting for a batch to end."""
        self._marked = 0
        """Counts changes heard of (paths marked, rescans asked for)."""
        self._taken = 0
        """:attr:`_marked` when the worker took its current job."""
        self._done = 0
        """:attr:`_marked` when the worker took the latest job that succeeded with no pass left owed."""
        self._failures = 0
        self._failed = ""
        """Why the latest job failed (there were :attr:`_failures` in all)."""
        self._markers: dict[str, tuple[int, int] | None] = {}
        """Flush markers waited for: name -> (:attr:`_marked`, :attr:`_failures`) when the watcher heard of it
        (None: not yet)."""
        self._marker_numbers = itertools.count(1)
        self._hurry = False
        """A flush waits: send what is dirty without waiting for the tree to be quiet."""
        self._collectors: list[list[SyncReport]] = []
        """One list per flush waiting: the reports of the batches that end meanwhile."""
        self._link_lost: str | None = None
        """Why the worker waits for the supervisor to reconnect (None: it does not)."""
        self._unsettled = False
        """A batch left files unsent (the host refused them one by one) since the last full pass that did not:
        the live sync cannot vouch for the host until a full pass goes through."""
        self._last_full: SyncReport | None = None
        """The latest full pass's report: what it held back (secrets, large files), for flushes to repeat."""
        self._stop = False
        self._observer: BaseObserver | None = None
        self._worker: threading.Thread | None = None
        self._polling = False
        self._idle = threading.Event()
        self._idle.set()
        self.last_report: SyncReport | None = None
        self.batches = 0

    # -- events

    def mark(self, path: str | bytes) -> None:
        text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
        rel = relative(self.root, text)
        if rel is None:
            return
        name = rel.rpartition("/")[2]
        now = time.monotonic()
        with self._cond:
            if rel.startswith(FLUSH_MARKER) and "/" not in rel:
                self._heard_marker(rel)
                return
            self._marked += 1
            if name in IGNORE_FILES:
                # A changed .gitignore can change what is sent anywhere below it: rescan, but only once the
                # writes settle (a rescan that read a half-written rule file would send what it must ignore).
                self._rules_changed = f"{rel} changed"
            if not self._dirty:
                self._first_dirty = now
            self._dirty.add(rel)
            self._last_dirty = now
            self._idle.clear()
            self._cond.notify()

    def request_rescan(self, reason: str) -> None:
        with self._cond:
            self._marked += 1
            self._rescan_reason = reason
            self._idle.clear()
            self._cond.notify()

    # -- lifecycle

    def start(self) -> LiveSync:
        _live.add(self)
        observer = Observer()
        try:
            observer.schedule(_Marker(self), str(self.root), recursive=True, event_filter=_WATCHED_EVENTS)
            observer.start()
            self._observer = observer
        except OSError as exc:
            # Out of inotify watches or instances: keep syncing by scanning instead of watching.
            self._polling = True
            self.on_problem(
                f"cannot watch {self.root} ({exc.strerror or exc}); rescanning every "
                f"{self.settings.fallback_rescan_seconds:g} s instead"
            )
        # Whatever changed before the observer was watching (even since a full sync just before) is caught here.
        self.request_rescan("start")
        self._worker = threading.Thread(target=self._run, name="gpubox-live-sync", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        if self._worker is not None:
            self._worker.join(30)
        _live.discard(self)

    @property
    def watching(self) -> bool:
        return self._observer is not None and not self._polling

    @property
    def pending(self) -> int:
        """Paths changed locally and not yet on the host (waiting for the next batch, or held back for later)."""
        with self._cond:
            return len(self._dirty) + len(self._deferred)

    def wait_idle(self, timeout: float) -> bool:
        """Block until every change seen so far is on the host (the flush barrier)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._idle.wait(max(0.0, deadline - time.monotonic())):
                with self._cond:
                    if not self._dirty and self._rescan_reason is None:
                        return True
            time.sleep(0.005)
        return False

    # -- the flush barrier (see the module's docstring)

    def flush(self, timeout: float) -> SyncReport | str:
        """Wait until everything changed locally before this call is on the host; return what the batches that
        ended meanwhile did (merged), or why it cannot say so (the caller then syncs on its own)."""
        if not self.watching:
            return "live sync is rescanning, not watching"
        name = f"{FLUSH_MARKER}{os.getpid()}-{next(self._marker_numbers)}"
        marker = self.root / name
        reports: list[SyncReport] = []
        with self._cond:
            self._markers[name] = None
            self._collectors.append(reports)
        try:
            try:
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as exc:
                return f"cannot write a marker in {self.root} ({exc.strerror or exc})"
            deadline = time.monotonic() + MARKER_SECONDS
            with self._cond:
                while (heard := self._markers[name]) is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop:
                        return "the watcher never heard of the flush marker"
                    self._settled.wait(left)
            target, failures = heard
            with contextlib.suppress(OSError):
                os.unlink(marker)
            deadline = time.monotonic() + timeout
            with self._cond:
                while self._done < target:
                    # A batch failing once the marker was heard (the one in flight, or the one taking these
                    # changes) ends the wait: the caller syncs on its own, and says why.
                    if self._failures != failures:
                        return f"live sync failed: {self._failed}"
                    if self._link_lost is not None:  # no waiting for a reconnect: the caller may get through
                        return f"live sync paused, {self._link_lost}"
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop:
                        return "live sync did not catch up in time"
                    self._settled.wait(left)
                if self._unsettled:
                    # Files the host refused earlier are not there: a pass of the caller's own retries them
                    # and says what fails.
                    return "live sync left files unsent since its last full pass"
                last_full = self._last_full
        finally:
            with self._cond:
                self._markers.pop(name, None)
                self._collectors.remove(reports)
            with contextlib.suppress(OSError):
                os.unlink(marker)
        merged = SyncReport()
        for report in reports:
            merged.then(report)
            merged.host_changed = report.host_changed if report.verified else merged.host_changed
        if last_full is not None:  # what a pass of the caller's own would have said again
            for name in ("held_back", "too_large", "too_large_kept", "outside_links", "unreadable"):
                if not getattr(merged, name):
                    setattr(merged, name, list(getattr(last_full, name)))
        merged.held_deletions = sorted(self.syncer.held)
        merged.held_reason = self.syncer.held_reason if self.syncer.held else None
        return merged

    def _heard_marker(self, name: str) -> None:
        """A flush marker reached the watcher: every change made before it has been marked (called locked)."""
        if name not in self._markers or self._markers[name] is not None:
            return  # not ours, or its removal
        self._markers[name] = (self._marked, self._failures)
        if self._dirty:
            self._hurry = True
            self._cond.notify_all()
        if self._deferred or self._retry_at is not None:
            # What waits for a retry (a refused batch) goes now: the flush is waiting for it.
            self._retry_at = time.monotonic()
            self._cond.notify_all()
        self._settled.notify_all()

    # -- worker

    def _next_job(self) -> tuple[set[str], str | None] | None:
        """Wait until there is something to do; return (dirty paths, rescan reason), or None to stop."""
        rescan_every = (
            self.settings.fallback_rescan_seconds if self._polling else self.settings.rescan_seconds
        )
        next_rescan = time.monotonic() + rescan_every
        next_look = time.monotonic() + self.settings.elsewhere_seconds
        with self._cond:
            while True:
                if self._stop:
                    return None
                now = time.monotonic()
                if now >= next_look:
                    next_look = now + self.settings.elsewhere_seconds
                    if self._rescan_reason is None and self.syncer.changed_elsewhere():
                        self._rescan_reason = ELSEWHERE
                if self._rescan_reason is not None:
                    reason, self._rescan_reason = self._rescan_reason, None
                    self._rules_changed = None  # this full rescan reads the rule files anew
                    dirty, self._dirty = self._dirty, set()
                    self._taken = self._marked
                    return dirty, reason
                if now >= next_rescan:
                    dirty, self._dirty = self._dirty, set()
                    self._rules_changed = None
                    self._taken = self._marked
                    return dirty, "periodic rescan"
                if self._retry_at is not None and now >= self._retry_at:
                    # What the host refused goes again by itself (once its disk has room, say).
                    self._retry_at = None
                    dirty, self._dirty = self._dirty, set()
                    rescan, self._retry_rescan = self._retry_rescan, None
                    self._taken = self._marked
                    return dirty, rescan
                wake_at = min(next_rescan, next_look)
                if self._retry_at is not None:
                    wake_at = min(wake_at, self._retry_at)
                if self._dirty:
                    quiet_until = self._last_dirty + self.settings.quiet_seconds
                    cap = self._first_dirty + self.settings.max_wait_seconds
                    due = min(quiet_until, cap)
                    if now >= due or self._hurry:
                        self._hurry = False
                        dirty, self._dirty = self._dirty, set()
                        rules_changed, self._rules_changed = self._rules_changed, None
                        self._taken = self._marked
                        return dirty, rules_changed
                    self._cond.wait(min(due, wake_at) - now)
                else:
                    self._idle.set()
                    self._cond.wait(wake_at - now)

    def _run(self) -> None:
        generation = self.link_generation()
        while True:
            job = self._next_job()
            if job is None:
                return
            dirty, rescan = job
            taken = self._taken
            dirty |= self._deferred
            self._deferred = set()
            if self.link_generation() != generation:
                generation = self.link_generation()
                rescan = rescan or "reconnected"
            try:
                if rescan is not None:
                    # Compare with the host's listing too (edits made there are found), except when only a
                    # .gitignore changed: that rescan is about what is sent, and should be quick.
                    report = self.syncer.full(verify=None if _rules_only(rescan) else True)
                    why = rescan
                else:
                    report = self.syncer.paths(dirty)
                    why = f"{len(dirty)} changed"
                self.batches += 1
                self.last_report = report
                self._retry_delay = self.settings.retry_seconds[0]
                if rescan is not None or self._retry_rescan is None:
                    with self._cond:  # what was waiting for a retry went with this batch
                        self._retry_at = self._retry_rescan = None
                self.on_report(report, why)
                with self._cond:
                    for reports in self._collectors:
                        reports.append(report)
                    if rescan is not None:
                        self._last_full = report
                        self._unsettled = bool(report.errors)
                    elif report.errors:
                        self._unsettled = True
                    if self._retry_rescan is None:  # no pass is owed: every change taken so far is there
                        self._done = max(self._done, taken)
                    self._settled.notify_all()
            except (HostUnreachable, AgentError) as exc:
                self._link_lost = f"link lost: {exc}"
                self._failing(self._link_lost)
                # The supervisor owns reconnecting; everything is rescanned once the link is back.
                self.on_paused(f"sync paused, {self._link_lost}")
                self.on_link_lost()
                self._wait_for_new_link(generation)
                generation = self.link_generation()
                self._link_lost = None
                self.request_rescan("reconnected")
            except GpuboxError as exc:
                self._failing(str(exc))
                # Keep the paths for the next batch or rescan (after the cause is fixed), without spinning.
                self.on_problem(str(exc))
                self._deferred |= dirty
                if isinstance(exc, RemoteError):
                    # The host refused (disk full, a folder it cannot write): try again with backoff, since no
                    # local event may come to carry these paths once the host is fixed. Only a failed retry
                    # backs off further; edits failing meanwhile do not push the retry away.
                    with self._cond:
                        self._retry_rescan = self._retry_rescan or rescan
                        if self._retry_at is None:
                            self._retry_at = time.monotonic() + self._retry_delay
                            self._retry_delay = min(self._retry_delay * 2, self.settings.retry_seconds[1])

    def _failing(self, why: str) -> None:
        with self._cond:
            self._failures += 1
            self._failed = why
            self._settled.notify_all()

    def _wait_for_new_link(self, generation: int) -> None:
        while self.link_generation() == generation:
            with self._cond:
                if self._stop:
                    return
                self._cond.wait(0.1)
