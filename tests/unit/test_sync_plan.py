"""plan_changes: every branch of the one-way-safe table, the order of ops, moves, and what counts as a wipe."""

from __future__ import annotations

import pytest

from gpubox.sync.plan import (
    FactsIndex,
    Op,
    Plan,
    Trashed,
    WipeGuard,
    hold_deletions,
    pair_moves,
    plan_changes,
    tracked_under,
    wipe_reason,
)
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
    # Now ignored or secret: gone from the scan, still on disk.
    for remote in ({"a": V1}, None):
        plan = plan_changes({}, {"a": V1}, remote, still_local=["a"])
        assert plan.ops == [] and plan.untrack == ["a"]


def test_paths_left_alone_stay_tracked_and_untouched() -> None:
    # Grown over the size limit: the host keeps the copy sent earlier, and the path stays tracked.
    for remote in ({"a": V1, "b": V1}, None):
        plan = plan_changes({}, {"a": V1, "b": V1}, remote, leave_alone=["a"])
        assert [(op.kind, op.path) for op in plan.ops] == [("delete", "b")]
        assert plan.untrack == [] and plan.host_changed == []


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


# --------------------------------------------------------------------------------------------- moves

A, B, C = f(100, 5_000), f(200, 6_000), f(100, 7_000)


def _moves(plan: Plan) -> list[tuple[str, str, bool]]:
    return [(op.source, op.path, op.from_trash) for op in plan.ops if op.kind == "move"]


def test_a_folder_rename_becomes_moves_and_no_deletion_is_left() -> None:
    ancestor = {"old": FOLDER, "old/a.py": A, "old/b.py": B, "keep.py": C}
    local = {"new": FOLDER, "new/a.py": A, "new/b.py": B, "keep.py": C}
    plan = plan_changes(local, ancestor, None)
    pair_moves(plan, ancestor)
    assert [(op.kind, op.path) for op in plan.ops] == [
        ("move", "new/a.py"),
        ("move", "new/b.py"),
        ("rmdir", "old"),
        ("mkdir", "new"),
    ]
    assert _moves(plan) == [("old/a.py", "new/a.py", False), ("old/b.py", "new/b.py", False)]
    moved = next(op for op in plan.ops if op.kind == "move")
    assert moved.expect == A and moved.entry == A  # the agent checks the origin against the ancestor
    assert wipe_reason(plan, ancestor, WipeGuard()) is None


def test_moves_prefer_the_same_file_name_and_pair_each_origin_once() -> None:
    # Two deleted files with the same facts; the new file keeps one of their names.
    ancestor = {"x/one.txt": A, "y/two.txt": A}
    local = {"z/two.txt": A, "z/copy.txt": A, "z/third.txt": A}
    plan = plan_changes(local, ancestor, None)
    pair_moves(plan, ancestor)
    moves = _moves(plan)
    assert ("y/two.txt", "z/two.txt", False) in moves and len(moves) == 2
    assert sorted(source for source, _, _ in moves) == ["x/one.txt", "y/two.txt"]
    assert [op.path for op in plan.ops if op.kind == "write"] == [
        next(p for p in local if p not in {dest for _, dest, _ in moves})
    ]


def test_no_move_where_facts_differ_or_the_target_is_tracked() -> None:
    ancestor = {"a": A, "b": B}
    # Same size, other mtime: a new file, not a rename.
    plan = plan_changes({"c": f(100, 5_001)}, ancestor, None)
    pair_moves(plan, ancestor)
    assert _moves(plan) == []
    # A rotation (a -> b, b -> c): b is tracked, so it is written; c's origin b still exists locally.
    plan = plan_changes({"b": A, "c": B}, ancestor, None)
    pair_moves(plan, ancestor)
    assert _moves(plan) == [] and {op.kind for op in plan.ops} == {"write", "delete"}
    # An exec bit changed on the way: not the same facts.
    plan = plan_changes({"c": f(100, 5_000, executable=True)}, {"a": A}, None)
    pair_moves(plan, {"a": A})
    assert _moves(plan) == []


def test_a_new_file_may_come_back_out_of_the_trash() -> None:
    trashed = [Trashed("old/a.py", A, "20260101T000000Z/old/a.py")]
    plan = plan_changes({"new/a.py": A, "other": B}, {}, None)
    pair_moves(plan, {}, trashed)
    assert _moves(plan) == [("20260101T000000Z/old/a.py", "new/a.py", True)]
    assert [op.path for op in plan.ops if op.kind == "write"] == ["other"]


