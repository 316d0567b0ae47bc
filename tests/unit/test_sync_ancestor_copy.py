"""The sync ancestor's generation number, its copy beside the lock file, and the note of unflushed writes: a copy
is used only at the generation it was taken at, whoever changed the rows since."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gpubox.config import SyncConfig
from gpubox.state import MIGRATIONS, State
from gpubox.sync.ancestor_copy import AncestorCopy
from gpubox.sync.folder_index import FolderIndex
from gpubox.sync.pending import PendingNote
from gpubox.sync.scan import Entry

ROWS = [
    ("a.py", ("f", 3, 17, True, "")),
    ("d\udcfe", ("d", 0, 0, False, "")),
    ("l", ("l", 0, 0, False, "a.py")),
]


def test_every_change_to_an_ancestor_moves_its_generation_and_only_its_own(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        assert state.ancestor_generation("box", "p") is None  # never had a row
        before, after = state.update_ancestor("box", "p", ROWS, [])
        assert before is None and after is not None
        assert state.ancestor_at("box", "p")[1] == after
        again = state.update_ancestor("box", "p", [("b.py", ("f", 1, 2, False, ""))], ["a.py"])
        assert again[0] == after and again[1] not in (None, after)
        state.update_ancestor("box", "other", ROWS, [])
        assert state.ancestor_generation("box", "p") == again[1]
    # A writer that is not gpubox's code (an older gpubox, a hand-run DELETE) moves it too: the triggers.
    raw = sqlite3.connect(tmp_path / "s.db")
    raw.execute("DELETE FROM sync_ancestors WHERE host = 'box' AND project = 'p'")
    raw.commit()
    raw.close()
    with State(tmp_path / "s.db") as state:
        assert state.ancestor_generation("box", "p") not in (None, again[1])
        assert state.ancestor("box", "p") == {}


def test_an_ancestor_written_before_generations_gets_one_at_the_upgrade(tmp_path: Path) -> None:
    with State(tmp_path / "s.db", MIGRATIONS[:8]) as old:
        old.db.execute(
            "INSERT INTO sync_ancestors VALUES ('box', 'p', X'61', 'f', 1, 2, 0, X''), ('box', 'p', X'62', 'f', 1, 2, 0, X'')"
        )
    with State(tmp_path / "s.db") as state:
        assert state.ancestor_generation("box", "p") is not None
        assert set(state.ancestor("box", "p")) == {"a", "b"}


def test_the_copy_is_used_only_at_its_generation_and_for_its_project(tmp_path: Path) -> None:
    ancestor = {path: Entry(*row) for path, row in ROWS}
    copy = AncestorCopy(tmp_path / "x.ancestor", "box", "p")
    copy.keep(ancestor, 41)
    assert AncestorCopy(tmp_path / "x.ancestor", "box", "p").read(41) == ancestor
    assert AncestorCopy(tmp_path / "x.ancestor", "box", "p").read(42) is None
    assert AncestorCopy(tmp_path / "x.ancestor", "box", "q").read(41) is None
    assert AncestorCopy(tmp_path / "x.ancestor", "other", "p").read(41) is None
    copy.keep({}, 50)
    assert AncestorCopy(tmp_path / "x.ancestor", "box", "p").read(50) == {}


def test_a_torn_or_altered_copy_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "x.ancestor"
    AncestorCopy(path, "box", "p").keep({path: Entry(*row) for path, row in ROWS}, 7)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    assert AncestorCopy(path, "box", "p").read(7) is None
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert AncestorCopy(path, "box", "p").read(7) is None
    path.write_bytes(b"")
    assert AncestorCopy(path, "box", "p").read(7) is None


def test_the_folder_index_is_read_only_at_its_generation_settings_and_project_and_never_torn(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.folders"
    settings = SyncConfig()
    records = {"": (b"d" * 16, ["src"], [".git"], [".env"], [("big.bin", 9)], [("out", "/etc")])}
    index = FolderIndex(path, "box", "p", settings)
    index.keep(records, 7)
    assert FolderIndex(path, "box", "p", settings).read(7) == records
    assert FolderIndex(path, "box", "p", settings).read(8) is None
    assert FolderIndex(path, "box", "q", settings).read(7) is None
    other = FolderIndex(path, "box", "p", SyncConfig(ignore=("data/",)))
    assert other.token != index.token and other.read(7) is None
    data = path.read_bytes()
    for torn in (data[:-3], data[:-1] + bytes([data[-1] ^ 1]), b"", b"[1, 2\n"):
        path.write_bytes(torn)
        assert FolderIndex(path, "box", "p", settings).read(7) is None


def test_the_pending_note_keeps_the_boot_each_batch_was_sent_under(tmp_path: Path) -> None:
    note = PendingNote(tmp_path / "x.pending")
    assert not note.exists() and note.read() == ({}, set())
    note.note({"a": Entry("f", 1, 2)}, "boot-1")
    note.note({"a": Entry("f", 3, 4), "b": Entry("l", target="a")}, "boot-1")
    assert note.read() == ({"a": Entry("f", 3, 4), "b": Entry("l", target="a")}, {"boot-1"})
    with open(note.path, "a") as handle:
        handle.write('{"c": ["f", 1, 2, false, ""]}\n{"torn": ["f", 1')  # an older gpubox's line, a torn one
    entries, boots = note.read()
    assert set(entries) == {"a", "b", "c"} and boots == {"boot-1", None}
    note.clear()
    assert not note.exists()
