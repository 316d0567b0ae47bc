"""One SSH transport per host: endpoint resolution, host-key trust, connect, exec, reconnect with backoff.

Built on fabric's :class:`fabric.Connection` (which drives paramiko), with one deliberate change: fabric accepts
unknown host keys silently, gpubox never does. Keys are checked against ``~/.ssh/known_hosts`` and gpubox's own
known-hosts file; an unknown key is pinned only when the user accepts it (prompt, ``--accept-new`` or
``accept_new = true``); a changed key is refused with both fingerprints, always.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import glob
import hashlib
import io
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

import paramiko

from gpubox import paths
from gpubox.errors import (
    AuthenticationFailed,
    ConfigError,
    HostError,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteError,
)
from gpubox.remote.backoff import Backoff, with_backoff

if TYPE_CHECKING:
    import fabric

    from gpubox.config import HostConfig

__all__ = [
    "Backoff",
    "CommandResult",
    "Connection",
    "Endpoint",
    "HostKeyPolicy",
    "fingerprint",
    "load_ssh_config",
    "resolve_endpoint",
    "with_backoff",
]

T = TypeVar("T")
DEFAULT_BACKOFF = Backoff()

# paramiko's transport thread logs a dropped socket ("Socket exception: Connection reset by peer (104)") at ERROR;
# with no handler anywhere, Python's last-resort handler printed it to stderr beside gpubox's one-line error.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


class ByteSink(Protocol):
    """Where command output goes: a binary file, sys.stdout.buffer, or anything that writes bytes."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


AskToPin = Callable[[str, str, str], bool]
"""Called with (host as written in known_hosts, key type, SHA256 fingerprint); True pins the key."""

_MAX_JUMPS = 8


# ------------------------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect, after ``~/.ssh/config`` and hosts.toml were applied."""

    alias: str
    hostname: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    identity_files: tuple[str, ...] = ()
    jumps: tuple[Endpoint, ...] = ()
    """ProxyJump hops, outermost first."""
    proxy_command: str | None = None
    use_default_keys: bool = True
    """Also try ssh-agent and ~/.ssh/id_* (as OpenSSH does); off for hosts whose key gpubox made."""

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def display(self) -> str:
        return f"{self.user}@{self.hostname}" + ("" if self.port == 22 else f":{self.port}")


def load_ssh_config(path: Path | None = None) -> paramiko.SSHConfig:
    """``~/.ssh/config`` with its ``Include`` lines expanded (paramiko does not follow them)."""
    path = path or Path.home() / ".ssh" / "config"
    config = paramiko.SSHConfig()
    if path.is_file():
        config.parse(io.StringIO(_expand_includes(path, depth=0)))
    return config


def _expand_includes(path: Path, depth: int) -> str:
    if depth > 8:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        match = re.match(r"^\s*Include\s+(.+?)\s*$", line, re.IGNORECASE)
        if not match:
            out.append(line)
            continue
        for pattern in match.group(1).split():
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = str(Path.home() / ".ssh" / pattern)
            for included in sorted(glob.glob(pattern)):
                out.append(_expand_includes(Path(included), depth + 1))
    return "\n".join(out)


