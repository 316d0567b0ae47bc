"""gpubox against hosts in network namespaces: several hosts, a bastion, and a link that goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, run_gpubox
from tests.support.netns import NetnsHost, NetnsHostsFactory
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _entry(name: str, host: NetnsHost, **extra: str) -> str:
    lines = [
        f"[hosts.{name}]",
        f'hostname = "{host.ip}"',
        f'user = "{host.server.user}"',
        f'identity_file = "{host.server.client_key}"',
        "accept_new = true",
        "connect_timeout = 3",
    ]
    lines += [f'{key} = "{value}"' for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def test_each_namespace_host_is_a_separate_machine(tmp_path: Path, netns_hosts: NetnsHostsFactory) -> None:
    hosts = netns_hosts(3)
    project = tmp_path / "project"
    project.mkdir()
    (project / "hosts.toml").write_text("".join(_entry(f"n{i}", h) for i, h in enumerate(hosts)))
    for index, host in enumerate(hosts):
        result = run_gpubox("ssh", f"n{index}", "--", "ip -o -4 addr show dev eth0", cwd=project)
        assert result.returncode == 0, result.stderr
        assert f"{host.ip}/24" in result.stdout
        assert all(other.ip not in result.stdout for other in hosts if other is not host)
    listing = json.loads(run_gpubox("hosts", "--json", cwd=project).stdout)
    assert [h["name"] for h in listing["hosts"]] == ["n0", "n1", "n2", "local"]


def test_proxyjump_reaches_a_host_only_the_bastion_can_see(
    tmp_path: Path, netns_hosts: NetnsHostsFactory, isolated_home: Path
) -> None:
    (bastion,) = netns_hosts(1)
    # An sshd on the namespace's own loopback: unreachable from here except through the bastion.
    hidden = SshServer(tmp_path / "hidden", listen="127.0.0.1", port=2222, netns=bastion.netns).start()
    try:
        (isolated_home / ".ssh" / "config").write_text(
            f"Host bastion\n  HostName {bastion.ip}\n  User {bastion.server.user}\n"
            f"  IdentityFile {bastion.server.client_key}\n\n"
            f"Host hidden-gpu\n  HostName 127.0.0.1\n  Port 2222\n  User {hidden.user}\n"
            f"  IdentityFile {hidden.client_key}\n  ProxyJump bastion\n"
        )
        project = tmp_path / "project"
        project.mkdir()
        (project / "hosts.toml").write_text(
            f'[hosts.gpu]\nhostname = "hidden-gpu"\naccept_new = true\nremote_dir = "{tmp_path / "remote"}"\n'
        )
        result = run_gpubox("ssh", "gpu", "--", "ip -o -4 addr show", cwd=project)
        assert result.returncode == 0, result.stderr
        assert bastion.ip in result.stdout  # it ran inside the bastion's namespace
        up = run_gpubox("up", "gpu", "--detach", "--no-services", cwd=project)
        assert up.returncode == 0, up.stderr
        assert "✓ connected" in up.stdout and "no NVIDIA GPU" in up.stdout
        assert run_gpubox("down", "gpu", cwd=project).returncode == 0
    finally:
        hidden.stop()


def test_host_behind_a_dead_link_is_exit_3(tmp_path: Path, netns_hosts: NetnsHostsFactory) -> None:
    (host,) = netns_hosts(1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "hosts.toml").write_text(_entry("far", host))
    host.link_down()
    try:
        line = assert_one_line_error(run_gpubox("ssh", "far", "--", "true", cwd=project), 3)
        assert line == f"gpubox: cannot reach {host.server.user}@{host.ip}: timed out after 3 s"
    finally:
        host.link_up()
    assert run_gpubox("ssh", "far", "--", "true", cwd=project).returncode == 0
