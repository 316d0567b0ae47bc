"""What to do on the host, decided from three views of each path: local now, the ancestor, the host now.

The ancestor is the last state the host acknowledged. One-way-safe rules (Mutagen's, adapted):

- local changed, host still as the ancestor (or as local already): replace on the host;
- local unchanged, host changed: leave the host's copy alone and report it;
- both changed (or the host has a file gpubox never wrote where local has one): the agent keeps the host's copy
  as ``NAME.gpubox-conflict-<UTC time>`` and writes local's;
- local deleted: delete on the host (into a trash folder) only if the host copy is still the ancestor;
- host-only paths (no ancestor, nothing local) are never touched.

Without a host view (live sync between full scans) the agent makes the same checks just in time.

Two refinements follow the plan: :func:`pair_moves` turns a deleted file and a new file with the same facts into
one move (a rename on the host, checked there against the content's digest), and :func:`wipe_reason` says when
the deletions left look like a wiped folder rather than work, so that they are held back.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gpubox.sync.scan import Entry

__all__ = [
    "DELETES",
    "SENDS",
    "WIRE_CODES",
    "FactsIndex",
    "Op",
    "Plan",
    "RecentTrash",
    "Trashed",
    "WipeGuard",
    "differing",
    "hold_deletions",
    "outermost",
    "pair_moves",
    "plan_changes",
    "wipe_reason",
]


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    path: str
    entry: Entry | None
    """What the host should hold afterwards (None for deletions)."""
    expect: Entry | None
    """What the host should hold now for the change to be safe (None: nothing). For a move: at *source*."""
    source: str = ""
    """A move's origin: a path of the project, or (with *from_trash*) a file in the host's trash folder."""
    from_trash: bool = False
    force: bool = False
    """Local wins: a host copy that is not *expect* goes to the host's trash instead of being kept aside."""
    rewrite: bool = False
    """Written even where the host's copy already has the entry's facts (they cannot be trusted after a crash)."""


OpKind = Literal["write", "link", "mkdir", "delete", "rmdir", "move"]
"""Write a file, make a symlink, make a folder, delete a file or link, remove a folder, move a file on the host."""
SENDS: tuple[OpKind, ...] = ("write", "link", "mkdir", "move")
DELETES: tuple[OpKind, ...] = ("delete", "rmdir")
WIRE_CODES: dict[OpKind, str] = {
    "write": "w",
    "link": "l",
    "mkdir": "d",
    "delete": "rm",
    "rmdir": "rmdir",
    "move": "mv",
}
"""How the agent's ``apply`` op spells each kind (see remote/agent/PROTOCOL.md)."""


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    in_sync: dict[str, Entry] = field(default_factory=dict)
    """Paths found identical on both sides: the ancestor learns them without sending anything."""
    untrack: list[str] = field(default_factory=list)
    """Paths gpubox stops tracking without touching the host (gone there, or now ignored locally)."""
    host_changed: list[str] = field(default_factory=list)
    """Host copies changed since gpubox wrote them while local did not change: left alone, reported."""
    held: list[Op] = field(default_factory=list)
    """Deletions held back because together they look like a wipe (see :func:`wipe_reason`)."""

    @property
    def sends(self) -> list[Op]:
        return [op for op in self.ops if op.kind in SENDS]

    @property
    def deletions(self) -> list[Op]:
        return [op for op in self.ops if op.kind in DELETES]

    @property
    def bytes_to_send(self) -> int:
        return sum(op.entry.size for op in self.ops if op.kind == "write" and op.entry is not None)


_SEND_KIND: dict[str, OpKind] = {"f": "write", "l": "link", "d": "mkdir"}


def _send(path: str, entry: Entry, expect: Entry | None) -> Op:
    kind = _SEND_KIND[entry.kind]
    return Op(kind, path, entry, expect)


