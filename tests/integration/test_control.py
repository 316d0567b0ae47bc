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
# connection never does, one that connected on its own always does.
_TELLS_PARAMIKO = """
import sys
from gpubox.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("paramiko loaded:", "paramiko" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def _gpubox_telling(project: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], bool]:
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
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("paramiko loaded: "), result.stderr
    return result, last.endswith("True")


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
