"""Projects and the host, through the real command line on the real local host: each project owns its folder on
the host, an empty project just works, the project is found from a subfolder, several projects hold one host at
once, runs belong to their project (ids, names, `logs` and `stop` without one), and a folder of gpubox's older
layout is adopted by its own project with its files and runs."""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubox.state import open_state, pid_alive
from tests.support.cli import assert_one_line_error, run_gpubox
from tests.support.hosthome import host_home

pytestmark = pytest.mark.integration


def _host_home() -> Path:
    """The local host's home folder as its sessions see it: the test session's own (tests/support/hosthome.py)."""
    return host_home()


@pytest.fixture
def made() -> Iterator[list[Path]]:
    """Host folders a test makes under the host's ~/gpubox (the default place), removed afterwards."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _ok(*argv: str, cwd: Path, timeout: float = 180) -> str:
    result = run_gpubox(*argv, cwd=cwd, timeout=timeout)
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result.stdout


def _folder_of(project: Path) -> str:
    """The project's folder on the local host, as `status --json` shows it."""
    status = json.loads(_ok("status", "--json", cwd=project))
    (local,) = [h for h in status["hosts"] if h["name"] == "local"]
    return str(local["folder"])


def _on_host(folder: str) -> Path:
    return _host_home() / folder.removeprefix("~/") if folder.startswith("~/") else Path(folder)


def _down(project: Path) -> None:
    run_gpubox("down", "local", "--yes", cwd=project)


def test_an_empty_project_comes_up_and_every_command_works(tmp_path: Path, made: list[Path]) -> None:
    project = tmp_path / "ml"
    project.mkdir()
    try:
        up = _ok("up", "--detach", "--no-services", cwd=project)
        folder_line = next(line for line in up.splitlines() if line.startswith("  ✓ folder "))
        folder = folder_line.split()[2]
        made.append(_on_host(folder))
        # Its own folder, named after the project and its id, made at once although nothing was sent.
        assert folder.startswith("~/gpubox/ml-") and len(folder) == len("~/gpubox/ml-") + 6
        assert folder_line.endswith("(this project's; created)")
        assert "  ✓ sync   0 sent" in up
        assert _on_host(folder).is_dir()
        assert _folder_of(project) == folder
        real = str(_on_host(folder))
        assert _ok("ssh", "local", "--", "pwd", cwd=project).strip() == real
        ran = _ok("run", "-f", "--", "pwd", cwd=project)
        assert ran.splitlines()[-1] == real
        assert "sync local: 0 sent" in _ok("sync", cwd=project)
        assert _ok("pull", cwd=project).startswith("pull local: ")
        assert _ok("logs", cwd=project).strip() == real  # no id: this project's latest run
        listed = json.loads(_ok("runs", "--json", cwd=project))["runs"]
        assert [r["command"] for r in listed] == ["pwd"] and listed[0]["this_project"]
    finally:
        _down(project)


def test_two_projects_of_the_same_name_never_share_a_folder_or_runs(tmp_path: Path, made: list[Path]) -> None:
    first, second = tmp_path / "a" / "ml", tmp_path / "b" / "ml"
    for project, who in ((first, "A"), (second, "B")):
        project.mkdir(parents=True)
        (project / "train.py").write_text(
            f"import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/{who}.txt', 'w').write('{who}')\n"
            f"print('I am project {who}')\n"
        )
    try:
        folders = [_folder_of(p) for p in (first, second)]
        assert folders[0] != folders[1] and all(f.startswith("~/gpubox/ml-") for f in folders)
        made.extend(_on_host(f) for f in folders)
        for project, who in ((first, "A"), (second, "B")):
            ran = _ok("run", "-f", "--", "python3", "train.py", cwd=project)
            assert ran.splitlines()[-1] == f"I am project {who}"
            assert "synced local: 1 sent" in ran  # each its own folder: nothing of the other's is there
        _ok("pull", cwd=first)
        assert sorted(p.name for p in (first / "outputs").iterdir()) == ["A.txt"]  # nothing of B's
        mine = json.loads(_ok("runs", "--json", cwd=first))["runs"]
        assert [r["command"] for r in mine] == ["python3 train.py"] and mine[0]["this_project"]
        every = json.loads(_ok("runs", "--all-projects", "--json", cwd=first))["runs"]
        ours = {r["id"]: r["this_project"] for r in every if r["command"] == "python3 train.py"}
        assert sorted(ours.values()) == [False, True] and len(ours) == 2  # two ids, one per run
        table = _ok("runs", "--all-projects", cwd=first).splitlines()
        assert table[0].split()[:3] == ["ID", "PROJECT", "NAME"]
        assert any(line.split()[1:3] == ["*", "ml"] for line in table[1:])
    finally:
        _down(first)


