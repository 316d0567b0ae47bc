"""The namespace-host fixture itself: separate hosts, a cuttable link, latency injection, complete cleanup."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from pathlib import Path

import paramiko
import pytest

from tests.support.netns import NetemUnavailable, NetnsHost, NetnsHostsFactory, NetnsLab
from tests.support.sshd import SshServer

pytestmark = [pytest.mark.netns, pytest.mark.integration]

TIMEOUT = 5.0


@contextmanager
def ssh_to(host: NetnsHost, tmp_path: Path) -> Iterator[paramiko.SSHClient]:
    known_hosts = tmp_path / f"known_hosts-{host.netns}"
    known_hosts.write_text(host.known_hosts_line())
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with closing(client):
        client.connect(
            host.ip,
            port=host.port,
            username=host.server.user,
            key_filename=str(host.server.client_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=TIMEOUT,
            banner_timeout=TIMEOUT,
            auth_timeout=TIMEOUT,
        )
        yield client


def run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=TIMEOUT)
    output: str = stdout.read().decode()
    status = stdout.channel.recv_exit_status()
    assert status == 0, f"{command!r} exited {status}: {stderr.read().decode()}"
    return output


def root_state() -> str:
    """Namespaces, links, routes and qdiscs of the root namespace, for spotting leftovers."""
    commands = [
        ["ip", "netns", "list"],
        ["ip", "-o", "link"],
        ["ip", "-4", "route", "show", "table", "all"],
        ["tc", "qdisc", "show"],
    ]
    return "\n".join(subprocess.run(c, capture_output=True, text=True, check=True).stdout for c in commands)


def test_each_host_runs_its_sshd_in_its_own_namespace(netns_hosts: NetnsHostsFactory, tmp_path: Path) -> None:
    first, second = netns_hosts(2)
    assert first.netns != second.netns
    assert first.ip != second.ip
    for host, other in ((first, second), (second, first)):
        with ssh_to(host, tmp_path) as client:
            addresses = run(client, "ip -o -4 addr show")
        assert f"inet {host.ip}/24" in addresses
        assert f"inet {other.ip}/" not in addresses
        assert f"inet {host.gateway}/" not in addresses


def test_netns_pair_is_one_lab_with_a_subnet_per_host(netns_pair: tuple[NetnsHost, NetnsHost]) -> None:
    first, second = netns_pair
    subnets = {host.ip.rsplit(".", 1)[0] for host in (first, second)}
    assert len(subnets) == 2
    assert first.netns.rsplit("-", 1)[0] == second.netns.rsplit("-", 1)[0]


def test_two_labs_alive_at_once_do_not_collide(netns_hosts: NetnsHostsFactory, tmp_path: Path) -> None:
    (first,) = netns_hosts(1)
    (second,) = netns_hosts(1)
    assert first.ip.rsplit(".", 1)[0] != second.ip.rsplit(".", 1)[0]
    assert first.netns != second.netns
    for host in (first, second):
        with ssh_to(host, tmp_path) as client:
            assert host.ip in run(client, "ip -o -4 addr show")


def test_link_down_blackholes_new_connections_until_link_up(
    netns_hosts: NetnsHostsFactory, tmp_path: Path
) -> None:
    (host,) = netns_hosts(1)
    host.link_down()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection((host.ip, host.port), timeout=1.5).close()
    # A timeout, not a quick refusal or "no route": the packets were silently dropped.
    assert time.monotonic() - started >= 1.4

    host.link_up()
    with ssh_to(host, tmp_path) as client:
        assert run(client, "echo back").strip() == "back"


def test_netem_delays_round_trips_and_clear_removes_it(
    netns_hosts: NetnsHostsFactory, tmp_path: Path
) -> None:
    (host,) = netns_hosts(1)
    with ssh_to(host, tmp_path) as client:
        run(client, "true")
        try:
            host.netem(delay_ms=100)
        except NetemUnavailable as exc:
            pytest.skip(str(exc))
        try:
            assert "netem" in host.qdiscs()
            started = time.monotonic()
            run(client, "true")
            # Opening the channel and the exec request each wait for a reply: at least two delayed packets.
            assert time.monotonic() - started >= 0.18
        finally:
            host.clear_netem()
        assert "netem" not in host.qdiscs()
        run(client, "true")


def test_clear_netem_without_netem_is_a_no_op(netns_hosts: NetnsHostsFactory) -> None:
    (host,) = netns_hosts(1)
    host.clear_netem()
    assert "netem" not in host.qdiscs()


def test_exec_runs_inside_the_namespace(netns_hosts: NetnsHostsFactory) -> None:
    (host,) = netns_hosts(1)
    addresses = host.exec("ip", "-o", "-4", "addr", "show").stdout
    assert f"inet {host.ip}/24" in addresses
    assert f"inet {host.gateway}/" not in addresses


@pytest.mark.usefixtures("netns_available")
def test_closing_a_lab_removes_everything_it_made(tmp_path: Path) -> None:
    with ExitStack() as outlives_lab, NetnsLab(2, tmp_path / "lab") as lab:
        first, second = lab.hosts
        names = [*lab.namespaces, *lab.veths]
        assert all(name in root_state() for name in names)
        # Leave it in the worst state a test could: a session still running, one link cut, netem on.
        client = outlives_lab.enter_context(ssh_to(first, tmp_path))
        # Wait until the session runs its command, so closing meets it there rather than in its rc files.
        _stdin, stdout, _stderr = client.exec_command("echo started; exec sleep 60", timeout=TIMEOUT)
        assert stdout.readline().strip() == "started"
        second.link_down()
        with suppress(NetemUnavailable):
            second.netem(delay_ms=50, loss_percent=10)

    # Route and qdisc lines name their device, so the names cover those too; the subnets themselves may
    # already be reused by a lab of a concurrent test.
    state = root_state()
    for name in names:
        assert name not in state


@pytest.mark.usefixtures("netns_available")
def test_a_failed_start_cleans_up_what_it_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_start = SshServer.start

    def start_all_but_the_last(server: SshServer) -> SshServer:
        if server.netns and server.netns.endswith("-1"):
            raise RuntimeError("sshd refused to start")
        return real_start(server)

    monkeypatch.setattr(SshServer, "start", start_all_but_the_last)
    lab = NetnsLab(2, tmp_path / "lab")
    with pytest.raises(RuntimeError, match="sshd refused to start"):
        lab.start()
    assert len(lab.hosts) == 2
    state = root_state()
    for name in [*lab.namespaces, *lab.veths]:
        assert name not in state