def test_a_move_is_not_counted_as_a_deletion() -> None:
    ancestor = {f"src/{i}.py": f(10 + i, 1_000 + i) for i in range(25)} | {"train.py": C}
    local = {"lib": FOLDER} | {f"lib/{i}.py": f(10 + i, 1_000 + i) for i in range(25)} | {"train.py": C}
    plan = plan_changes(local, ancestor, None)
    assert wipe_reason(plan, ancestor, WipeGuard(share=0.5)) is not None  # 25 of 26 deleted, as a plan alone
    pair_moves(plan, ancestor)
    assert len(_moves(plan)) == 25 and not plan.deletions
    assert wipe_reason(plan, ancestor, WipeGuard(share=0.5)) is None


# --------------------------------------------------------------------------------------------- wipes


def _tree(count: int, *, hidden: int = 0, folder: str = "src") -> dict[str, Entry]:
    tree = {f"{folder}/f{i}.py": f(10, i + 1) for i in range(count)}
    tree |= {f".hidden{i}": f(10, 10_000 + i) for i in range(hidden)}
    return tree


def _deleting(paths: list[str], ancestor: dict[str, Entry]) -> Plan:
    return Plan(ops=[Op("delete", p, None, ancestor[p]) for p in paths])


def test_nothing_deleted_is_never_a_wipe() -> None:
    assert wipe_reason(Plan(ops=[Op("write", "a", V1, None)]), {}, WipeGuard()) is None
    ancestor = {f"d{i}": FOLDER for i in range(50)}
    plan = Plan(ops=[Op("rmdir", p, None, FOLDER) for p in ancestor])
    assert wipe_reason(plan, ancestor, WipeGuard()) is None  # folders are not counted


def test_deleting_a_generated_folder_or_most_files_is_everyday_work() -> None:
    ancestor = _tree(300, folder="generated") | _tree(41, folder="src")
    assert (
        wipe_reason(
            _deleting([p for p in ancestor if p.startswith("generated/")], ancestor), ancestor, WipeGuard()
        )
        is None
    )
    ancestor = _tree(30) | _tree(12, folder="docs")
    assert (
        wipe_reason(_deleting([p for p in ancestor if p.startswith("src/")], ancestor), ancestor, WipeGuard())
        is None
    )


def test_the_project_folder_left_nearly_empty_is_a_wipe() -> None:
    # Only gpubox's config and a couple of files left after many went.
    ancestor = _tree(13) | {"gpubox.toml": V1, "hosts.toml": V2}
    reason = wipe_reason(_deleting([f"src/f{i}.py" for i in range(11)], ancestor), ancestor, WipeGuard())
    assert reason is not None and "nearly empty" in reason
    # ...but a small project losing a few files is not.
    ancestor = _tree(5)
    assert wipe_reason(_deleting([f"src/f{i}.py" for i in range(3)], ancestor), ancestor, WipeGuard()) is None


def test_the_project_folder_left_empty_is_a_wipe() -> None:
    # `rm -rf *` spares dot files: the folder is still "empty" of the project.
    ancestor = _tree(5, hidden=2)
    reason = wipe_reason(
        _deleting([p for p in ancestor if p.startswith("src/")], ancestor), ancestor, WipeGuard()
    )
    assert reason is not None and "empty" in reason
    # A one-file project deleting its file is not; a file arriving in the same batch means work goes on.
    assert wipe_reason(_deleting(["a"], {"a": V1}), {"a": V1}, WipeGuard()) is None
    plan = _deleting(list(_tree(5)), _tree(5))
    plan.ops.append(Op("write", "fresh.py", V1, None))
    assert wipe_reason(plan, _tree(5), WipeGuard()) is None


@pytest.mark.parametrize(
    ("deleting", "tracked", "share", "min_files", "wipe"),
    [
        (95, 100, 0.95, 10, True),  # 95 %: nearly everything
        (90, 100, 0.95, 10, False),  # 90 %
        (9, 9 + 1, 0.5, 10, False),  # fewer than min_files
        (10, 20, 0.5, 10, True),
        (300, 341, 0.95, 10, False),  # the generated folder of the issue
    ],
)
def test_share_threshold(deleting: int, tracked: int, share: float, min_files: int, wipe: bool) -> None:
    ancestor = _tree(tracked - 1) | {"keep/me.py": V1}
    doomed = [p for p in ancestor if p.startswith("src/")][:deleting]
    reason = wipe_reason(_deleting(doomed, ancestor), ancestor, WipeGuard(share=share, min_files=min_files))
    assert (reason is not None) == wipe, reason
    if reason is not None:
        assert f"{deleting} of {tracked} tracked files" in reason


