"""The state database: schema versions, migrations, two processes at once, supervisors, billing, and a database
written by an older gpubox read back unchanged."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from gpubox.errors import StateError, UsageError
from gpubox.state import (
    DIED_REASON,
    MIGRATIONS,
    AncestorEntry,
    BillingInterval,
    BudgetAlert,
    HostRecord,
    InstanceRecord,
    MonitorReport,
    PricedInterval,
    RunRecord,
    State,
    Supervisor,
    TunnelRecord,
    open_state,
    process_token,
)


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
        StateError,
        match=rf"has schema 99, newer than this gpubox knows \({len(MIGRATIONS)}\): upgrade gpubox",
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
        assert state.billing_intervals("box") == [PricedInterval("box", 2.0, 100.0, 460.0)]


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


# A database written by gpubox at commit 431ca71 (the last state.py before the state/ package), as
# `sqlite3 .dump` prints it, one row in every table; LIVE_PID and LIVE_TOKEN stand for this test's own
# process, so the rows that only count while their process lives are read back. Pids above 4,000,000 never
# run here (pid_max is at most 4,194,304 and far lower in practice).
DATABASE_OF_431CA71 = """
BEGIN TRANSACTION;
CREATE TABLE agent_python (
        host        TEXT PRIMARY KEY,
        configured  TEXT NOT NULL,
        executable  TEXT NOT NULL
    );
INSERT INTO "agent_python" VALUES('box','python3','/usr/bin/python3.11');
CREATE TABLE "billing" (
        id              INTEGER PRIMARY KEY,
        host            TEXT NOT NULL,
        price_per_hour  REAL,
        price_source    TEXT,
        estimate        INTEGER NOT NULL DEFAULT 0,
        started_at      REAL NOT NULL,
        held_seconds    REAL NOT NULL DEFAULT 0,
        heartbeat_at    REAL,
        ended_at        REAL,
        holder_pid      INTEGER,
        holder_token    TEXT,
        end_reason      TEXT
    );
INSERT INTO "billing" VALUES(1,'box',2.5,'hosts.toml',0,1699990000.0,3600.0,1699993600.0,1699993600.0,NULL,NULL,'released');
INSERT INTO "billing" VALUES(2,'cloud',NULL,NULL,0,1699995000.0,120.0,1699995120.0,NULL,4000001,'12345',NULL);
CREATE TABLE budget_alerts (
        scope       TEXT NOT NULL,
        threshold   INTEGER NOT NULL,
        budget_usd  REAL NOT NULL,
        spent_usd   REAL NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (scope, threshold, budget_usd)
    );
INSERT INTO "budget_alerts" VALUES('*',50,100.0,51.5,1699996000.0);
INSERT INTO "budget_alerts" VALUES('box',80,10.0,8.25,1699996100.0);
CREATE TABLE hosts (
        name        TEXT PRIMARY KEY,
        provider    TEXT NOT NULL,
        endpoint    TEXT,              -- user@host:port last connected
        probe       TEXT,              -- JSON of the last probe
        probed_at   REAL,
        updated_at  REAL NOT NULL
    );
INSERT INTO "hosts" VALUES('box','ssh','me@10.0.0.5:22','{"os": "Debian 12", "gpus": [{"name": "H100"}]}',1700000000.0,1700000000.0);
INSERT INTO "hosts" VALUES('cloud','lambda',NULL,NULL,NULL,1700000000.0);
CREATE TABLE instances (
        provider        TEXT NOT NULL,
        instance_id     TEXT NOT NULL,
        host            TEXT NOT NULL,
        name            TEXT NOT NULL,
        api_url         TEXT NOT NULL,
        launched_at     REAL NOT NULL,
        price_per_hour  REAL,
        gpu             TEXT,
        region          TEXT,
        ssh_host        TEXT,
        ssh_port        INTEGER,
        state           TEXT NOT NULL,
        ended_at        REAL,
        end_reason      TEXT,
        PRIMARY KEY (provider, instance_id)
    );
