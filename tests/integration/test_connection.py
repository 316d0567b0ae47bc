"""SSH against a real OpenSSH sshd: reachability, authentication, host-key trust, ProxyJump, reconnect."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from gpubox.errors import AuthenticationFailed, HostKeyChanged, HostKeyUnknown, HostUnreachable
from gpubox.remote.connection import Backoff, Connection, Endpoint, fingerprint, public_key_from_line
from gpubox.remote.sshd import free_port, generate_ed25519_key
from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


def _project(tmp_path: Path, hosts: str) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "hosts.toml").write_text(hosts)
    return project


def _openssh_fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def _endpoint(server: SshServer, key: Path | None = None) -> Endpoint:
    return Endpoint(
        alias="t",
        hostname=server.host,
        port=server.port,
        user=server.user,
        identity_files=(str(key or server.client_key),),
        use_default_keys=False,
    )


def test_unreachable_host_is_exit_3_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    project = _project(
        tmp_path, f'[hosts.gone]\nhostname = "127.0.0.1"\nport = {port}\nconnect_timeout = 3\n'
    )
    result = run_gpubox("ssh", "gone", "--", "true", cwd=project)
    line = assert_one_line_error(result, 3)
    assert line == f"gpubox: cannot reach {_user()}@127.0.0.1:{port}: connection refused"


def test_a_port_that_accepts_tcp_but_never_speaks_ssh_says_so(tmp_path: Path) -> None:
    """Something other than sshd on the port (a forwarder with nothing behind it, a database): TCP connects,
    no SSH banner ever comes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepted by the kernel, never answered
    port = silent.getsockname()[1]
    try:
        project = _project(
            tmp_path, f'[hosts.quiet]\nhostname = "127.0.0.1"\nport = {port}\nconnect_timeout = 2\n'
        )
        line = assert_one_line_error(run_gpubox("ssh", "quiet", "--", "true", cwd=project), 3)
        assert line == f"gpubox: no SSH banner from 127.0.0.1:{port} within 2 s (is this an SSH server?)"
    finally:
        silent.close()


def _user() -> str:
    import getpass

    return getpass.getuser()


def test_unresolvable_name_is_exit_3(tmp_path: Path) -> None:
    project = _project(tmp_path, '[hosts.nx]\nhostname = "no-such-host.invalid"\nconnect_timeout = 3\n')
    line = assert_one_line_error(run_gpubox("ssh", "nx", "--", "true", cwd=project), 3)
    assert line.startswith("gpubox: cannot resolve no-such-host.invalid")


def test_wrong_key_is_exit_3(tmp_path: Path, sshd: SshServer) -> None:
    stranger = tmp_path / "stranger_ed25519"
    generate_ed25519_key(stranger)
    project = _project(tmp_path, host_entry("box", sshd, identity_file=str(stranger), accept_new=True))
    line = assert_one_line_error(run_gpubox("ssh", "box", "--", "true", cwd=project), 3)
    assert line == (
        f"gpubox: {sshd.user}@127.0.0.1:{sshd.port} refused our keys (tried {stranger}); add the public key "
        "to the host's ~/.ssh/authorized_keys or set identity_file"
    )


def test_unknown_host_key_is_refused_without_acceptance(tmp_path: Path, sshd: SshServer) -> None:
    project = _project(tmp_path, host_entry("box", sshd))
    result = run_gpubox("ssh", "box", "--", "true", cwd=project)
    line = assert_one_line_error(result, 3)
    expected = _openssh_fingerprint(sshd.files.host_key.with_name("host_ed25519.pub"))
    assert line == (
        f"gpubox: unknown host key for [127.0.0.1]:{sshd.port} (ED25519 {expected}): not pinned; re-run with "
        "--accept-new or set accept_new = true for this host to trust it"
    )
    assert not (Path(_gpubox_home()) / "state" / "known_hosts").exists()


def _gpubox_home() -> str:
    import os

    return os.environ["GPUBOX_HOME"]


def test_accept_new_pins_then_plain_connects_work(tmp_path: Path, sshd: SshServer) -> None:
    project = _project(tmp_path, host_entry("box", sshd))
    first = run_gpubox("ssh", "box", "--accept-new", "--", "echo", "pinned", cwd=project)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "pinned\n"
    pins = (Path(_gpubox_home()) / "state" / "known_hosts").read_text()
    assert pins == sshd.known_hosts_line()
    second = run_gpubox("ssh", "box", "--", "echo", "again", cwd=project)
    assert (second.returncode, second.stdout) == (0, "again\n")


def test_accept_new_in_hosts_toml_pins(tmp_path: Path, sshd: SshServer) -> None:
    project = _project(tmp_path, host_entry("box", sshd, accept_new=True))
    assert run_gpubox("ssh", "box", "--", "true", cwd=project).returncode == 0
    assert (Path(_gpubox_home()) / "state" / "known_hosts").read_text() == sshd.known_hosts_line()