def _split_target(target: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (IPv6 in brackets) → (user, host, port)."""
    user, _, rest = target.rpartition("@")
    port: int | None = None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", rest)
    if bracketed:
        host, port_text = bracketed.group(1), bracketed.group(2)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, None
    if port_text:
        port = int(port_text)
    return (user or None), host, port


def _resolve(
    alias: str,
    ssh_config: paramiko.SSHConfig,
    *,
    user: str | None = None,
    port: int | None = None,
    identity_file: str | None = None,
    proxy_jump: str | None = None,
    depth: int = 0,
) -> Endpoint:
    if depth > _MAX_JUMPS:
        raise HostUnreachable(f"ProxyJump chain for {alias} is longer than {_MAX_JUMPS} hops (a loop?)")
    found = ssh_config.lookup(alias)
    identity = (
        [identity_file] if identity_file else [os.path.expanduser(p) for p in found.get("identityfile", [])]
    )
    jump_spec = proxy_jump if proxy_jump is not None else found.get("proxyjump")
    jumps: list[Endpoint] = []
    if jump_spec and jump_spec.lower() != "none":
        for hop in jump_spec.split(","):
            hop_user, hop_host, hop_port = _split_target(hop.strip())
            jumps.append(_resolve(hop_host, ssh_config, user=hop_user, port=hop_port, depth=depth + 1))
    proxy_command = found.get("proxycommand")
    return Endpoint(
        alias=alias,
        hostname=found.get("hostname", alias),
        port=int(port or str(found.get("port", 22))),
        user=user or found.get("user") or getpass.getuser(),
        identity_files=tuple(identity),
        jumps=tuple(jumps),
        proxy_command=None
        if jumps or not proxy_command or proxy_command.lower() == "none"
        else proxy_command,
    )


def resolve_endpoint(host: HostConfig, ssh_config: paramiko.SSHConfig | None = None) -> Endpoint:
    """The endpoint of an ``ssh`` host: hosts.toml values win over ``~/.ssh/config``, as ``ssh -o`` would."""
    if host.hostname is None:
        raise ConfigError(host.source, None, f"hosts.{host.name}.hostname", "an ssh host needs a hostname")
    return _resolve(
        host.hostname,
        ssh_config if ssh_config is not None else load_ssh_config(),
        user=host.user,
        port=host.port,
        identity_file=host.identity_file,
        proxy_jump=host.proxy_jump,
    )


# ----------------------------------------------------------------------------------------------- trust


def fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def key_label(key: paramiko.PKey) -> str:
    name = key.get_name()
    return {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(
        name, "ECDSA" if name.startswith("ecdsa") else name
    )


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Decides about a host key that no known-hosts file lists for this host and key type."""

    def __init__(self, *, accept_new: bool, ask: AskToPin | None, pin_file: Path) -> None:
        self.accept_new = accept_new
        self.ask = ask
        self.pin_file = pin_file

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        label, print_ = key_label(key), fingerprint(key)
        # A host we know under another key type is a changed host, not a new one: OpenSSH would refuse too.
        # paramiko exposes only the writable key set; the one loaded from ~/.ssh/known_hosts is private.
        system_keys: paramiko.HostKeys = getattr(client, "_system_host_keys", paramiko.HostKeys())
        known = client.get_host_keys().lookup(hostname) or system_keys.lookup(hostname)
        if known:
            old = next(iter(known.values()))
            raise HostKeyChanged(
                _changed_message(hostname, old, key, self.pin_file),
                host=hostname,
                expected=fingerprint(old),
                received=print_,
            )
        if self.accept_new or (self.ask is not None and self.ask(hostname, label, print_)):
            pin_host_key(self.pin_file, hostname, key)
            client.get_host_keys().add(hostname, key.get_name(), key)
            return
        raise HostKeyUnknown(
            f"unknown host key for {hostname} ({label} {print_}): not pinned; re-run with --accept-new "
            f"or set accept_new = true for this host to trust it",
            host=hostname,
            key_type=label,
            fingerprint=print_,
        )


def _changed_message(hostname: str, old: paramiko.PKey, new: paramiko.PKey, pin_file: Path) -> str:
    return (
        f"HOST KEY CHANGED for {hostname}: expected {key_label(old)} {fingerprint(old)}, "
        f"got {key_label(new)} {fingerprint(new)}; refusing to connect (if the host was really rebuilt, "
        f"remove its old line from ~/.ssh/known_hosts or {pin_file})"
    )


def pin_host_key(pin_file: Path, hostname: str, key: paramiko.PKey) -> None:
    paths.ensure_private_dir(pin_file.parent)
    line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
    # O_APPEND keeps a single short write whole even when two gpubox processes pin at once.
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def public_key_from_line(text: str) -> paramiko.PKey:
    """A ``type base64`` public key (as in a .pub file) as a paramiko key object."""
    key_type, blob = text.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))