INSERT INTO "instances" VALUES('lambda','i-abc','cloud','gpubox-cloud','https://cloud.lambdalabs.com/api/v1',1699994000.0,1.29,'gpu_1x_a10','us-east-1','129.1.2.3',22,'running',NULL,NULL);
INSERT INTO "instances" VALUES('vast','77','old','gpubox-old','https://console.vast.ai/api/v0',1699980000.0,NULL,NULL,NULL,NULL,NULL,'ended',1699985000.0,'terminated by gpubox down');
CREATE TABLE monitors (
        host        TEXT PRIMARY KEY,
        pid         INTEGER NOT NULL,
        updated_at  REAL NOT NULL,
        report      TEXT NOT NULL
    );
INSERT INTO "monitors" VALUES('box',LIVE_PID,1699999990.0,'{"autostop": {"stops_at": 1700000600.0}}');
CREATE TABLE runs (
        host        TEXT NOT NULL,
        id          TEXT NOT NULL,
        command     TEXT NOT NULL,
        name        TEXT,
        state       TEXT NOT NULL,
        started_at  REAL,
        ended_at    REAL,
        exit_code   INTEGER,
        seen_at     REAL NOT NULL,
        PRIMARY KEY (host, id)
    );
INSERT INTO "runs" VALUES('box','r-3','python train.py','first','succeeded',1699991000.0,1699992000.0,0,1700000000.0);
INSERT INTO "runs" VALUES('box','r-4','python eval.py',NULL,'running',1699993000.0,NULL,NULL,1700000000.0);
CREATE TABLE shells (
        pid         INTEGER PRIMARY KEY,
        host        TEXT NOT NULL,
        token       TEXT,
        started_at  REAL NOT NULL
    );
INSERT INTO "shells" VALUES(LIVE_PID,'box','LIVE_TOKEN',1699999500.0);
CREATE TABLE supervisors (
        host        TEXT PRIMARY KEY,
        pid         INTEGER NOT NULL,
        started_at  REAL NOT NULL,
        detached    INTEGER NOT NULL,
        log_file    TEXT
    );
INSERT INTO "supervisors" VALUES('box',LIVE_PID,1699999000.5,1,'/tmp/up.log');
CREATE TABLE sync_ancestors (
        host        TEXT NOT NULL,
        project     TEXT NOT NULL,
        path        BLOB NOT NULL,
        kind        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        mtime_ns    INTEGER NOT NULL,
        executable  INTEGER NOT NULL,
        target      BLOB NOT NULL,
        PRIMARY KEY (host, project, path)
    ) WITHOUT ROWID;
INSERT INTO "sync_ancestors" VALUES('box','/home/me/proj',X'64FE','d',0,0,0,X'');
INSERT INTO "sync_ancestors" VALUES('box','/home/me/proj',X'6C696E6B','l',0,0,0,X'7472FF61696E2E7079');
INSERT INTO "sync_ancestors" VALUES('box','/home/me/proj',X'747261696E2E7079','f',120,1699000000123456789,1,X'');
CREATE TABLE tunnels (
        host        TEXT NOT NULL,
        service     TEXT NOT NULL,
        local_port  INTEGER NOT NULL,
        host_port   INTEGER NOT NULL,
        path        TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        PRIMARY KEY (host, service)
    );