def plan_changes(
    local: Mapping[str, Entry],
    ancestor: Mapping[str, Entry],
    remote: Mapping[str, Entry] | None,
    *,
    paths: Iterable[str] | None = None,
    still_local: Iterable[str] = (),
    leave_alone: Iterable[str] = (),
) -> Plan:
    """Plan for *paths* (default: every path local or ancestor knows).

    *remote* is the host's manifest when a full scan fetched it, None during live sync. *still_local* are
    paths that exist locally but are no longer sent (newly ignored, secret): they are untracked, never deleted
    on the host. *leave_alone* are tracked paths skipped this time but still tracked (a file grown over the size
    limit: the host keeps the copy sent earlier, and deleting the file locally still deletes it there).
    """
    keep_local = set(still_local)
    plan = Plan()
    candidates = set(paths) if paths is not None else set(local) | set(ancestor)
    candidates.difference_update(leave_alone)
    deletions: list[Op] = []
    for path in candidates:
        here = local.get(path)
        before = ancestor.get(path)
        if here is not None:
            if remote is None:
                if not here.same(before):
                    plan.ops.append(_send(path, here, before))
                continue
            there = remote.get(path)
            if here.same(there):
                if not here.same(before):
                    plan.in_sync[path] = here
            elif there is None or (before is not None and there.same(before)):
                plan.ops.append(_send(path, here, there))
            elif before is not None and here.same(before):
                plan.host_changed.append(path)
            else:
                plan.ops.append(_send(path, here, before))
            continue
        if before is None:
            continue
        if path in keep_local:
            plan.untrack.append(path)
            continue
        if remote is not None:
            there = remote.get(path)
            if there is None:
                plan.untrack.append(path)
                continue
            if not there.same(before):
                plan.host_changed.append(path)
                plan.untrack.append(path)
                continue
        deletions.append(Op("rmdir" if before.kind == "d" else "delete", path, None, before))
    plan.ops = _ordered(plan.ops, deletions)
    plan.host_changed.sort()
    return plan


def _depth(path: str) -> int:
    return path.count("/")


def _ordered(sends: list[Op], deletions: list[Op]) -> list[Op]:
    """Files deleted, then moves (their sources still there, their old folders not yet removed), then folders
    removed deepest first, folders made shallowest first, then files and links."""
    files_gone = sorted((op for op in deletions if op.kind == "delete"), key=lambda op: op.path)
    moves = sorted((op for op in sends if op.kind == "move"), key=lambda op: op.path)
    folders_gone = sorted(
        (op for op in deletions if op.kind == "rmdir"), key=lambda op: (-_depth(op.path), op.path)
    )
    folders = sorted((op for op in sends if op.kind == "mkdir"), key=lambda op: (_depth(op.path), op.path))
    rest = sorted((op for op in sends if op.kind not in ("mkdir", "move")), key=lambda op: op.path)
    return files_gone + moves + folders_gone + folders + rest


# ------------------------------------------------------------------------------------------------ moves


@dataclass(frozen=True, slots=True)
class Trashed:
    """A file a recent pass moved into the host's trash: a new file with its facts may come from there."""

    path: str
    entry: Entry
    where: str
    """Its place inside the project's trash folder on the host (``<batch>/<path>``)."""


class RecentTrash:
    """Files this process moved into the host's trash lately, newest last: where a new file with the same facts
    may come from (a file deleted a moment before its new copy appeared)."""

    SECONDS = 15 * 60.0
    FILES = 50_000

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[Trashed, float]] = OrderedDict()

    def remember(self, path: str, entry: Entry, where: str) -> None:
        if entry.kind != "f":
            return
        self._items.pop(path, None)
        self._items[path] = (Trashed(path, entry, where), time.monotonic())
        while len(self._items) > self.FILES:
            self._items.popitem(last=False)

    def forget(self, path: str) -> None:
        self._items.pop(path, None)

    def recent(self) -> list[Trashed]:
        cutoff = time.monotonic() - self.SECONDS
        while self._items and next(iter(self._items.values()))[1] < cutoff:
            self._items.popitem(last=False)
        return [item for item, _when in self._items.values()]