def test_a_folder_another_project_owns_is_refused_naming_both(tmp_path: Path) -> None:
    shared = tmp_path / "remote"
    first, second = tmp_path / "one" / "proj", tmp_path / "two" / "proj"
    for project in (first, second):
        project.mkdir(parents=True)
        (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{shared}"\n')
        (project / "code.py").write_text(f"# {project}\n")
    try:
        assert "2 sent" in _ok("sync", cwd=first)  # code.py and hosts.toml
        for argv in (("sync",), ("sync", "--dry-run"), ("run", "--", "true"), ("up", "--detach"), ("pull",)):
            line = assert_one_line_error(run_gpubox(*argv, cwd=second), 2)
            assert line == (
                f"gpubox: {shared} on local belongs to project proj ({first}), not to this project "
                f"({second}): give each project its own remote_dir in hosts.toml"
            ), argv
        assert (shared / "code.py").read_text() == f"# {first}\n"
    finally:
        _down(first)


def test_from_a_subfolder_the_project_is_found_and_runs_start_in_the_matching_folder(tmp_path: Path) -> None:
    project = tmp_path / "livesync"
    sub = project / "src" / "extra"
    sub.mkdir(parents=True)
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (sub / "e1.py").write_text("import os\nprint(os.getcwd())\n")
    remote = tmp_path / "remote"
    try:
        ran = run_gpubox("run", "-f", "--", "python3", "e1.py", cwd=sub)
        assert ran.returncode == 0, ran.stderr
        assert f"gpubox: project {project} (its hosts.toml)" in ran.stderr.splitlines()
        assert ran.stdout.splitlines()[-1] == str(remote / "src" / "extra")
        assert "(in src/extra/)" in ran.stdout.splitlines()[-2]
        assert (remote / "src" / "extra" / "e1.py").exists() and not (remote / "e1.py").exists()
        assert _ok("ssh", "local", "--", "pwd", cwd=sub).strip() == str(remote / "src" / "extra")
        # [run] cwd pins where runs and shells start, wherever gpubox is called from.
        (project / "gpubox.toml").write_text('[run]\ncwd = "."\n')
        pinned = run_gpubox("run", "-f", "--", "pwd", cwd=sub)
        assert pinned.stdout.splitlines()[-1] == str(remote)
        assert f"gpubox: project {project} (its gpubox.toml)" in pinned.stderr.splitlines()
        assert _ok("ssh", "local", "--", "pwd", cwd=sub).strip() == str(remote)
    finally:
        _down(project)


def test_an_unmarked_project_synced_once_is_found_from_its_subfolders(
    tmp_path: Path, made: list[Path]
) -> None:
    project = tmp_path / "plain"
    sub = project / "src"
    sub.mkdir(parents=True)
    (sub / "train.py").write_text("import os\nprint(os.getcwd())\n")
    # No gpubox.toml, hosts.toml or .git: nothing marks it but that it is synced from there.
    assert "sync local: 2 sent" in _ok("sync", cwd=project)
    folder = _folder_of(project)
    made.append(_on_host(folder))
    # Synced from its root once: from a subfolder it is the same project, never one of its own.
    ran = run_gpubox("run", "-f", "--", "python3", "train.py", cwd=sub)
    assert ran.returncode == 0, ran.stderr
    assert f"gpubox: project {project} (gpubox has synced it from there before)" in ran.stderr.splitlines()
    assert ran.stdout.splitlines()[-1] == str(_on_host(folder) / "src")
    assert _folder_of(sub) == folder
    with open_state() as state:
        assert sorted(state.project_roots()).count(str(sub)) == 0


def test_a_renamed_project_is_told_of_its_old_folder_by_a_one_shot_command(
    tmp_path: Path, made: list[Path]
) -> None:
    before, after = tmp_path / "exp", tmp_path / "exp-2"
    before.mkdir()
    (before / "train.py").write_text("print('hi')\n")
    try:
        assert "sync local: 1 sent" in _ok("sync", cwd=before)
        before.rename(after)
        ran = run_gpubox("run", "-f", "--", "python3", "train.py", cwd=after)
        assert ran.returncode == 0 and ran.stdout.splitlines()[-1] == "hi", ran.stderr
        (line,) = [x for x in ran.stderr.splitlines() if "gone from this machine" in x]
        found = re.fullmatch(
            rf"gpubox: (\S+) there was the folder of {re.escape(str(before))}, gone from this machine: if this "
            r'project was moved from there, remote_dir = "\1" in hosts.toml keeps its files and runs',
            line,
        )
        assert found, line
        made.append(_on_host(found[1]))
        made.append(_on_host(_folder_of(after)))
        assert (_on_host(found[1]) / "train.py").is_file()
        # Said once, when this project's own folder is made: not again.
        again = run_gpubox("run", "-f", "--", "python3", "train.py", cwd=after)
        assert again.returncode == 0 and "gone from this machine" not in again.stderr, again.stderr
    finally:
        _down(after)


def test_the_home_folder_and_a_huge_folder_ask_first(tmp_path: Path, isolated_home: Path) -> None:
    (isolated_home / "notes.txt").write_text("mine\n")
    refused = assert_one_line_error(run_gpubox("sync", cwd=isolated_home), 2)
    assert refused == (
        f"gpubox: {isolated_home} is your home folder and has no gpubox.toml, hosts.toml or git work tree: send "
        "1 file (0.0 MB) to local: asking needs a terminal; pass --yes to go ahead"
    )
    big = tmp_path / "data"
    big.mkdir()
    for index in range(11):  # 11 sparse files of 95 MB: over 1 GB, each under the 100 MB file limit
        with open(big / f"part{index:02d}.bin", "wb") as handle:
            handle.truncate(95_000_000)
    for argv in (("sync",), ("run", "--", "true"), ("up", "--detach", "--no-services")):
        line = assert_one_line_error(run_gpubox(*argv, cwd=big), 2)
        assert line.startswith(
            f"gpubox: the first sync of {big} to local would send at least 11 files (1.0 GB)"
        )
        assert line.endswith("asking needs a terminal; pass --yes to go ahead"), argv
    # Nothing reached the host; a folder with a marker is a project as it is.
    assert not json.loads(_ok("status", "--json", cwd=big))["hosts"][0]["up"]
    (big / "gpubox.toml").write_text("[sync]\nignore = ['*.bin']\n")
    assert run_gpubox("sync", "--dry-run", cwd=big).returncode == 0
    _down(big)


def test_logs_and_stop_without_an_id_and_runs_by_name(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    try:
        _ok("ssh", "local", "--", "true", cwd=project)  # the host is up: only the run is missing
        assert assert_one_line_error(run_gpubox("logs", cwd=project), 2).startswith(
            "gpubox: this project has no runs on local yet"
        )
        _ok("run", "--name", "first", "--", "sh", "-c", "echo one; sleep 60", cwd=project)
        _ok("run", "--name", "second", "--", "sh", "-c", "echo two; sleep 60", cwd=project)
        time.sleep(0.5)
        latest = run_gpubox("logs", cwd=project)
        assert latest.stdout == "two\n" and "this project's latest run" in latest.stderr
        assert _ok("logs", "first", cwd=project) == "one\n"
        several = assert_one_line_error(run_gpubox("stop", cwd=project), 2)
        assert several.startswith("gpubox: this project has 2 active runs on local: ")
        assert "(first)" in several and "(second)" in several
        assert _ok("stop", "first", "--grace", "1", cwd=project).split(": ")[1].startswith("stopped")
        only = _ok("stop", "--grace", "1", cwd=project)
        assert "(second) on local: stopped" in only
        table = _ok("runs", cwd=project).splitlines()
        assert table[0].split()[:3] == ["ID", "NAME", "STATE"]
        assert [line.split()[1:3] for line in table[1:]] == [["first", "stopped"], ["second", "stopped"]]
        assert assert_one_line_error(run_gpubox("stop", cwd=project), 2) == (
            "gpubox: this project has no active run on local: nothing to stop"
        )
    finally:
        _down(project)


def _open_intervals(host: str) -> int:
    with open_state() as state:
        return sum(1 for interval in state.billing(host) if interval.open)


def test_several_projects_hold_one_host_and_down_leaves_the_others(tmp_path: Path) -> None:
    web = '[services.web]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8130\n'
    off = "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
    projects = []
    for name in ("alpha", "beta"):
        project = tmp_path / name
        project.mkdir()
        (project / "hosts.toml").write_text(
            f'[hosts.local]\nremote_dir = "{tmp_path / ("remote-" + name)}"\n'
        )
        (project / "gpubox.toml").write_text(web + off)
        projects.append(project)
    alpha, beta = projects
    try:
        _ok("up", "--detach", cwd=alpha, timeout=600)
        # alpha lets go without `down`: its server keeps running, and is accounted for once beta holds the host.
        _ok("up", "--stop", cwd=alpha)
        up = _ok("up", "--detach", cwd=beta, timeout=600)
        assert "  ✓ web          http://127.0.0.1:" in up
        refused = assert_one_line_error(run_gpubox("open", "web", "--print", cwd=alpha), 1)
        assert refused == (
            f"gpubox: web on local is tunnelled for project beta ({beta}), not for this project ({alpha}): "
            "`gpubox up local` here starts this project's own"
        )
        deadline = time.monotonic() + 60
        while "of remote-alpha" not in (status := _ok("status", cwd=beta)) and time.monotonic() < deadline:
            time.sleep(1)
        assert "! web of remote-alpha-" in status and "its project let go of local" in status
        _ok("up", "--detach", cwd=alpha, timeout=600)
        held = json.loads(_ok("status", "--json", cwd=alpha))["hosts"][0]
        assert sorted(p["name"] for p in held["projects"]) == ["alpha", "beta"]
        assert [p["this_project"] for p in held["projects"]] == [False, True]  # beta has held it longest
        assert _open_intervals("local") == 1  # the host is billed once, whoever holds it
        urls = {p.name: _ok("open", "web", "--print", cwd=p).strip() for p in projects}
        assert urls["alpha"] != urls["beta"]

        _ok("run", "--name", "long", "--", "sleep", "20", cwd=alpha)
        down = _ok("down", "local", cwd=alpha)
        assert "(long: sleep 20) keeps running on this machine after `down`" in down
        assert "stopped web on local" in down
        assert down.splitlines()[-1] == (
            "local keeps running: project beta still holds it (the last project to let go of it stops the host)"
        )
        beta_holder = json.loads(_ok("status", "--json", cwd=beta))["hosts"][0]["supervisor"]["pid"]
        assert pid_alive(beta_holder) and _open_intervals("local") == 1
        last = _ok("down", "local", cwd=beta)
        assert "stopped the local sshd" in last and not pid_alive(beta_holder)
        assert _open_intervals("local") == 0
        # alpha, whose outputs could not come home at its own `down`, hears who stopped the host and where.
        again = run_gpubox("down", "local", "--yes", cwd=alpha)
        assert re.search(
            rf"outputs not pulled from local \(the local host is not running \(stopped \d+:\d\d:\d\d ago by "
            rf"gpubox in {re.escape(str(beta))}\): `gpubox up local` starts it\)",
            again.stdout + again.stderr,
        ), again.stdout + again.stderr
        # Runs stay listed when the host is down: as gpubox last saw them.
        after = run_gpubox("runs", cwd=alpha)
        assert after.returncode == 0 and "its runs as gpubox last saw them" in after.stderr
        assert any(line.split()[1:3] == ["long", "running"] for line in after.stdout.splitlines()[1:])
    finally:
        for project in projects:
            _down(project)


def test_an_older_gpubox_folder_is_adopted_with_its_files_and_runs(tmp_path: Path, made: list[Path]) -> None:
    """A project synced by gpubox before project ids (to ~/gpubox/<name>, a run started there) keeps that folder,
    its files and its runs; another project of the same name gets a folder of its own."""
    from gpubox.config import load_hosts, load_project
    from gpubox.remote.agent import calls
    from gpubox.remote.session import connect_host
    from gpubox.sync.engine import Syncer

    name = f"old{uuid.uuid4().hex[:8]}"
    project = tmp_path / name
    project.mkdir()
    (project / "train.py").write_text("print('old layout')\n")
    legacy = _host_home() / "gpubox" / name
    made.append(legacy)
    config = load_project(project)
    host = load_hosts(project).get("local")
    # What gpubox did before: the folder named after the project alone, runs without a project id.
    session = connect_host(host, name, probe=False)
    try:
        assert session.remote_dir == f"~/gpubox/{name}"
        Syncer(session, config).full()
        old_run = calls.run_start(
            session.agent, project=session.remote_dir, shell="echo old", name=None, env={}, venv=None
        )
    finally:
        session.close()
    assert (legacy / "train.py").exists() and "project" not in json.loads(
        (_host_home() / ".gpubox" / "runs" / old_run["id"] / "spec.json").read_text()
    )
    try:
        synced = _ok("sync", cwd=project)
        assert "0 sent" in synced and "conflict" not in synced
        assert _folder_of(project) == f"~/gpubox/{name}"
        assert sorted(p.name for p in legacy.iterdir()) == ["train.py"]
        listed = json.loads(_ok("runs", "--json", cwd=project))["runs"]
        assert [r["id"] for r in listed] == [old_run["id"]] and listed[0]["this_project"]
        up = _ok("up", "--detach", "--no-services", cwd=project)
        assert f"  ✓ folder ~/gpubox/{name} (this project's)" in up
        # A second project of the same name is not given the old folder.
        other = tmp_path / "elsewhere" / name
        other.mkdir(parents=True)
        (other / "train.py").write_text("print('other')\n")
        assert "1 sent" in _ok("sync", cwd=other)
        theirs = _folder_of(other)
        made.append(_on_host(theirs))
        assert theirs.startswith(f"~/gpubox/{name}-")
        assert (legacy / "train.py").read_text() == "print('old layout')\n"
        assert json.loads(_ok("runs", "--json", cwd=other))["runs"] == []
    finally:
        _down(project)


def test_a_moved_project_lets_go_and_can_take_its_folder_back(tmp_path: Path, made: list[Path]) -> None:
    """Moving (or renaming) a project folder makes it a new project to gpubox: the supervisor of the old path
    lets go of the host, `up` of the new path names the folder left behind, and `remote_dir` takes it over with
    its files and runs."""
    before, after = tmp_path / "proj", tmp_path / "proj-renamed"
    before.mkdir()
    (before / "train.py").write_text("print('hi')\n")
    try:
        up = _ok("up", "--detach", "--no-services", cwd=before)
        folder = next(line.split()[2] for line in up.splitlines() if line.startswith("  ✓ folder "))
        made.append(_on_host(folder))
        ran = _ok("run", "-f", "--name", "first", "--", "python3", "train.py", cwd=before)
        assert ran.splitlines()[-1] == "hi"
        holder = json.loads(_ok("status", "--json", cwd=before))["hosts"][0]["supervisor"]["pid"]
        before.rename(after)
        deadline = time.monotonic() + 30
        while pid_alive(holder) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not pid_alive(holder)  # the folder it held the host for is gone: it let go
        again = _ok("up", "--detach", "--no-services", cwd=after)
        made.append(_on_host(next(line.split()[2] for line in again.splitlines() if "✓ folder" in line)))
        assert (
            f"  · {_on_host(folder)} there was the folder of {before}, gone from this machine: if this project "
            f'was moved from there, remote_dir = "{_on_host(folder)}" in hosts.toml keeps its files and runs'
        ) in again.splitlines()
        assert json.loads(_ok("runs", "--json", cwd=after))["runs"] == []
        _ok("up", "--stop", cwd=after)
        (after / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{folder}"\n')
        taken = _ok("up", "--detach", "--no-services", cwd=after)
        assert (
            f"  ✓ folder {folder} (remote_dir in hosts.toml; taken over where it is, with its files and runs)"
            in (taken.splitlines())
        )
        assert [r["name"] for r in json.loads(_ok("runs", "--json", cwd=after))["runs"]] == ["first"]
    finally:
        _down(after if after.exists() else before)
