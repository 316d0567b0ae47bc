"""Shared fixtures: every test gets its own GPUBOX_HOME and HOME, and real sshd servers on demand."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import hosthome
from tests.support.sshd import SshServer

pytest_plugins = ["tests.support.netns"]


@pytest.fixture(scope="session", autouse=True)
def session_host_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The test hosts' home for this session (see tests/support/hosthome.py), for every sshd and `local`."""
    home = hosthome.make_session_host_home(tmp_path_factory.getbasetemp() / "host-home")
    before = os.environ.get(hosthome.ENV_VARIABLE)
    os.environ[hosthome.ENV_VARIABLE] = str(home)
    yield home
    if before is None:
        os.environ.pop(hosthome.ENV_VARIABLE, None)
    else:
        os.environ[hosthome.ENV_VARIABLE] = before


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Keep tests off the developer's ~/.ssh, ssh-agent and gpubox state; leave no gpubox process behind."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    gpubox_home = tmp_path / "gpubox-home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPUBOX_HOME", str(gpubox_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    # A developer's real cloud keys must never send a test to the internet.
    for variable in ("LAMBDA_API_KEY", "VAST_API_KEY", "RUNPOD_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    yield home
    _stop_leftovers(gpubox_home)


def _stop_leftovers(gpubox_home: Path) -> None:
    """A failed test must not leave a detached supervisor or the private sshd running."""
    import signal

    from gpubox.remote.providers.local import LocalSshd
    from gpubox.state import holder_alive, open_state

    database = gpubox_home / "state" / "gpubox.db"
    if database.exists():
        with open_state(database) as state:
            for supervisor in state.supervisors():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(supervisor.pid, signal.SIGKILL)
    for record in (gpubox_home / "state" / "sweeps").glob("*.json"):
        # A sweep's scheduler (its trials are runs on the test host, short by design, left to end).
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, ProcessLookupError):
            row = json.loads(record.read_text())
            if isinstance(row["pid"], int) and holder_alive(row["pid"], row.get("token")):
                os.kill(row["pid"], signal.SIGKILL)
    local = gpubox_home / "state" / "local-sshd"
    if (local / "server.json").exists():
        LocalSshd(local).stop()


def _need_sshd() -> None:
    if not (shutil.which("sshd") or os.path.exists("/usr/sbin/sshd")):
        pytest.fail("OpenSSH sshd is missing: the README's test command installs openssh-server")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """A real OpenSSH sshd on 127.0.0.1 with a random port and keys made for this test."""
    _need_sshd()
    server = SshServer(tmp_path / "sshd").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[object]:
    """Start as many loopback sshd servers as a test needs: ``sshd_factory("name")``."""
    _need_sshd()
    servers: list[SshServer] = []

    def make(name: str) -> SshServer:
        server = SshServer(tmp_path / f"sshd-{name}").start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