class FactsIndex:
    """Tracked files by their facts (size, mtime, exec bit): how a file gone here and a new one there are told to
    be one file moved. Kept as large as the ancestor and no larger: every save makes new facts (a new mtime),
    and the empty set one used to leave behind per save piled up for as long as `gpubox up` ran."""

    def __init__(self, ancestor: Mapping[str, Entry]) -> None:
        self._paths: dict[tuple[int, int, bool], set[str]] = {}
        for path, entry in ancestor.items():
            self._add(path, entry)

    def _add(self, path: str, entry: Entry) -> None:
        if entry.kind == "f":
            self._paths.setdefault(entry.facts, set()).add(path)

    def get(self, facts: tuple[int, int, bool]) -> set[str]:
        return self._paths.get(facts, set())

    def update(
        self, ancestor: Mapping[str, Entry], upserts: Mapping[str, Entry], removals: Iterable[str]
    ) -> None:
        """*ancestor* as it was, about to take *upserts* and lose *removals*."""
        for path in [*upserts, *removals]:
            old = ancestor.get(path)
            if old is not None and old.kind == "f":
                paths = self._paths.get(old.facts)
                if paths is not None:
                    paths.discard(path)
                    if not paths:
                        del self._paths[old.facts]
        for path, entry in upserts.items():
            self._add(path, entry)

    def __len__(self) -> int:
        return len(self._paths)


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def pair_moves(plan: Plan, ancestor: Mapping[str, Entry], trashed: Iterable[Trashed] = ()) -> None:
    """Turn (a file deleted, a new file with the same size, mtime and exec bit) into one move, in place.

    A rename keeps a file's mtime to the nanosecond, so those facts find the candidates; the agent then checks
    the content's digest before renaming, and a mismatch falls back to a write and a delete. Only a path the
    host has no copy of receives a move, and only a path gone locally gives one: a rotation (a->b, b->c) is
    sent as writes. New files no deletion of this plan explains may come back out of the trash (*trashed*),
    when an earlier pass deleted the file a moment before its new copy appeared.
    """
    new_files = [
        op
        for op in plan.ops
        if op.kind == "write" and op.expect is None and op.entry is not None and op.path not in ancestor
    ]
    if not new_files:
        return
    gone: dict[tuple[int, int, bool], list[str]] = {}
    for op in plan.ops:
        if op.kind == "delete" and op.expect is not None and op.expect.kind == "f":
            gone.setdefault(op.expect.facts, []).append(op.path)
    for paths in gone.values():
        paths.sort()
    in_trash: dict[tuple[int, int, bool], list[Trashed]] = {}
    for item in trashed:
        if item.entry.kind == "f":
            in_trash.setdefault(item.entry.facts, []).append(item)
    if not gone and not in_trash:
        return
    moved: dict[str, Op] = {}
    sources: set[str] = set()
    # Same file name first (a folder renamed or moved keeps its files' names), then any origin left.
    for same_name in (True, False):
        for op in sorted(new_files, key=lambda op: op.path):
            if op.path in moved or op.entry is None:
                continue
            facts = op.entry.facts
            origins = [p for p in gone.get(facts, ()) if not same_name or _name(p) == _name(op.path)]
            if origins:
                gone[facts].remove(origins[0])
                sources.add(origins[0])
                moved[op.path] = Op("move", op.path, op.entry, ancestor[origins[0]], origins[0])
                continue
            trashed_here = [
                item
                for item in in_trash.get(facts, ())
                if not same_name or _name(item.path) == _name(op.path)
            ]
            if trashed_here:
                item = trashed_here[0]
                in_trash[facts].remove(item)
                moved[op.path] = Op("move", op.path, op.entry, item.entry, item.where, from_trash=True)
    if not moved:
        return
    kept = [
        moved.get(op.path, op) if op.kind == "write" else op
        for op in plan.ops
        if not (op.kind == "delete" and op.path in sources)
    ]
    plan.ops = _ordered([op for op in kept if op.kind in SENDS], [op for op in kept if op.kind in DELETES])


# ------------------------------------------------------------------------------------------------ wipes


@dataclass(frozen=True)
class WipeGuard:
    """When deletions look like a wiped folder rather than work (``[sync]`` in gpubox.toml)."""

    share: float = 0.95
    """Deleting at least this share of the tracked files..."""
    min_files: int = 10
    """...and at least this many of them."""
    max_count: int | None = None
    """An explicit brake: more deletions than this at once (rsync's --max-delete); off by default."""
    max_share: float | None = None
    """An explicit brake: more than this share of the tracked files at once (once over 10 go); off by default."""


NEARLY_EMPTY = 3
"""A project folder left with at most this many files (hidden ones and gpubox's own aside) is nearly empty."""
_CONFIG_FILES = frozenset({"gpubox.toml", "hosts.toml"})


def _visible(path: str) -> bool:
    """A file that makes the project folder not empty: not hidden (``rm -rf *`` spares dot files) and not
    gpubox's own configuration at the top."""
    return not path.startswith(".") and path not in _CONFIG_FILES