# ------------------------------------------------------------------------------------------- connection


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Connection:
    """One SSH transport to one host (through its jump hosts), multiplexing every channel gpubox opens."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        accept_new: bool = False,
        ask: AskToPin | None = None,
        trusted_host_keys: tuple[str, ...] = (),
        connect_timeout: float = 15.0,
        keepalive_seconds: int = 15,
        pin_file: Path | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.keepalive_seconds = keepalive_seconds
        self.trusted_host_keys = trusted_host_keys
        self.policy = HostKeyPolicy(
            accept_new=accept_new, ask=ask, pin_file=pin_file or paths.known_hosts_file()
        )
        self._chain: list[fabric.Connection] = []
        self._lock = threading.Lock()

    # -- lifecycle

    def open(self) -> Connection:
        with self._lock:
            if self.is_alive():
                return self
            self._close_chain()
            gateway: fabric.Connection | str | None = self.endpoint.proxy_command
            hops = [*self.endpoint.jumps, self.endpoint]
            try:
                for index, hop in enumerate(hops):
                    conn = self._fabric_connection(hop, gateway)
                    self._chain.append(conn)
                    self._open_hop(conn, hop, is_jump=index < len(hops) - 1)
                    gateway = conn
            except BaseException:
                self._close_chain()
                raise
            first_sock = self._chain[0].transport.sock
            if isinstance(first_sock, socket.socket):
                # The agent protocol is request/response: Nagle would add up to 40 ms per small frame.
                first_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return self

    def _fabric_connection(self, hop: Endpoint, gateway: fabric.Connection | str | None) -> fabric.Connection:
        import fabric

        config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}})
        connect_kwargs: dict[str, Any] = {
            "key_filename": list(hop.identity_files),
            "allow_agent": hop.use_default_keys,
            "look_for_keys": hop.use_default_keys,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
            "channel_timeout": self.connect_timeout,
        }
        conn = fabric.Connection(
            hop.hostname,
            user=hop.user,
            port=hop.port,
            config=config,
            gateway=gateway,
            connect_timeout=self.connect_timeout,
            connect_kwargs=connect_kwargs,
        )
        client = conn.client
        client.load_system_host_keys()
        if self.policy.pin_file.is_file():
            client.load_host_keys(str(self.policy.pin_file))
        for line in self.trusted_host_keys:
            key = public_key_from_line(line)
            client.get_host_keys().add(hop.known_hosts_name, key.get_name(), key)
        client.set_missing_host_key_policy(self.policy)
        return conn

    def _open_hop(self, conn: fabric.Connection, hop: Endpoint, *, is_jump: bool) -> None:
        what = f"jump host {hop.display}" if is_jump else hop.display
        try:
            conn.open()
        except HostError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyChanged(
                _changed_message(hop.known_hosts_name, exc.expected_key, exc.key, self.policy.pin_file),
                host=hop.known_hosts_name,
                expected=fingerprint(exc.expected_key),
                received=fingerprint(exc.key),
            ) from None
        except paramiko.AuthenticationException as exc:
            # paramiko says "Authentication failed." also when the connection died mid-authentication, and
            # "Authentication timeout." when the link went quiet: neither is a refusal of our keys.
            transport = conn.client.get_transport()
            if transport is None or not transport.is_active() or "timeout" in str(exc).lower():
                raise HostUnreachable(f"the connection to {what} dropped during authentication") from None
            tried = ", ".join(hop.identity_files) or "ssh-agent and ~/.ssh/id_*"
            raise AuthenticationFailed(
                f"{what} refused our keys (tried {tried}); add the public key to the host's "
                f"~/.ssh/authorized_keys or set identity_file"
            ) from None
        except socket.gaierror:
            raise HostUnreachable(f"cannot resolve {hop.hostname} (for {what})") from None
        except TimeoutError:
            raise HostUnreachable(
                f"cannot reach {what}: timed out after {self.connect_timeout:g} s"
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as exc:
            reason = _first_reason(exc)
            raise HostUnreachable(f"cannot reach {what}: {reason}") from None
        except paramiko.ChannelException as exc:
            raise HostUnreachable(f"cannot reach {what} through its jump host: {exc.text}") from None
        except (paramiko.SSHException, EOFError) as exc:
            transport = conn.client.get_transport()
            if transport is not None and not transport.remote_version:
                # TCP was accepted but no "SSH-2.0-..." line came: something else listens there, or nothing
                # answers behind a forwarder.
                raise HostUnreachable(
                    f"no SSH banner from {hop.hostname}:{hop.port} within {self.connect_timeout:g} s "
                    "(is this an SSH server?)"
                ) from None
            raise HostUnreachable(f"SSH handshake with {what} failed: {exc or type(exc).__name__}") from None
        except OSError as exc:
            raise HostUnreachable(f"cannot reach {what}: {exc.strerror or exc}") from None
        transport = conn.transport
        if transport is not None and self.keepalive_seconds:
            transport.set_keepalive(self.keepalive_seconds)

    def is_alive(self) -> bool:
        if not self._chain:
            return False
        transport = self._chain[-1].transport
        return bool(transport is not None and transport.is_active())

    def close(self) -> None:
        with self._lock:
            self._close_chain()

    def _close_chain(self) -> None:
        for conn in reversed(self._chain):
            with contextlib.suppress(Exception):
                conn.close()
            # fabric closes only a connection whose connect() succeeded: a handshake that failed part-way (a
            # changed host key, refused keys, a garbled banner) left paramiko's transport and its socket open, one
            # more unauthenticated connection on the host's sshd per retry until MaxStartups shut everyone out.
            with contextlib.suppress(Exception):
                conn.client.close()
        self._chain = []

    def reconnect(self, backoff: Backoff = DEFAULT_BACKOFF, **kwargs: Any) -> Connection:
        """Drop the transport and connect again, retrying with backoff while the host is unreachable."""
        self.close()
        return with_backoff(self.open, backoff, **kwargs)

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- channels

    @property
    def fabric(self) -> fabric.Connection:
        if not self._chain:
            raise HostUnreachable(f"not connected to {self.endpoint.display}")
        return self._chain[-1]

    @property
    def transport(self) -> paramiko.Transport:
        transport: paramiko.Transport | None = self.fabric.transport
        if transport is None or not transport.is_active():
            raise HostUnreachable(f"the connection to {self.endpoint.display} was lost")
        return transport

    def exec(self, command: str) -> paramiko.Channel:
        """Start *command* on a new session channel and return the channel, without waiting."""
        try:
            channel = self.transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostUnreachable(f"cannot open a channel to {self.endpoint.display}: {exc}") from None
        return channel

    def run(self, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run *command*, collect its output and exit code (for short commands; output is kept in memory)."""
        channel = self.exec(command)
        if stdin is not None:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = io.BytesIO(), io.BytesIO()
        code = _pump_channel(channel, out, err, timeout=timeout, what=command)
        return CommandResult(code, out.getvalue(), err.getvalue())

    def stream(self, command: str, stdin: IO[bytes] | None, stdout: ByteSink, stderr: ByteSink) -> int:
        """Run *command* with local stdin/stdout/stderr attached (no pty); return its exit code."""
        channel = self.exec(command)
        feeder = None
        if stdin is None:
            channel.shutdown_write()
        else:
            feeder = threading.Thread(
                target=_feed_stdin, args=(stdin, channel), daemon=True, name="ssh-stdin"
            )
            feeder.start()
        return _pump_channel(channel, stdout, stderr, timeout=None, what=command)


