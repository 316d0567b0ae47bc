"""The test hosts log in with a home of the session's own (tests/support/hosthome.py), and so can `local`.

sshd sets ``HOME`` from its ``SetEnv`` line after its own, so the agent's ``~``, a plain command's ``$HOME``
and a login shell all see the session's home; the envs and pip's cache are links into a shared cache.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gpubox.remote.providers.local import LocalSshd
from tests.support import hosthome
from tests.support.cli import run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


def _ssh(server: SshServer, command: str) -> str:
    result = subprocess.run(
        [
            "ssh",
            "-i",
            str(server.client_key),
            "-p",
            str(server.port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
            f"{server.user}@{server.host}",
            command,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_session_on_the_test_host_has_the_session_home(sshd: SshServer) -> None:
    home = hosthome.host_home()
    assert sshd.home == home and home != hosthome.real_home()
    assert _ssh(sshd, 'echo "$HOME"').strip() == str(home)
    assert _ssh(sshd, "python3 -c 'import os; print(os.path.expanduser(\"~\"))'").strip() == str(home)
    # A login shell reads the session home's ~/.profile, which ends in it.
    assert _ssh(sshd, "bash -lc 'echo \"$HOME\"; pwd'").split() == [str(home), str(home)]
    assert (home / ".gpubox" / "envs").resolve() == (hosthome.host_cache() / "envs").resolve()


def test_the_local_host_gets_the_session_home_and_runs_stay_there(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    try:
        run = run_gpubox("run", "-f", "--", "sh", "-c", 'echo "home=$HOME"', cwd=project, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"home={hosthome.host_home()}" in run.stdout
        run_id = re.search(r"started (r-\d+) on local", run.stderr + run.stdout).group(1)  # type: ignore[union-attr]
        assert (hosthome.host_home() / ".gpubox" / "runs" / run_id / "log").is_file()
    finally:
        run_gpubox("down", "local", cwd=project)


def test_local_restarts_its_sshd_when_the_home_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = LocalSshd(tmp_path / "local-sshd")
    first_home = tmp_path / "first"
    monkeypatch.setenv(hosthome.ENV_VARIABLE, str(first_home))
    try:
        first = server.ensure_running()
        assert server.ensure_running().pid == first.pid  # reused while nothing changed
        monkeypatch.setenv(hosthome.ENV_VARIABLE, str(tmp_path / "second"))
        second = server.ensure_running()
        assert second.pid != first.pid and second.home == str(tmp_path / "second")
        assert f'SetEnv "HOME={tmp_path / "second"}"' in (server.folder / "sshd_config").read_text()
    finally:
        server.stop()