def wipe_reason(
    plan: Plan,
    ancestor: Mapping[str, Entry],
    guard: WipeGuard,
    *,
    gone_already: Iterable[str] = (),
    vanished_checkouts: Iterable[str] = (),
) -> str | None:
    """Why the plan's deletions look like a wipe (Unison's confirmbigdel, Mutagen's emptied root), or None.

    A wipe is: the project folder left empty (at most hidden files and gpubox.toml stay, where two or more other
    files were), or nearly so (a few files left after ``guard.min_files`` went);
    a version-control checkout that vanished with its files (*vanished_checkouts*: folders, "" for the project,
    whose .git/.hg/.svn is gone); at least ``guard.share`` of the tracked files at once; or one of the explicit
    brakes. Moves are not deletions. *gone_already* are deletions held back before, still counted as gone.
    """
    deleting = [op.path for op in plan.ops if op.kind == "delete"]
    if not deleting:
        return None
    files = {path for path, entry in ancestor.items() if entry.kind != "d"}
    tracked = len(files)
    gone = (set(gone_already) | set(deleting)) & files
    for folder in vanished_checkouts:
        prefix = folder + "/" if folder else ""
        if any(path.startswith(prefix) for path in deleting):
            where = f"the checkout at {folder}" if folder else "the project's checkout"
            return f"{where} vanished with its version-control folder"
    arriving = {op.path for op in plan.ops if op.kind in ("write", "link", "move")}
    visible_before = sum(1 for path in files if _visible(path))
    visible_after = sum(1 for path in (files - gone) | arriving if _visible(path))
    if (visible_before >= 2 and not visible_after) or (
        len(gone) >= guard.min_files and visible_after <= NEARLY_EMPTY < visible_before
    ):
        how = "empty" if not visible_after else "nearly empty"
        return f"it would leave the project folder on the host {how} ({len(gone)} of {tracked} files deleted)"
    if len(gone) >= max(guard.min_files, 1) and len(gone) >= guard.share * tracked:
        return f"it would delete {len(gone)} of {tracked} tracked files ({100 * len(gone) / tracked:.0f} %)"
    if guard.max_count is not None and len(deleting) > guard.max_count:
        return f"it would delete {len(deleting)} files at once, over max_delete_count = {guard.max_count}"
    if (
        guard.max_share is not None
        and len(deleting) > 10
        and len(deleting) > guard.max_share * max(tracked, 1)
    ):
        return (
            f"it would delete {len(deleting)} of {tracked} tracked files at once, over max_delete_share = "
            f"{guard.max_share:g}"
        )
    return None


def hold_deletions(plan: Plan) -> None:
    """Move every deletion out of the plan's ops into ``plan.held``; everything else still goes."""
    plan.held = [op for op in plan.ops if op.kind in DELETES]
    plan.ops = [op for op in plan.ops if op.kind not in DELETES]


def differing(local: Mapping[str, Entry], ancestor: Mapping[str, Entry]) -> set[str]:
    """The paths whose entries differ between the two (equal entries are always the same, see Entry): all a
    plan without the host's view needs to look at."""
    if local == ancestor:  # a no-op pass: one comparison in C instead of a lookup per path
        return set()
    found = {path for path, entry in local.items() if ancestor.get(path) != entry}
    found.update(ancestor.keys() - local.keys())
    return found


def outermost(changed: Iterable[str]) -> list[str]:
    """Drop paths that lie under another changed path: rescanning the folder covers them."""
    unique = set(changed)

    def covered(path: str) -> bool:
        parts = path.split("/")
        return any("/".join(parts[:depth]) in unique for depth in range(1, len(parts)))

    return sorted(path for path in unique if not covered(path))


def tracked_under(paths: Iterable[str], ancestor: Mapping[str, Entry]) -> set[str]:
    """What the ancestor tracks under each of *paths* that it knows as a folder (a file has nothing under it:
    a burst of 1,000 saved files must not walk a 50,000-entry ancestor 1,000 times)."""
    folders = [
        path + "/" for path in paths if (known := ancestor.get(path)) is not None and known.kind == "d"
    ]
    if not folders:
        return set()
    if len(folders) <= 8:
        return {p for p in ancestor if p.startswith(tuple(folders))}
    import bisect

    ordered = sorted(ancestor)
    found: set[str] = set()
    for prefix in folders:
        index = bisect.bisect_left(ordered, prefix)
        while index < len(ordered) and ordered[index].startswith(prefix):
            found.add(ordered[index])
            index += 1
    return found
