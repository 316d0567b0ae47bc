"""plan_changes: every branch of the one-way-safe table, the order of ops, and the mass-deletion guard."""

from __future__ import annotations

import pytest

from gpubox.sync.plan import MassDeletion, Op, Plan, check_mass_deletion, plan_changes
from gpubox.sync.scan import FOLDER, Entry


def f(size: int = 10, mtime: int = 1_000, executable: bool = False) -> Entry:
    return Entry("f", size, mtime, executable)


def link(target: str) -> Entry:
    return Entry("l", target=target)


V1, V2, V3 = f(10, 1_000), f(12, 2_000), f(14, 3_000)


def one(plan: Plan) -> Op:
    assert len(plan.ops) == 1, plan.ops
    return plan.ops[0]


# ------------------------------------------------------------------------------------------ Entry.same


def test_entry_same_compares_what_sync_carries() -> None:
    assert f().same(f())
    assert not f().same(None)
    assert not f(10).same(f(11))
    assert not f(mtime=1).same(f(mtime=2))
    assert not f().same(f(executable=True))  # chmod +x alone is a change
    assert link("a").same(Entry("l", 5, 9, True, "a"))  # a link is its target, nothing else
    assert not link("a").same(link("b"))
    assert FOLDER.same(Entry("d", 1, 2))
    assert not FOLDER.same(f()) and not f().same(FOLDER) and not link("x").same(f())
    assert Entry.from_row(f(3, 4, True).row()) == f(3, 4, True)


# ------------------------------------------------------------------------ with the host's manifest


def test_identical_everywhere_does_nothing() -> None:
    plan = plan_changes({"a": V1}, {"a": V1}, {"a": V1})
    assert (plan.ops, plan.in_sync, plan.untrack, plan.host_changed) == ([], {}, [], [])


def test_already_on_the_host_is_learned_without_sending() -> None:
    # No ancestor yet (first sync, or state lost), the host has exactly local's copy.
    plan = plan_changes({"a": V1, "d": FOLDER}, {}, {"a": V1, "d": FOLDER})
    assert plan.ops == [] and plan.in_sync == {"a": V1, "d": FOLDER}
    # The ancestor is stale but the host already matches local (an earlier batch landed, its ack was lost).
    plan = plan_changes({"a": V2}, {"a": V1}, {"a": V2})
    assert plan.ops == [] and plan.in_sync == {"a": V2}


def test_missing_on_the_host_is_sent_expecting_nothing() -> None:
    assert one(plan_changes({"a": V1}, {}, {})) == Op("write", "a", V1, None)
    # Even when the ancestor says gpubox put it there: the host lost it, local still has it.
    assert one(plan_changes({"a": V2}, {"a": V1}, {})) == Op("write", "a", V2, None)


def test_local_change_replaces_an_untouched_host_copy() -> None:
    assert one(plan_changes({"a": V2}, {"a": V1}, {"a": V1})) == Op("write", "a", V2, V1)
    assert one(plan_changes({"a": link("t")}, {"a": V1}, {"a": V1})) == Op("link", "a", link("t"), V1)
    assert one(plan_changes({"a": FOLDER}, {"a": V1}, {"a": V1})) == Op("mkdir", "a", FOLDER, V1)


def test_host_change_with_local_unchanged_is_left_alone_and_reported() -> None:
    plan = plan_changes({"b": V1, "a": V1}, {"a": V1, "b": V1}, {"a": V2, "b": V3})
    assert plan.ops == [] and plan.host_changed == ["a", "b"]
    assert plan.untrack == [] and plan.in_sync == {}


def test_both_changed_is_sent_against_the_ancestor_so_the_agent_keeps_the_host_copy() -> None:
    assert one(plan_changes({"a": V2}, {"a": V1}, {"a": V3})) == Op("write", "a", V2, V1)


def test_a_host_file_gpubox_never_wrote_is_sent_expecting_nothing_so_it_is_kept_aside() -> None:
    # Created on both sides independently: the agent sees a file where it expects none.
    assert one(plan_changes({"a": V2}, {}, {"a": V3})) == Op("write", "a", V2, None)


def test_host_only_paths_are_never_touched() -> None:
    plan = plan_changes({}, {}, {"made-by-a-run.txt": V1, "runs": FOLDER})
    assert (plan.ops, plan.untrack, plan.host_changed, plan.in_sync) == ([], [], [], {})


def test_local_delete_removes_an_untouched_host_copy() -> None:
    assert one(plan_changes({}, {"a": V1}, {"a": V1})) == Op("delete", "a", None, V1)
    assert one(plan_changes({}, {"l": link("t")}, {"l": link("t")})) == Op("delete", "l", None, link("t"))
    assert one(plan_changes({}, {"d": FOLDER}, {"d": FOLDER})) == Op("rmdir", "d", None, FOLDER)


def test_local_delete_keeps_a_host_copy_changed_since() -> None:
    plan = plan_changes({}, {"a": V1}, {"a": V2})
    assert plan.ops == [] and plan.host_changed == ["a"] and plan.untrack == ["a"]


def test_local_delete_of_something_gone_from_the_host_only_untracks() -> None:
    plan = plan_changes({}, {"a": V1}, {})
    assert plan.ops == [] and plan.untrack == ["a"] and plan.host_changed == []


