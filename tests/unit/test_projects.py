"""Projects on this machine and on a host, without a host: how the root is found, the project id and the default
folder, run references, the first-sync question, several projects holding one host in the state database, and
one billing interval for a host that several projects hold."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from gpubox import paths
from gpubox.actions.project import count_first_sync, first_sync_question, root_note
from gpubox.config import HostConfig, load_project
from gpubox.config.project import locate_project
from gpubox.cost import BillingHold, HourlyPrice
from gpubox.errors import ConfigError, UsageError
from gpubox.state import State
from gpubox.train.runs import RunInfo, check_run_ref
from tests.unit.test_cost_ledger import Clock, _hold_for

PRICE = HourlyPrice(2.0, "price_per_hour in hosts.toml")


# ---------------------------------------------------------------------------------------- finding the root


def test_the_root_is_found_like_git_finds_a_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sub = repo / "app" / "src" / "deep"
    sub.mkdir(parents=True)
    assert locate_project(sub) == (sub, "cwd")
    (repo / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git is a file
    assert locate_project(sub) == (repo, "git")
    (repo / "app" / "hosts.toml").write_text("")
    assert locate_project(sub) == (repo / "app", "hosts.toml")
    (repo / "gpubox.toml").write_text("")
    # gpubox.toml wins over a nearer hosts.toml or work tree: it is what marks a gpubox project.
    assert locate_project(sub) == (repo, "gpubox.toml")


def test_a_folder_a_gpubox_process_holds_is_the_root_of_its_subfolders(tmp_path: Path) -> None:
    held = tmp_path / "ml"
    sub = held / "src"
    sub.mkdir(parents=True)
    assert locate_project(sub, held=[tmp_path / "other", held]) == (held, "held")
    assert locate_project(tmp_path, held=[held]) == (tmp_path, "cwd")
    project = load_project(start=sub, held=[held])
    assert (project.root, project.subfolder) == (held, "src")
    assert root_note(project) == f"project {held} (a gpubox process holds it up)"
    assert root_note(load_project(start=held)) is None


def test_a_folder_synced_before_is_the_root_of_its_unmarked_subfolders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    synced = tmp_path / "home" / "ml"
    sub = synced / "src" / "deep"
    sub.mkdir(parents=True)
    assert locate_project(sub, synced=[tmp_path / "other", synced]) == (synced, "synced")
    assert locate_project(synced, synced=[synced]) == (synced, "cwd")  # the folder itself: nothing to say
    # A nearer marker, or a folder a gpubox holds, still wins.
    assert locate_project(sub, held=[synced / "src"], synced=[synced]) == (synced / "src", "held")
    (synced / "src" / ".git").mkdir()
    assert locate_project(sub, synced=[synced]) == (synced / "src", "git")
    # The home folder synced once (after the question it asks) does not swallow every folder under it.
    assert locate_project(synced, synced=[tmp_path / "home"]) == (synced, "cwd")
    data = synced / "data"
    data.mkdir()
    project = load_project(start=data, synced=[synced])
    assert (project.root, project.subfolder) == (synced, "data")
    assert root_note(project) == f"project {synced} (gpubox has synced it from there before)"


def test_a_project_id_is_stable_per_folder_and_differs_between_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "ml", tmp_path / "b" / "ml"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    ids = {load_project(first).id, load_project(second).id}
    assert len(ids) == 2 and all(len(i) == 6 for i in ids)
    assert load_project(first).id == load_project(first).id
    assert load_project(first).folder_name == f"ml-{load_project(first).id}"
    host = HostConfig("box")
    assert host.remote_project_dir(load_project(first)) == f"~/gpubox/ml-{load_project(first).id}"
    assert host.remote_project_dir("ml") == "~/gpubox/ml"  # a bare name: the older layout
    assert HostConfig("box", remote_dir="/srv/x").remote_project_dir(load_project(first)) == "/srv/x"
    # A RunPod pod keeps only its volume when stopped: the project (and the outputs it writes) goes there.
    pod = HostConfig("pod", provider="runpod", gpu="RTX 4090")
    assert pod.remote_project_dir(load_project(first)) == f"/workspace/gpubox/ml-{load_project(first).id}"


def test_the_machine_id_is_made_once_even_by_processes_at_the_same_time() -> None:
    code = "from gpubox import paths; print(paths.machine_id())"
    import sys

    started = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    seen = {process.communicate()[0].strip() for process in started}
    assert len(seen) == 1 and seen == {paths.machine_id()}
    (paths.state_dir() / "machine-id").write_text("garbage\n")
    fresh = paths.machine_id()
    assert fresh != seen.pop() and paths.machine_id() == fresh


def test_run_cwd_must_stay_inside_the_project(tmp_path: Path) -> None:
    for good, kept in (('"src/train"', "src/train"), ('"."', ""), ('"./a//b/"', "a/b")):
        (tmp_path / "gpubox.toml").write_text(f"[run]\ncwd = {good}\n")
        assert load_project(tmp_path).run.cwd == kept
    for bad in ('"../elsewhere"', '"/abs"', '"~/x"', '"a/../../b"', "3"):
        (tmp_path / "gpubox.toml").write_text(f"[run]\ncwd = {bad}\n")
        with pytest.raises(ConfigError, match=r"gpubox.toml:2: run.cwd: expected"):
            load_project(tmp_path)


# --------------------------------------------------------------------------------------------------- runs


def test_a_run_is_named_by_its_id_or_its_label_never_by_a_path() -> None:
    for ok in ("r-7", "baseline", "lr=0.1 bs=32", "proj#2"):
        assert check_run_ref(ok) == ok
    bad_ones = (
        "../../etc/passwd",
        "r-1;reboot",
        "r-12345678901",
        "m-3",
        "a/b",
        " padded",
        "x\ny",
        "'quoted'",
    )
    for bad in bad_ones:
        with pytest.raises(UsageError, match="is not a run id"):
            check_run_ref(bad)


def test_a_run_belongs_to_its_project_by_id_or_by_the_folder_it_started_in() -> None:
    def run(**fields: object) -> RunInfo:
        return RunInfo("r-1", "box", "true", "succeeded", None, None, 0, **fields)  # type: ignore[arg-type]

    folders = ["/home/u/gpubox/ml"]
    assert run(project="abc123").belongs_to("abc123", folders)
    # A folder has one owner at a time: runs that ran there go with it (taken over from a project gone away).
    assert run(project="other1", cwd="/home/u/gpubox/ml").belongs_to("abc123", folders)
    assert not run(project="other1", cwd="/elsewhere", project_folder="/elsewhere").belongs_to(
        "abc123", folders
    )
    assert run(cwd="/home/u/gpubox/ml").belongs_to("abc123", folders)
    assert run(cwd="/home/u/gpubox/ml/src").belongs_to("abc123", folders)
    assert not run(cwd="/home/u/gpubox/ml-2").belongs_to("abc123", folders)
    assert not run().belongs_to("abc123", folders)


# -------------------------------------------------------------------------------------- the first sync


def test_only_an_unmarked_home_root_or_huge_folder_is_asked_about(
    tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = HostConfig("box")
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.py").write_text("x = 1\n")
    assert first_sync_question(load_project(small), host) is None
    (isolated_home / "notes.txt").write_text("n\n")
    asked = first_sync_question(load_project(isolated_home), host)
    assert asked is not None and asked.startswith(f"{isolated_home} is your home folder")
    assert asked.endswith("send 1 file (0.0 MB) to box?")
    root = first_sync_question(load_project(Path("/")), host)
    assert root == "/ is the whole filesystem, not a project folder: send it to box?"
    many = tmp_path / "many"
    many.mkdir()
    for index in range(20_001):
        (many / f"f{index}").touch()
    counted = count_first_sync(load_project(many))
    assert (counted.files, counted.more) == (20_001, True)
    assert "would send at least 20,001 files (0.0 MB)" in str(first_sync_question(load_project(many), host))
    (many / "gpubox.toml").write_text("")
    assert first_sync_question(load_project(many), host) is None  # marked: a project as it is
    (many / "gpubox.toml").unlink()
    (many / ".gitignore").write_text("f*\n")  # what sync would not send is not counted
    assert first_sync_question(load_project(many), host) is None


# -------------------------------------------------------------------------- several projects, one host


def test_several_projects_hold_one_host_each_once(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with State(tmp_path / "s.db") as state:
            state.claim_supervisor(
                "box", os.getpid(), detached=True, project="aaa111", root="/a", folder="~/x-a"
            )
            state.claim_supervisor(
                "box", sleeper.pid, detached=True, project="bbb222", root="/b", folder="~/x-b"
            )
            with pytest.raises(UsageError, match=f"box is already up in gpubox process {os.getpid()}"):
                state.claim_supervisor("box", sleeper.pid, detached=True, project="aaa111")
            lead, other = state.host_supervisors("box")
            assert (lead.pid, other.pid) == (os.getpid(), sleeper.pid)  # the one holding it longest leads
            assert state.supervisor("box") == lead and state.supervisor("box", "bbb222") == other
            assert other.project_name == "b" and [s.host for s in state.supervisors()] == ["box", "box"]
            state.record_monitor("box", sleeper.pid, {"sync": {"batches": 2}})
            state.record_monitor("box", os.getpid(), {"autostop": None})
            assert state.monitor("box") is not None and state.monitor("box").report == {"autostop": None}  # type: ignore[union-attr]
            assert state.monitor("box", sleeper.pid).report == {"sync": {"batches": 2}}  # type: ignore[union-attr]
            state.record_tunnels(
                "box", os.getpid(), [("web", 18000, 8000, "/")], project="aaa111", service_key="k-a"
            )
            state.record_tunnels(
                "box", sleeper.pid, [("web", 18001, 8001, "/")], project="bbb222", service_key="k-b"
            )
            assert [(t.local_port, t.service_key) for t in state.live_tunnels("box", "bbb222")] == [
                (18001, "k-b")
            ]
            assert len(state.live_tunnels("box")) == 2
            state.record_project_folder("box", "aaa111", "/a", "~/x-a")
            assert state.project_folder("box", "aaa111") == "~/x-a" and state.project_folders("box") == {
                "aaa111": "~/x-a"
            }
        sleeper.kill()
        sleeper.wait()
        with State(tmp_path / "s.db") as state:
            assert [s.project for s in state.host_supervisors("box")] == ["aaa111"]  # the dead one is dropped
            assert len(state.live_tunnels("box")) == 1
    finally:
        if sleeper.poll() is None:
            sleeper.kill()


def test_a_host_held_by_several_projects_is_billed_once(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    wall, mono = Clock(1_800_000_000.0), Clock(100.0)
    other = subprocess.Popen(["sleep", "600"])
    try:

        def hold(pid: int) -> BillingHold:
            return BillingHold("box", PRICE, pid=pid, wall=wall, elapsed=mono, state_path=db).open()

        first = hold(os.getpid())
        _hold_for(first, wall, mono, 600)
        second = hold(other.pid)  # another project comes up on the same host: it joins the interval
        assert second.interval_id == first.interval_id and second.held_seconds() == pytest.approx(600)
        for _ in range(10):  # both beat it, a minute apart
            _hold_for(first, wall, mono, 30)
            _hold_for(second, wall, mono, 30)
        first.close(hand_to=other.pid)  # the first lets go: the interval goes on with the second
        with State(db) as state:
            (interval,) = state.billing("box")
            assert interval.open and interval.holder_pid == other.pid and interval.held_seconds == 1200
        _hold_for(second, wall, mono, 300)
        second.close()  # the last one out closes it
        with State(db) as state:
            (interval,) = state.billing("box")
        assert not interval.open and interval.held_seconds == 1500
        assert interval.spent_usd() == pytest.approx(2.0 * 1500 / 3600)
    finally:
        other.kill()
        other.wait()


def test_the_machine_id_survives_threads_reading_it() -> None:
    seen: set[str] = set()

    def read() -> None:
        seen.add(paths.machine_id())

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 1