def _first_reason(exc: paramiko.ssh_exception.NoValidConnectionsError) -> str:
    for error in exc.errors.values():
        return str(getattr(error, "strerror", None) or error).lower()
    return "no address answered"


def _feed_stdin(source: IO[bytes], channel: paramiko.Channel) -> None:
    try:
        while chunk := source.read1(65536) if hasattr(source, "read1") else source.read(65536):
            channel.sendall(chunk)
    except (OSError, paramiko.SSHException):
        return
    with contextlib.suppress(OSError, paramiko.SSHException, EOFError):
        channel.shutdown_write()


def _pump_channel(
    channel: paramiko.Channel, stdout: ByteSink, stderr: ByteSink, *, timeout: float | None, what: str
) -> int:
    # The wait is a read with a short timeout, never a select() on the channel: paramiko would make that a pipe
    # its transport thread writes to as data arrives, and closing the channel while output still arrives (a
    # timeout) would have that thread write to a closed pipe, fail, and drop the SSH connection.
    deadline = None if timeout is None else time.monotonic() + timeout
    channel.settimeout(0.05)
    while True:
        while channel.recv_stderr_ready():
            stderr.write(channel.recv_stderr(65536))
        try:
            data = channel.recv(65536)
        except TimeoutError:
            data = None
        if data:
            stdout.write(data)
        elif data is not None:
            # EOF (or close): everything the command sent is here. OpenSSH may send exit-status before the last
            # output, so only this means "all data is here".
            with contextlib.suppress(TimeoutError):
                while chunk := channel.recv_stderr(65536):
                    stderr.write(chunk)
            break
        if deadline is not None and time.monotonic() > deadline:
            channel.close()
            raise RemoteError(f"{what!r} did not finish within {timeout:g} s")
    with contextlib.suppress(Exception):
        stdout.flush()
        stderr.flush()
    channel.setblocking(True)
    code: int = channel.recv_exit_status()
    channel.close()
    if code == -1 and not channel.exit_status_ready():
        raise HostUnreachable("the connection was lost before the command finished")
    # A command killed by a signal reports -1; say 255 like ssh does.
    return code if code >= 0 else 255