def test_still_local_paths_are_untracked_never_deleted() -> None:
    # Now ignored, secret or too large: gone from the scan, still on disk.
    for remote in ({"a": V1}, None):
        plan = plan_changes({}, {"a": V1}, remote, still_local=["a"])
        assert plan.ops == [] and plan.untrack == ["a"]


# ------------------------------------------------------------------------ live sync (no manifest)


def test_live_changes_are_sent_against_the_ancestor() -> None:
    assert one(plan_changes({"a": V2}, {"a": V1}, None)) == Op("write", "a", V2, V1)
    assert one(plan_changes({"a": V1}, {}, None)) == Op("write", "a", V1, None)
    assert plan_changes({"a": V1}, {"a": V1}, None).ops == []


def test_live_deletes_are_checked_just_in_time_by_the_agent() -> None:
    assert one(plan_changes({}, {"a": V1}, None)) == Op("delete", "a", None, V1)
    assert plan_changes({}, {}, None).ops == []


def test_paths_limit_the_plan() -> None:
    local = {"a": V2, "b": V2}
    ancestor = {"a": V1, "b": V1, "c": V1}
    plan = plan_changes(local, ancestor, None, paths=["a", "c"])
    assert [(op.kind, op.path) for op in plan.ops] == [("delete", "c"), ("write", "a")]


# --------------------------------------------------------------------------------------------- order


def test_ops_come_deletions_first_then_folders_shallow_first_then_files() -> None:
    local = {"new": FOLDER, "new/deep": FOLDER, "new/deep/x": V1, "b": V1, "new/l": link("deep/x")}
    ancestor = {"old": FOLDER, "old/sub": FOLDER, "old/sub/f": V1, "old/g": V1}
    plan = plan_changes(local, ancestor, None)
    assert [(op.kind, op.path) for op in plan.ops] == [
        ("delete", "old/g"),
        ("delete", "old/sub/f"),
        ("rmdir", "old/sub"),
        ("rmdir", "old"),
        ("mkdir", "new"),
        ("mkdir", "new/deep"),
        ("write", "b"),
        ("write", "new/deep/x"),
        ("link", "new/l"),
    ]
    assert [op.path for op in plan.deletions] == ["old/g", "old/sub/f", "old/sub", "old"]
    assert {op.path for op in plan.sends} == set(local)
    assert plan.bytes_to_send == 2 * V1.size


def test_a_file_that_became_a_folder_and_back() -> None:
    plan = plan_changes({"x": FOLDER, "x/in": V1}, {"x": V2}, None)
    assert [(op.kind, op.path, op.expect) for op in plan.ops] == [("mkdir", "x", V2), ("write", "x/in", None)]
    plan = plan_changes({"x": V3}, {"x": FOLDER, "x/in": V1}, None)
    assert [(op.kind, op.path, op.expect) for op in plan.ops] == [
        ("delete", "x/in", V1),
        ("write", "x", FOLDER),
    ]


# ------------------------------------------------------------------------------ mass-deletion guard


def _deleting(count: int, folders: int = 0) -> Plan:
    ops = [Op("delete", f"f{i}", None, V1) for i in range(count)]
    ops += [Op("rmdir", f"d{i}", None, FOLDER) for i in range(folders)]
    return Plan(ops=ops)


def guard(plan: Plan, tracked: int, *, max_count: int = 1000, max_share: float = 0.5) -> MassDeletion | None:
    try:
        check_mass_deletion(plan, tracked, max_count=max_count, max_share=max_share)
    except MassDeletion as exc:
        return exc
    return None


def test_nothing_deleted_never_trips() -> None:
    assert guard(Plan(ops=[Op("write", "a", V1, None)]), 0) is None
    assert guard(_deleting(0, folders=50), 50) is None  # folders are not counted


@pytest.mark.parametrize(
    ("deleting", "tracked", "trips"),
    [
        (10, 12, False),  # over half, but only the minimum (10) or fewer go
        (11, 22, False),  # exactly half is not more than half
        (11, 21, True),  # more than half, more than the minimum
        (12, 100, False),
        (51, 100, True),
        (1, 1, False),  # a one-file project deleting its file is no mass deletion
        (2, 2, True),  # every tracked file at once: a wiped or unmounted folder
        (5, 4, True),
    ],
)
def test_share_and_emptied_thresholds(deleting: int, tracked: int, trips: bool) -> None:
    caught = guard(_deleting(deleting), tracked)
    assert (caught is not None) == trips
    if caught is not None:
        assert (caught.deleting, caught.tracked) == (deleting, tracked)
        assert str(caught) == f"{deleting} of {tracked} tracked files"


def test_count_threshold() -> None:
    assert guard(_deleting(1000), 100_000) is None
    caught = guard(_deleting(1001), 100_000)
    assert caught is not None and caught.deleting == 1001
    assert guard(_deleting(6), 100, max_count=5) is not None
    assert guard(_deleting(5), 100, max_count=5) is None


def test_share_is_configurable() -> None:
    assert guard(_deleting(20), 100, max_share=0.1) is not None
    assert guard(_deleting(20), 100, max_share=0.2) is None
    assert guard(_deleting(60), 100, max_share=0.9) is None