def test_deletions_held_before_count_as_gone() -> None:
    ancestor = _tree(20) | {"keep/me.py": V1}
    first = [p for p in ancestor if p.startswith("src/")][:15]
    assert wipe_reason(_deleting(first, ancestor), ancestor, WipeGuard()) is None
    rest = [p for p in ancestor if p not in first]
    reason = wipe_reason(_deleting(rest[:1], ancestor), ancestor, WipeGuard(), gone_already=first + rest[1:])
    assert reason is not None and "empty" in reason


def test_a_vanished_checkout_holds_the_deletions_under_it() -> None:
    ancestor = _tree(100) | _tree(3, folder="vendor/lib")
    plan = _deleting(["vendor/lib/f0.py", "vendor/lib/f1.py", "vendor/lib/f2.py"], ancestor)
    assert wipe_reason(plan, ancestor, WipeGuard()) is None
    reason = wipe_reason(plan, ancestor, WipeGuard(), vanished_checkouts=["vendor/lib"])
    assert reason is not None and "vendor/lib" in reason
    # A deletion elsewhere is not held for it; the project's own checkout covers every deletion.
    assert (
        wipe_reason(
            _deleting(["src/f0.py"], ancestor), ancestor, WipeGuard(), vanished_checkouts=["vendor/lib"]
        )
        is None
    )
    assert (
        wipe_reason(_deleting(["src/f0.py"], ancestor), ancestor, WipeGuard(), vanished_checkouts=[""])
        is not None
    )


def test_the_explicit_brakes_are_off_unless_set() -> None:
    ancestor = _tree(200)
    plan = _deleting(list(ancestor)[:60], ancestor)
    assert wipe_reason(plan, ancestor, WipeGuard()) is None
    assert "max_delete_count" in (wipe_reason(plan, ancestor, WipeGuard(max_count=50)) or "")
    assert "max_delete_share" in (wipe_reason(plan, ancestor, WipeGuard(max_share=0.25)) or "")
    assert wipe_reason(plan, ancestor, WipeGuard(max_count=60, max_share=0.3)) is None


def test_holding_keeps_everything_but_the_deletions() -> None:
    ancestor = {"old": FOLDER, "old/a": V1, "b": V2}
    plan = plan_changes({"b": V3, "c": V1}, ancestor, None)
    hold_deletions(plan)
    assert [(op.kind, op.path) for op in plan.ops] == [("write", "b"), ("write", "c")]
    assert [(op.kind, op.path) for op in plan.held] == [("delete", "old/a"), ("rmdir", "old")]


# ------------------------------------------------------------------------------------ tracked_under


@pytest.mark.parametrize(
    "folders", [1, 20]
)  # one pass over the ancestor, and the sorted walk of many folders
def test_tracked_under_finds_what_lies_under_changed_folders_only(folders: int) -> None:
    ancestor: dict[str, Entry] = {
        "data": FOLDER,
        "data/x": f(),
        "data2": FOLDER,
        "data2/y": f(),
        "top.py": f(),
    }
    for index in range(folders):
        ancestor |= {f"d{index}": FOLDER, f"d{index}/sub": FOLDER, f"d{index}/sub/file": f()}
    changed = ["data", "top.py", "new.py", *(f"d{index}" for index in range(folders))]
    expected = {"data/x"} | {p for index in range(folders) for p in (f"d{index}/sub", f"d{index}/sub/file")}
    # "data2" is not under "data": a folder's prefix ends with its slash. A file, or a path the ancestor does not
    # know, has nothing under it.
    assert tracked_under(changed, ancestor) == expected
    assert tracked_under(["top.py", "new.py", "data/x"], ancestor) == set()


def test_the_facts_index_stays_as_large_as_the_ancestor_through_a_day_of_saves() -> None:
    """Under `gpubox up` every save gives a file new facts (its mtime). The index used to keep an empty set for
    each old one: thousands of saves, thousands of entries that never went away (found by a soak's tracemalloc)."""
    ancestor = {"a.py": Entry("f", 10, 1, False), "b.py": Entry("f", 10, 1, False), "d": FOLDER}
    index = FactsIndex(ancestor)
    assert len(index) == 1 and index.get((10, 1, False)) == {"a.py", "b.py"}
    for save in range(2, 5002):
        upsert = {"a.py": Entry("f", 10 + save % 7, save, False)}
        index.update(ancestor, upsert, [])
        ancestor.update(upsert)
    assert len(index) == 2
    assert index.get((10, 1, False)) == {"b.py"} and index.get((10 + 5001 % 7, 5001, False)) == {"a.py"}
    index.update(ancestor, {}, ["a.py", "b.py"])
    assert len(index) == 0 and index.get((10, 1, False)) == set()