def test_key_in_users_known_hosts_is_trusted(tmp_path: Path, sshd: SshServer, isolated_home: Path) -> None:
    (isolated_home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line())
    project = _project(tmp_path, host_entry("box", sshd))
    assert run_gpubox("ssh", "box", "--", "true", cwd=project).returncode == 0
    assert not (Path(_gpubox_home()) / "state" / "known_hosts").exists()


@pytest.mark.parametrize("pinned_in", ["gpubox", "user"])
def test_changed_host_key_is_refused_with_both_fingerprints(
    tmp_path: Path, sshd: SshServer, isolated_home: Path, pinned_in: str
) -> None:
    old_print = _openssh_fingerprint(sshd.files.host_key.with_name("host_ed25519.pub"))
    if pinned_in == "gpubox":
        pin_file = Path(_gpubox_home()) / "state" / "known_hosts"
        pin_file.parent.mkdir(parents=True)
    else:
        pin_file = isolated_home / ".ssh" / "known_hosts"
    pin_file.write_text(sshd.known_hosts_line())
    port = sshd.port
    sshd.stop()
    impostor = SshServer(tmp_path / "impostor", port=port).start()
    try:
        new_print = _openssh_fingerprint(impostor.files.host_key.with_name("host_ed25519.pub"))
        project = _project(tmp_path, host_entry("box", impostor, accept_new=True))
        line = assert_one_line_error(run_gpubox("ssh", "box", "--accept-new", "--", "true", cwd=project), 3)
        assert f"HOST KEY CHANGED for [127.0.0.1]:{port}" in line
        assert f"expected ED25519 {old_print}, got ED25519 {new_print}" in line
        assert pin_file.read_text() == sshd.known_hosts_line()  # nothing re-pinned
    finally:
        impostor.stop()


def test_known_host_under_another_key_type_counts_as_changed(tmp_path: Path, sshd: SshServer) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    line = other.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    pin_file = tmp_path / "pins"
    pin_file.write_text(f"[127.0.0.1]:{sshd.port} {line}\n")
    connection = Connection(_endpoint(sshd), accept_new=True, pin_file=pin_file)
    with pytest.raises(HostKeyChanged) as caught:
        connection.open()
    assert caught.value.expected == fingerprint(public_key_from_line(line))
    assert caught.value.received == fingerprint(public_key_from_line(sshd.host_public_key))


def test_prompt_decides_about_unknown_keys(tmp_path: Path, sshd: SshServer) -> None:
    asked: list[tuple[str, str, str]] = []

    def refuse(host: str, key_type: str, print_: str) -> bool:
        asked.append((host, key_type, print_))
        return False

    pin_file = tmp_path / "pins"
    with pytest.raises(HostKeyUnknown):
        Connection(_endpoint(sshd), ask=refuse, pin_file=pin_file).open()
    assert asked == [
        (f"[127.0.0.1]:{sshd.port}", "ED25519", fingerprint(public_key_from_line(sshd.host_public_key)))
    ]
    assert not pin_file.exists()
    with Connection(_endpoint(sshd), ask=lambda *_: True, pin_file=pin_file) as connection:
        assert connection.run("echo yes").stdout == b"yes\n"
    assert pin_file.read_text() == sshd.known_hosts_line()


def test_in_process_errors_are_typed(tmp_path: Path, sshd: SshServer) -> None:
    stranger = tmp_path / "stranger"
    generate_ed25519_key(stranger)
    with pytest.raises(AuthenticationFailed):
        Connection(_endpoint(sshd, stranger), accept_new=True, pin_file=tmp_path / "pins").open()
    with pytest.raises(HostUnreachable):
        Connection(
            Endpoint(alias="x", hostname="127.0.0.1", port=free_port(), use_default_keys=False),
            connect_timeout=2,
        ).open()


def test_run_returns_exit_code_and_both_streams(sshd: SshServer, tmp_path: Path) -> None:
    with Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins") as connection:
        result = connection.run("echo out; echo err >&2; exit 5")
        assert (result.exit_code, result.stdout, result.stderr) == (5, b"out\n", b"err\n")
        # OpenSSH may send exit-status before the last output: repeat, since losing a tail was intermittent.
        for _ in range(10):
            big = connection.run("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2; exit 4")
            assert (len(big.stdout), len(big.stderr), big.exit_code) == (3_000_000, 3_000_000, 4)
        assert connection.run("cat", stdin=b"data in").stdout == b"data in"


