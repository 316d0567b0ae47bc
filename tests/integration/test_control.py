"""One-shot commands ride the connection `gpubox up` holds, through its control socket, and step around it when
it is gone, stale or not theirs: through the real command line on the real local host."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpubox.remote.control import ControlServer, control_path, open_control_agent
from gpubox.remote.providers.local import LocalSshd
from gpubox.state import pid_alive
from tests.support.cli import run_gpubox

pytestmark = pytest.mark.integration

# The command line, in a process that says at the end whether it loaded paramiko: a command that rode the held
# connection never does, one that connected on its own always does. The line before says whether it loaded the
# sync engine: a `run` or `sync` that the holder's flush barrier served never does.
_TELLS_PARAMIKO = """
import sys
from gpubox.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("sync engine loaded:", "gpubox.sync.engine" in sys.modules, file=sys.stderr)
print("paramiko loaded:", "paramiko" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def _gpubox_telling(project: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], bool]:
    result, paramiko, _engine = _gpubox_telling_all(project, *argv)
    return result, paramiko


def _gpubox_telling_all(project: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], bool, bool]:
    """The command's result, whether it loaded paramiko, whether it loaded the sync engine."""
    result = subprocess.run(
        [sys.executable, "-c", _TELLS_PARAMIKO, *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    told = result.stderr.strip().splitlines()
    assert told[-1].startswith("paramiko loaded: "), result.stderr
    assert told[-2].startswith("sync engine loaded: "), result.stderr
    result.stderr = "\n".join([*told[:-2], told[-1]]) + "\n"
    return result, told[-1].endswith("True"), told[-2].endswith("True")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "ctl"
    folder.mkdir()
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (folder / ".gitignore").write_text("hosts.toml\n")
    (folder / "train.py").write_text("print('trained')\n")
    return folder


def _project_id(project: Path) -> str:
    document = json.loads(run_gpubox("runs", "--json", cwd=project).stdout)
    return str(document["project"]["id"])


def _up(project: Path) -> int:
    up = run_gpubox("up", "local", "--detach", "--no-services", cwd=project)
    assert up.returncode == 0, up.stderr
    status = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    (local,) = status["hosts"]
    return int(local["supervisor"]["pid"])


def test_one_shot_commands_ride_the_held_connection(project: Path) -> None:
    _up(project)
    socket_path = control_path("local", _project_id(project))
    # pytest's folders make a state folder too deep for a Unix socket address: the descriptor route is used.
    assert len(os.fsencode(socket_path)) > 100
    info = socket_path.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700

    run, loaded = _gpubox_telling(project, "run", "-f", "--", "python", "train.py")
    assert "trained" in run.stdout and not loaded, run.stderr
    listing, loaded = _gpubox_telling(project, "runs", "--json")
    runs = json.loads(listing.stdout)["runs"]
    assert [r["state"] for r in runs] == ["succeeded"] and not loaded
    logs, loaded = _gpubox_telling(project, "logs", runs[0]["id"])
    assert logs.stdout == "trained\n" and not loaded
    status, loaded = _gpubox_telling(project, "status", "--json")
    assert json.loads(status.stdout)["hosts"][0]["up"] and not loaded

    # What needs an SSH channel of its own still works from a command that rode: it connects for that.
    shell = run_gpubox("ssh", "local", "--", "cat", "train.py", cwd=project)
    assert shell.returncode == 0 and shell.stdout == "print('trained')\n", shell.stderr

    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0
    assert not socket_path.exists()


def test_a_killed_holder_leaves_a_socket_that_commands_step_around(project: Path) -> None:
    pid = _up(project)
    socket_path = control_path("local", _project_id(project))
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert socket_path.exists(), "SIGKILL leaves the socket file behind: the case this test is about"

    listing, loaded = _gpubox_telling(project, "runs", "--json")
    assert json.loads(listing.stdout)["runs"] == [] and loaded  # connected on its own, said nothing odd
    assert listing.stderr.strip().splitlines() == ["paramiko loaded: True"]

    # The next `up` takes the stale socket over, and commands ride again.
    _up(project)
    listing, loaded = _gpubox_telling(project, "runs", "--json")
    assert not loaded
    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0


def test_a_socket_of_another_user_is_never_used(project: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("handing the socket to another user needs root")
    _up(project)
    socket_path = control_path("local", _project_id(project))
    os.chown(socket_path, 65534, 65534)
    listing, loaded = _gpubox_telling(project, "runs", "--json")
    assert loaded, "a socket this user does not own must not be connected to"
    assert json.loads(listing.stdout)["runs"] == []
    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0


def test_commands_still_work_after_the_holders_link_dropped(project: Path) -> None:
    _up(project)
    project_id = _project_id(project)
    # Every session process of this test's local sshd ends (not another test's): the holder's link and its spare
    # agent with it.
    server = LocalSshd().running()
    assert server is not None
    subprocess.run(["pkill", "-KILL", "-P", str(server.pid)], check=False)
    listing, _loaded = _gpubox_telling(project, "runs", "--json")
    assert json.loads(listing.stdout)["runs"] == []
    # Once the holder has reconnected, commands ride it again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        agent = open_control_agent("local", project_id)
        if agent is not None:
            agent.close()
            _, loaded = _gpubox_telling(project, "runs", "--json")
            if not loaded:
                break
        time.sleep(0.5)
    else:
        pytest.fail("commands never rode the holder again after its link came back")
    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0


def test_a_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    server = ControlServer(folder / "x.sock", lambda: pytest.fail("no agent is started"), label="h")
    with pytest.raises(OSError, match="not a private folder"):
        server.start()


def test_run_and_sync_use_the_holders_flush_barrier(project: Path, tmp_path: Path) -> None:
    """A file saved just before `gpubox run -f` or `gpubox sync` is on the host when they go on, though neither
    scans the folder: the holder's watcher is made to catch up first (its flush barrier)."""
    _up(project)
    host = tmp_path / "remote"
    for round_ in range(8):
        # Written the instant before the command starts, as an editor's save followed by a keystroke would be.
        (project / "train.py").write_text(f"print('round {round_}')\n")
        run, paramiko, engine = _gpubox_telling_all(project, "run", "-f", "--", "python3", "train.py")
        assert run.stdout.splitlines()[-1] == f"round {round_}", run.stdout
        assert not paramiko and not engine, run.stderr
    for round_ in range(8):
        (project / f"data-{round_}.txt").write_text(f"saved {round_}\n")
        (project / "train.py").write_text(f"print('sync {round_}')\n")
        synced, paramiko, engine = _gpubox_telling_all(project, "sync")
        assert synced.stdout.startswith("sync local: "), synced.stdout
        assert not paramiko and not engine, synced.stderr
        assert (host / f"data-{round_}.txt").read_text() == f"saved {round_}\n"
        assert (host / "train.py").read_text() == f"print('sync {round_}')\n"
    document = json.loads(_gpubox_telling_all(project, "sync", "--json")[0].stdout)
    assert (document["errors"], document["held_deletions"]) == ([], [])
    # The barrier's marker file never reaches the host, nor stays behind here.
    assert not list(host.glob(".gpubox-flush-*")) and not list(project.glob(".gpubox-flush-*"))

    # `run` also compares with the host's listing, as it does on its own: a file edited there is named (and
    # used), one removed there is sent again.
    (host / "train.py").write_text("print('edited on the host')\n")
    (host / "data-0.txt").unlink()
    run, _paramiko, engine = _gpubox_telling_all(project, "run", "-f", "--", "python3", "train.py")
    assert not engine
    assert "edited on the host" in run.stdout
    assert "1 file changed on local since gpubox sent them" in run.stdout, run.stdout
    assert (host / "data-0.txt").read_text() == "saved 0\n"
    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0


def test_a_holder_that_does_not_sync_leaves_the_pass_to_the_command(project: Path, tmp_path: Path) -> None:
    up = run_gpubox("up", "local", "--detach", "--no-services", "--no-sync", cwd=project)
    assert up.returncode == 0, up.stderr
    (project / "train.py").write_text("print('not synced live')\n")
    run, paramiko, engine = _gpubox_telling_all(project, "run", "-f", "--", "python3", "train.py")
    assert run.stdout.splitlines()[-1] == "not synced live"
    assert engine and not paramiko, run.stderr  # its own pass, still on the held connection
    synced, _paramiko, engine = _gpubox_telling_all(project, "sync")
    assert engine and synced.stdout.startswith("sync local: 0 sent"), synced.stdout
    assert run_gpubox("down", "local", "--yes", cwd=project).returncode == 0
