"""Shared fixtures: every test gets its own GPUBOX_HOME and HOME, and real sshd servers on demand."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sshd import SshServer

pytest_plugins = ["tests.support.netns"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep tests off the developer's ~/.ssh, ssh-agent and gpubox state."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPUBOX_HOME", str(tmp_path / "gpubox-home"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    return home


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