def test_ssh_command_exit_code_and_stdin_pass_through(tmp_path: Path, sshd: SshServer) -> None:
    project = _project(tmp_path, host_entry("box", sshd, accept_new=True))
    assert run_gpubox("ssh", "box", "--", "sh", "-c", "exit 7", cwd=project).returncode == 7
    echoed = run_gpubox("ssh", "box", "--", "wc", "-c", cwd=project, input="x" * 100_000)
    assert (echoed.returncode, echoed.stdout.strip()) == (0, "100000")
    # One argument is a shell line, as with ssh.
    piped = run_gpubox("ssh", "box", "--", "echo a b | wc -w", cwd=project)
    assert piped.stdout.strip() == "2"


def test_ssh_without_command_needs_a_terminal(tmp_path: Path, sshd: SshServer) -> None:
    project = _project(tmp_path, host_entry("box", sshd, accept_new=True))
    line = assert_one_line_error(run_gpubox("ssh", "box", cwd=project), 2)
    assert line == "gpubox: an interactive shell needs a terminal: give a command after `--`"


def test_ssh_config_alias_with_proxyjump_through_a_second_sshd(
    tmp_path: Path, sshd_factory: object, isolated_home: Path
) -> None:
    make = sshd_factory  # type: ignore[assignment]
    jump: SshServer = make("jump")  # type: ignore[operator]
    inner: SshServer = make("inner")  # type: ignore[operator]
    (isolated_home / ".ssh" / "config").write_text(
        f"Host bastion\n  HostName 127.0.0.1\n  Port {jump.port}\n  User {jump.user}\n"
        f"  IdentityFile {jump.client_key}\n\n"
        f"Host gpu-inner\n  HostName 127.0.0.1\n  Port {inner.port}\n  User {inner.user}\n"
        f"  IdentityFile {inner.client_key}\n  ProxyJump bastion\n"
    )
    project = _project(tmp_path, '[hosts.inner]\nhostname = "gpu-inner"\naccept_new = true\n')
    result = run_gpubox("ssh", "inner", "--", "echo", "through", cwd=project)
    assert (result.returncode, result.stdout, result.stderr) == (0, "through\n", "")
    pins = (Path(_gpubox_home()) / "state" / "known_hosts").read_text().splitlines()
    assert sorted(pins) == sorted([jump.known_hosts_line().strip(), inner.known_hosts_line().strip()])
    # The bastion really was used: it logged our login there.
    assert "Accepted publickey" in jump.log()


def test_ssh_config_include_files_are_followed(tmp_path: Path, sshd: SshServer, isolated_home: Path) -> None:
    ssh_dir = isolated_home / ".ssh"
    (ssh_dir / "conf.d").mkdir()
    (ssh_dir / "conf.d" / "gpu.conf").write_text(
        f"Host viainclude\n  HostName 127.0.0.1\n  Port {sshd.port}\n  IdentityFile {sshd.client_key}\n"
    )
    (ssh_dir / "config").write_text("Include conf.d/*.conf\n")
    project = _project(tmp_path, '[hosts.inc]\nhostname = "viainclude"\naccept_new = true\n')
    result = run_gpubox("ssh", "inc", "--", "echo", "ok", cwd=project)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_reconnect_with_backoff_after_sshd_restart(tmp_path: Path, sshd: SshServer) -> None:
    connection = Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins").open()
    assert connection.run("true").ok
    sshd.kill()
    retries: list[float] = []
    restarter = threading.Timer(1.0, sshd.start)
    restarter.start()
    try:
        connection.reconnect(
            Backoff(initial=0.1, maximum=0.5, deadline=20), on_retry=lambda e, d: retries.append(d)
        )
        assert connection.run("echo back").stdout == b"back\n"
        assert retries, "the first attempts should have failed while sshd was down"
    finally:
        restarter.join()
        connection.close()


def test_backoff_gives_up_at_the_deadline(tmp_path: Path) -> None:
    connection = Connection(
        Endpoint(alias="x", hostname="127.0.0.1", port=free_port(), use_default_keys=False), connect_timeout=1
    )
    started = time.monotonic()
    with pytest.raises(HostUnreachable):
        connection.reconnect(Backoff(initial=0.1, maximum=0.2, deadline=1.0))
    assert time.monotonic() - started < 5


def test_tcp_nodelay_is_set(tmp_path: Path, sshd: SshServer) -> None:
    with Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins") as connection:
        sock = connection.transport.sock
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_keepalive_is_configured(tmp_path: Path, sshd: SshServer) -> None:
    with Connection(
        _endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins", keepalive_seconds=7
    ) as connection:
        transport: paramiko.Transport = connection.transport
        assert transport.packetizer._Packetizer__keepalive_interval == 7  # type: ignore[attr-defined]