INSERT INTO "tunnels" VALUES('box','jupyter',18888,8888,'/lab',LIVE_PID);
INSERT INTO "tunnels" VALUES('box','tensorboard',16006,6006,'/',LIVE_PID);
CREATE INDEX billing_host ON billing(host, ended_at);
CREATE INDEX instances_host ON instances(host, ended_at);
COMMIT;
"""
SCHEMA_OF_431CA71 = 7


def _database_of_431ca71(path: Path) -> None:
    raw = sqlite3.connect(path)
    script = DATABASE_OF_431CA71.replace("LIVE_PID", str(os.getpid()))
    raw.executescript(script.replace("LIVE_TOKEN", process_token(os.getpid()) or ""))
    raw.execute(f"PRAGMA user_version = {SCHEMA_OF_431CA71}")
    raw.close()


def _schema(path: Path) -> list[tuple[str, str, str, str]]:
    raw = sqlite3.connect(path)
    try:
        return sorted(raw.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
    finally:
        raw.close()


def test_a_fresh_database_has_the_schema_of_a_migrated_431ca71(tmp_path: Path) -> None:
    _database_of_431ca71(tmp_path / "old.db")
    State(tmp_path / "old.db").close()
    State(tmp_path / "new.db").close()
    assert _schema(tmp_path / "new.db") == _schema(tmp_path / "old.db")
    # 8: several projects on one host; 9: sync generations; 10: stopped instances kept
    assert len(MIGRATIONS) == SCHEMA_OF_431CA71 + 3


def test_a_database_of_431ca71_opens_migrated_and_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _database_of_431ca71(path)
    me = os.getpid()
    with State(path) as state:
        assert state.schema_version == len(MIGRATIONS)
        assert state.host("box") == HostRecord(
            "box", "ssh", "me@10.0.0.5:22", {"os": "Debian 12", "gpus": [{"name": "H100"}]}, 1700000000.0
        )
        assert state.host("cloud") == HostRecord("cloud", "lambda", None, None, None)
        assert state.resolved_python("box", "python3") == "/usr/bin/python3.11"
        assert state.supervisor("box") == Supervisor("box", me, 1699999000.5, True, "/tmp/up.log")
        assert state.monitor("box") == MonitorReport(1699999990.0, {"autostop": {"stops_at": 1700000600.0}})
        assert state.shells("box") == [me]
        assert state.live_tunnels() == [
            TunnelRecord("box", "jupyter", 18888, 8888, "/lab", me),
            TunnelRecord("box", "tensorboard", 16006, 6006, "/", me),
        ]
        assert state.ancestor("box", "/home/me/proj") == {
            "train.py": AncestorEntry("f", 120, 1699000000123456789, True, ""),
            "link": AncestorEntry("l", 0, 0, False, "tr\udcffain.py"),
            "d\udcfe": AncestorEntry("d", 0, 0, False, ""),
        }
        assert state.cached_runs() == [
            RunRecord("box", "r-3", "python train.py", "first", "succeeded", 1699991000.0, 1699992000.0, 0),
            RunRecord("box", "r-4", "python eval.py", None, "running", 1699993000.0, None, None),
        ]
        assert state.budget_alerts() == [
            BudgetAlert("*", 50, 100.0, 51.5, 1699996000.0),
            BudgetAlert("box", 80, 10.0, 8.25, 1699996100.0),
        ]
        rented = InstanceRecord(
            "lambda", "i-abc", "cloud", "gpubox-cloud", "https://cloud.lambdalabs.com/api/v1", 1699994000.0,
            1.29, "gpu_1x_a10", "us-east-1", "129.1.2.3", 22, "running", None, None,
        )  # fmt: skip
        assert state.current_instance("cloud") == rented
        assert state.kept_instances() == [rented]
        assert state.current_instance("old") is None
        ended = state.instance("vast", "77")
        assert ended is not None and (ended.state, ended.ended_at) == ("ended", 1699985000.0)
        assert state.billing(repair=False) == [
            BillingInterval(
                1, "box", 2.5, "hosts.toml", False, 1699990000.0, 3600.0, 1699993600.0, 1699993600.0, None,
                "released",
            ),
            BillingInterval(
                2, "cloud", None, None, False, 1699995000.0, 120.0, 1699995120.0, None, 4000001, None
            ),
        ]  # fmt: skip
        assert state.billing_intervals() == [PricedInterval("box", 2.5, 1699990000.0, 1699993600.0)]
        # Reading with repair on closes the interval of the dead holder at its last heartbeat, as before.
        (cloud,) = state.billing("cloud")
        assert (cloud.ended_at, cloud.end_reason) == (1699995120.0, DIED_REASON)
        # The holder of an older gpubox holds the host for a project it did not record.
        (held,) = state.host_supervisors("box")
        assert (held.project, held.root, held.folder) == ("", None, None)
        assert state.supervisor("box", "") == held and state.supervisor("box", "abc123") is None


def test_writes_make_the_same_database_as_a_migrated_431ca71(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writes of the script that made :data:`DATABASE_OF_431CA71`, through today's methods, make the same
    database as that one after its migration."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    with State(tmp_path / "new.db") as state:
        state.record_host("box", "ssh", "me@10.0.0.5:22")
        state.record_probe("box", {"os": "Debian 12", "gpus": [{"name": "H100"}]})
        state.record_host("cloud", "lambda")
        state.db.execute(
            "INSERT INTO supervisors(host, pid, started_at, detached, log_file) "
            "VALUES ('box', 4000000, 1699999000.5, 1, '/tmp/up.log')"
        )
        first = state.open_billing("box", 2.5, at=1699990000.0, price_source="hosts.toml", estimate=False)
        state.end_billing(first, 3600.0, at=1699993600.0, reason="released")
        second = state.open_billing("cloud", None, at=1699995000.0, holder_pid=4000001, holder_token="12345")
        state.heartbeat_billing(second, 120.0, at=1699995120.0)
        state.record_budget_alert("*", 50, 100.0, 51.5, at=1699996000.0)
        state.record_budget_alert("box", 80, 10.0, 8.25, at=1699996100.0)
        state.record_monitor("box", 4000000, {"autostop": {"stops_at": 1700000600.0}}, at=1699999990.0)
        state.db.execute(
            "INSERT INTO shells(pid, host, token, started_at) VALUES (4000002, 'box', '777', 1699999500.0)"
        )
        state.update_ancestor(
            "box",
            "/home/me/proj",
            [
                ("train.py", ("f", 120, 1699000000123456789, True, "")),
                ("link", ("l", 0, 0, False, "tr\udcffain.py")),
                ("d\udcfe", ("d", 0, 0, False, "")),
            ],
            [],
        )
        state.record_tunnels(
            "box", 4000000, [("jupyter", 18888, 8888, "/lab"), ("tensorboard", 16006, 6006, "/")]
        )
        state.cache_runs(
            "box",
            [
                RunRecord(
                    "box", "r-3", "python train.py", "first", "succeeded", 1699991000.0, 1699992000.0, 0
                ),
                RunRecord("box", "r-4", "python eval.py", None, "running", 1699993000.0, None, None),
            ],
        )
        state.record_resolved_python("box", "python3", "/usr/bin/python3.11")
        state.record_instance(
            provider="lambda",
            instance_id="i-abc",
            host="cloud",
            name="gpubox-cloud",
            api_url="https://cloud.lambdalabs.com/api/v1",
            price_per_hour=1.29,
            gpu="gpu_1x_a10",
            region="us-east-1",
            at=1699994000.0,
        )
        state.update_instance("lambda", "i-abc", instance_state="running", ssh_host="129.1.2.3", ssh_port=22)
        state.record_instance(
            provider="vast",
            instance_id="77",
            host="old",
            name="gpubox-old",
            api_url="https://console.vast.ai/api/v0",
            price_per_hour=None,
            at=1699980000.0,
        )
        state.end_instance("vast", "77", "terminated by gpubox down", at=1699985000.0)
        dump = _without_generations(state.db.iterdump())
    expected = DATABASE_OF_431CA71.replace("LIVE_PID,'box','LIVE_TOKEN'", "4000002,'box','777'")
    old = tmp_path / "old.db"
    raw = sqlite3.connect(old)
    raw.executescript(expected.replace("LIVE_PID", "4000000"))
    raw.execute(f"PRAGMA user_version = {SCHEMA_OF_431CA71}")
    raw.close()
    with State(old) as migrated:
        assert dump == _without_generations(migrated.db.iterdump())


def _without_generations(lines: Iterable[str]) -> str:
    """A dump without the sync ancestors' generation numbers, which start at a random number (migration 9)."""
    return "\n".join(line for line in lines if not line.startswith('INSERT INTO "sync_generations"'))


def test_a_listing_that_repeats_the_cache_writes_nothing(tmp_path: Path) -> None:
    from types import SimpleNamespace

    def run(state: str, exit_code: int | None) -> SimpleNamespace:
        return SimpleNamespace(
            id="r-1",
            command="echo",
            name=None,
            state=state,
            started_at=1.0,
            ended_at=None,
            exit_code=exit_code,
        )

    with State(tmp_path / "s.db") as state:
        state.cache_runs("h", [run("running", None)])
        before = state.db.total_changes
        state.cache_runs("h", [run("running", None)])
        assert state.db.total_changes == before  # nothing new: no write
        state.cache_runs("h", [run("succeeded", 0)])
        assert state.db.total_changes == before + 1
        assert [(r.id, r.state, r.exit_code) for r in state.cached_runs("h")] == [("r-1", "succeeded", 0)]
