"""What to do on the host, decided from three views of each path: local now, the ancestor, the host now.

The ancestor is the last state the host acknowledged. One-way-safe rules (Mutagen's, adapted):

- local changed, host still as the ancestor (or as local already): replace on the host;
- local unchanged, host changed: leave the host's copy alone and report it;
- both changed (or the host has a file gpubox never wrote where local has one): the agent keeps the host's copy
  as ``NAME.gpubox-conflict-<UTC time>`` and writes local's;
- local deleted: delete on the host (into a trash folder) only if the host copy is still the ancestor;
- host-only paths (no ancestor, nothing local) are never touched.

Without a host view (live sync between full scans) the agent makes the same checks just in time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gpubox.sync.scan import Entry

__all__ = ["MassDeletion", "Op", "Plan", "check_mass_deletion", "plan_changes"]


@dataclass(frozen=True, slots=True)
class Op:
    kind: OpKind
    path: str
    entry: Entry | None
    """What the host should hold afterwards (None for deletions)."""
    expect: Entry | None
    """What the host should hold now for the change to be safe (None: nothing)."""


OpKind = Literal["write", "link", "mkdir", "delete", "rmdir"]
"""Write a file, make a symlink, make a folder, delete a file or link, remove a folder."""
SENDS: tuple[OpKind, ...] = ("write", "link", "mkdir")
DELETES: tuple[OpKind, ...] = ("delete", "rmdir")
WIRE_CODES: dict[OpKind, str] = {"write": "w", "link": "l", "mkdir": "d", "delete": "rm", "rmdir": "rmdir"}
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

    @property
    def sends(self) -> list[Op]:
        return [op for op in self.ops if op.kind in SENDS]

    @property
    def deletions(self) -> list[Op]:
        return [op for op in self.ops if op.kind in DELETES]

    @property
    def bytes_to_send(self) -> int:
        return sum(op.entry.size for op in self.ops if op.kind == "write" and op.entry is not None)


class MassDeletion(Exception):
    """One batch would delete more tracked files than the guard allows."""

    def __init__(self, deleting: int, tracked: int) -> None:
        super().__init__(f"{deleting} of {tracked} tracked files")
        self.deleting = deleting
        self.tracked = tracked


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
) -> Plan:
    """Plan for *paths* (default: every path local or ancestor knows).

    *remote* is the host's manifest when a full scan fetched it, None during live sync. *still_local* are
    paths that exist locally but are no longer sent (newly ignored, secret, too large): they are untracked,
    never deleted on the host.
    """
    keep_local = set(still_local)
    plan = Plan()
    candidates = set(paths) if paths is not None else set(local) | set(ancestor)
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
    """Deletions first (files, then folders deepest first), then folders shallowest first, then files."""
    files_gone = sorted((op for op in deletions if op.kind == "delete"), key=lambda op: op.path)
    folders_gone = sorted(
        (op for op in deletions if op.kind == "rmdir"), key=lambda op: (-_depth(op.path), op.path)
    )
    folders = sorted((op for op in sends if op.kind == "mkdir"), key=lambda op: (_depth(op.path), op.path))
    rest = sorted((op for op in sends if op.kind != "mkdir"), key=lambda op: op.path)
    return files_gone + folders_gone + folders + rest


def check_mass_deletion(
    plan: Plan, tracked_files: int, *, max_count: int, max_share: float, minimum: int = 10
) -> None:
    """Raise MassDeletion when the plan deletes more than *max_count* files, or more than *max_share* of the
    tracked files (once more than *minimum* go), like rsync's --max-delete and Unison's confirmbigdel."""
    deleting = sum(1 for op in plan.ops if op.kind == "delete")
    if deleting == 0:
        return
    # Mutagen's "root emptied" halt: every tracked file vanishing at once is a wiped or unmounted folder.
    emptied = tracked_files >= 2 and deleting >= tracked_files
    if (
        emptied
        or deleting > max_count
        or (deleting > minimum and deleting > max_share * max(tracked_files, 1))
    ):
        raise MassDeletion(deleting, tracked_files)
