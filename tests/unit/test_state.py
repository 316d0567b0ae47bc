"""The state database: schema versions, migrations, two processes at once, supervisors, billing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gpubox.errors import StateError, UsageError
from gpubox.state import MIGRATIONS, State, open_state


def test_fresh_database_is_at_the_latest_schema_in_wal_mode(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        assert state.schema_version == len(MIGRATIONS)
        assert state.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert state.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_default_location_follows_gpubox_home(tmp_path: Path) -> None:
    with open_state() as state:
        assert state.path == Path(os.environ["GPUBOX_HOME"]) / "state" / "gpubox.db"
    assert oct((Path(os.environ["GPUBOX_HOME"]) / "state").stat().st_mode & 0o777) == "0o700"


def test_migrations_apply_in_order_and_keep_data(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    v1 = ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)
    with State(path, v1) as state:
        state.db.execute("INSERT INTO notes(text) VALUES ('kept')")
        assert state.schema_version == 1
    v2 = (*v1, "ALTER TABLE notes ADD COLUMN tag TEXT; UPDATE notes SET tag = 'migrated'")
    with State(path, v2) as state:
        assert state.schema_version == 2
        assert state.db.execute("SELECT text, tag FROM notes").fetchall() == [("kept", "migrated")]


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    v1 = ("CREATE TABLE notes (id INTEGER PRIMARY KEY)",)
    State(path, v1).close()
    broken = (*v1, "CREATE TABLE more (x INTEGER); INSERT INTO nowhere VALUES (1)")
    with pytest.raises(StateError, match="no such table: nowhere"):
        State(path, broken)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 1
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'more'").fetchall() == []


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(
        StateError, match=r"has schema 99, newer than this gpubox knows \(7\): upgrade gpubox"
    ):
        State(path)


def test_garbage_file_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="cannot be used"):
        State(path)


def test_two_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    State(path).close()
    writer = textwrap.dedent(
        f"""
        import sys
        from gpubox.state import State
        from pathlib import Path
        state = State(Path({str(path)!r}))
        for i in range(150):
            state.open_billing(f"h{{sys.argv[1]}}-{{i}}", 1.0, at=i)
            state.close_billing(f"h{{sys.argv[1]}}-{{i}}", at=i + 1)
            state.record_host(f"h{{sys.argv[1]}}-{{i}}", "ssh")
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", writer, str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    with State(path) as state:
        assert len(state.billing_intervals()) == 450
        assert all(ended is not None for *_, ended in state.billing_intervals())


def test_supervisor_claims(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        state.claim_supervisor("box", os.getpid(), detached=False)
        assert state.supervisor("box").pid == os.getpid()  # type: ignore[union-attr]
        sleeper = subprocess.Popen(["sleep", "30"])
        try:
            with pytest.raises(UsageError, match="box is already up in gpubox process"):
                state.claim_supervisor("box", sleeper.pid, detached=True)
        finally:
            sleeper.kill()
            sleeper.wait()
        # A dead holder is cleared on sight.
        state.release_supervisor("box", os.getpid())
        state.claim_supervisor("box", sleeper.pid, detached=True)
        assert state.supervisor("box") is None
        assert state.supervisors() == []


def test_billing_intervals_open_once_and_close(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        first = state.open_billing("box", 2.0, at=100.0)
        assert state.open_billing("box", 2.0, at=200.0) == first
        state.close_billing("box", at=460.0)
        assert state.billing_intervals("box") == [("box", 2.0, 100.0, 460.0)]


def test_host_records_and_probe_cache(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        state.record_host("box", "ssh", "me@h:22")
        state.record_host("box", "ssh")
        state.record_probe("box", {"os": "Debian"})
        record = state.host("box")
        assert record is not None
        assert (record.endpoint, record.probe) == ("me@h:22", {"os": "Debian"})
        assert state.host("other") is None


def test_many_openers_of_a_brand_new_file_all_succeed(tmp_path: Path) -> None:
    """Processes racing to create the state file must all get a usable database, none "database is locked"."""
    opener = "import sys; from pathlib import Path; from gpubox.state import State; State(Path(sys.argv[1])).close()"
    for attempt in range(5):
        path = tmp_path / f"fresh-{attempt}.db"
        procs = [
            subprocess.Popen([sys.executable, "-c", opener, str(path)], stderr=subprocess.PIPE, text=True)
            for _ in range(8)
        ]
        errors = [err for proc in procs for err in [proc.communicate(timeout=60)[1]] if proc.returncode != 0]
        assert errors == []
        with State(path) as state:
            assert state.schema_version == len(MIGRATIONS)