def test_keys_held_by_ssh_agent_are_used(tmp_path: Path, sshd: SshServer) -> None:
    import os

    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.05)
        env = dict(os.environ, SSH_AUTH_SOCK=str(socket_path))
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True)
        hosts = f'[hosts.box]\nhostname = "127.0.0.1"\nport = {sshd.port}\naccept_new = true\n'
        project = _project(tmp_path, hosts)
        result = run_gpubox("ssh", "box", "--", "echo", "agent", cwd=project, env=env)
        assert (result.returncode, result.stdout) == (0, "agent\n"), result.stderr
        # Without the agent the same host refuses us: the key really came from ssh-agent.
        assert run_gpubox("ssh", "box", "--", "true", cwd=project).returncode == 3
    finally:
        agent.terminate()
        agent.wait(5)


def _tiny_http_server(body_for: Callable[[bytes], bytes]) -> tuple[socket.socket, int]:
    """A server on 127.0.0.1 answering each request with ``body_for(request)``, one thread per connection."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer(peer: socket.socket) -> None:
        with peer, contextlib.suppress(OSError):
            peer.sendall(b"HTTP/1.0 200 OK\r\n\r\n" + body_for(peer.recv(1024)))

    def serve() -> None:
        while True:
            try:
                peer, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(peer,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _get_through(port: int, path: str) -> bytes:
    """The whole answer to a GET of *path* on 127.0.0.1:*port* (read until the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


def test_browsers_resetting_downloads_through_a_tunnel_never_take_the_ssh_connection_down(
    tmp_path: Path, sshd: SshServer
) -> None:
    """A browser tab shut mid-download resets its connection while the host still sends. The tunnel closed the
    channel then, and paramiko's transport thread, signalling the data that kept arriving on the channel's
    select() pipe, wrote to the closed pipe, got EBADF and dropped the whole SSH connection: every reset
    download cost a reconnect (CI saw the next request reset). Here, 200 of them: the connection stays up, and
    every download and every request after one is answered."""
    import struct

    from gpubox.remote.tunnels import Tunnel

    body = os.urandom(4 << 20)
    server, server_port = _tiny_http_server(lambda asked: body if b"big" in asked else b"small")
    connection = Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins").open()
    transport = connection.transport
    tunnel = Tunnel(lambda: connection.transport, server_port, local_port=free_port(), name="files").start()
    try:
        for _ in range(40):
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=30) as sock:
                    sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
                    assert sock.recv(4096)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            answer_bytes = _get_through(tunnel.local_port, "/small")
            assert answer_bytes.endswith(b"small"), answer_bytes
            assert transport.is_active() and connection.transport is transport
        assert tunnel.failures == 0
    finally:
        tunnel.stop()
        server.close()
        connection.close()


def test_a_request_through_a_tunnel_while_the_link_is_down_waits_for_the_reconnect(
    tmp_path: Path, sshd: SshServer
) -> None:
    """The link drops (here: its socket is shut under paramiko) and a browser asks for a page before the
    supervisor has reconnected. The request used to be reset at once; it now wakes the supervisor (as `up` wires
    it) and waits for the new transport, then is answered. Every drop is a real one, on the real sshd."""
    from gpubox.remote.tunnels import Tunnel

    server, server_port = _tiny_http_server(lambda asked: b"hello")
    connection = Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins").open()
    wake = threading.Event()
    stop = threading.Event()

    def supervisor() -> None:  # what `up`'s supervise() does when woken: notice the dead link, reconnect
        while not stop.is_set():
            if wake.wait(0.2):
                wake.clear()
                if not connection.is_alive():
                    connection.reconnect()

    threading.Thread(target=supervisor, daemon=True).start()
    tunnel = Tunnel(
        lambda: connection.transport, server_port, local_port=free_port(), name="web", on_link_lost=wake.set
    ).start()
    try:
        for _ in range(5):
            dropped = connection.transport
            dropped.sock.shutdown(socket.SHUT_RDWR)
            answer_bytes = _get_through(tunnel.local_port, "/")
            assert answer_bytes.endswith(b"hello"), answer_bytes
            assert connection.transport is not dropped
        assert tunnel.failures == 0
    finally:
        stop.set()
        tunnel.stop()
        server.close()
        connection.close()


def test_a_command_cut_off_at_its_timeout_while_it_still_prints_leaves_the_connection_up(
    tmp_path: Path, sshd: SshServer
) -> None:
    """The timeout closes the channel while output still arrives: the same close as a reset download's (see
    above), which must never cost the SSH connection."""
    from gpubox.errors import RemoteError

    connection = Connection(_endpoint(sshd), accept_new=True, pin_file=tmp_path / "pins").open()
    transport = connection.transport
    try:
        for _ in range(20):
            with pytest.raises(RemoteError, match="did not finish within"):
                connection.run("yes gpubox", timeout=0.2)
            assert transport.is_active() and connection.transport is transport
            assert connection.run("echo still here").stdout == b"still here\n"
    finally:
        connection.close()
