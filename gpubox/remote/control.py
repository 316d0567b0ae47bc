"""The control socket: one-shot commands ride the connection that `gpubox up` already holds.

The process holding a host for a project (its supervisor) listens on a Unix socket in the state folder, one per
host and project. A command of that project (`run`, `runs`, `logs`, `stop`, `status`, …) connects there instead
of opening SSH itself: no handshake, no key exchange, no agent start, and no paramiko import on its side. The
supervisor keeps one agent started and waiting on its connection; a client that connects gets that agent (its
hello first, then the agent's framed protocol relayed byte for byte both ways) and a new spare is started behind
it. Nothing else passes through the socket: anything needing an SSH channel of its own (a shell, an env build's
output) opens a direct connection on demand (:class:`gpubox.remote.session.HostSession`).

Trust is OpenSSH's ControlMaster's: the socket lives in the state folder (0700) and is 0600 itself; the client
connects only to a socket its own user owns, and the server answers only peers of its own user (SO_PEERCRED
where the platform has it). When nothing holds the host (no socket, a stale one, a holder that cannot start an
agent) the client falls back to a direct connection, so the socket only ever makes a command faster.

The handshake, one line of JSON each way before the relay starts::

    client → {"want": "agent", "protocol": 3}
    server → {"ok": true, "hello": {...the agent's hello...}}     or {"ok": false, "error": "..."}

``protocol`` is the agent's (:data:`gpubox.remote.agent.framing.PROTOCOL`): the relayed bytes are its frames.
The socket's own requests have :data:`CONTROL_VERSION`. Version 2 added the flush barrier, one line each way and
no relay: the holder's live sync makes sure everything saved before the request is on the host (with *verify*,
it also compares the host's listing with what gpubox sent, as ``gpubox run`` does), and answers with what it did::

    client → {"want": "flush", "control": 2, "verify": true}
    server → {"ok": true, "control": 2, "report": {...a SyncReport, gpubox/sync/report.py...}}
             or {"ok": false, "error": "..."}    (no live sync, it failed or fell behind: the client syncs itself)

A holder of version 1 answers any request but ``agent`` with ``{"ok": false}``, so a client falls back the same
way. Bump :data:`CONTROL_VERSION` when a request is added or an answer changes shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.errors import GpuboxError, HostUnreachable
from gpubox.remote.agent.framing import PROTOCOL, FramedAgent

if TYPE_CHECKING:
    from gpubox.remote.agent.client import AgentSession

__all__ = [
    "CONTROL_VERSION",
    "ControlAgent",
    "ControlServer",
    "control_path",
    "flush_through_holder",
    "holder_answers",
    "open_control_agent",
]

CONTROL_VERSION = 2
"""The control socket's own requests (see the module's docstring). MUST be bumped when a request is added or its
answer changes shape; a holder answers only the version it speaks, and a client falls back on any other answer."""

FLUSH_TIMEOUT = 300.0
"""How long a client waits for the holder's flush (a large batch may be on its way). The holder gives up sooner
(:data:`FLUSH_WAIT`) and says so; this only ends the wait on a holder that stopped answering."""
FLUSH_WAIT = 120.0
"""How long the holder waits for its live sync to catch up before answering that it did not."""

HANDSHAKE_TIMEOUT = 5.0
"""How long either side waits for the other's handshake line. A holder busy starting its spare agent still
answers within an agent start; one that does not is treated as absent (the client connects directly)."""

_MAX_LINE = 1 << 16
_UNIX_PATH_LIMIT = 100  # sun_path is 104 bytes on macOS and 108 on Linux, with a NUL


def control_path(host: str, project_id: str) -> Path:
    """Where the holder of *host* for the project *project_id* listens: ``state/control/HOST@PROJECT.sock``."""
    return paths.state_dir() / "control" / f"{host}@{project_id}.sock"


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """*path* as a Unix socket address. A path too long for one (a deep state folder; the limit is about 100
    bytes) is reached through its folder's descriptor, ``/proc/self/fd/N/NAME``, on Linux; elsewhere it is
    refused, and commands connect on their own."""
    if len(os.fsencode(path)) <= _UNIX_PATH_LIMIT:
        yield os.fspath(path)
        return
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(f"the path {path} is too long for a Unix socket")
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def _private_folder(folder: Path) -> None:
    """Make *folder* 0700 and refuse one that another user owns or can write (a shared /tmp)."""
    paths.ensure_private_dir(folder)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of this user")


def _owned_socket(path: Path) -> bool:
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISSOCK(info.st_mode) and info.st_uid == os.getuid()


def _peer_is_us(connection: socket.socket) -> bool:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return True  # no peer credentials here: the 0700 folder and the 0600 socket are the guard
    credentials = connection.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", credentials)[1]
    return uid == os.getuid()


def _read_line(connection: socket.socket) -> tuple[bytes, bytes]:
    """One handshake line and whatever came after it."""
    received = b""
    while b"\n" not in received:
        chunk = connection.recv(4096)
        if not chunk:
            raise EOFError("the other end closed before the handshake ended")
        received += chunk
        if len(received) > _MAX_LINE:
            raise EOFError("the handshake line is too long")
    line, _, rest = received.partition(b"\n")
    return line, rest


def _send_json_line(connection: socket.socket, message: dict[str, Any]) -> None:
    connection.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")


# ------------------------------------------------------------------------------------------------ client


class ControlAgent(FramedAgent):
    """An agent reached through the holder's control socket: the same requests as a direct one."""

    def __init__(self, connection: socket.socket, host: str, hello: dict[str, Any], pending: bytes) -> None:
        super().__init__()
        self._socket: socket.socket | None = connection
        self._host = host
        self.hello = hello
        self._buffer += pending
        self._ended = False

    @property
    def host(self) -> str:
        return self._host

    def _gone(self) -> HostUnreachable:
        self._ended = True
        return HostUnreachable(f"the gpubox process holding {self._host} let go of it")

    def _recv_chunk(self) -> bytes:
        if self._socket is None:
            raise self._gone()
        try:
            chunk = self._socket.recv(1 << 20)
        except OSError:
            chunk = b""
        if not chunk:
            raise self._gone()
        return chunk

    def _send_bytes(self, data: bytes) -> None:
        if self._socket is None:
            raise self._gone()
        try:
            self._socket.sendall(data)
        except OSError:
            raise self._gone() from None

    def is_alive(self) -> bool:
        return self._socket is not None and not self._ended

    def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


def _dial(host: str, project_id: str) -> socket.socket | None:
    """A connection to the control socket of the process holding *host* for this project (the handshake's
    timeout set), or None when there is no socket of this user's there or nothing answers on it."""
    path = control_path(host, project_id)
    if not _owned_socket(path):
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(HANDSHAKE_TIMEOUT)
        with _address(path) as address:
            connection.connect(address)
    except OSError:
        # A stale socket (its holder died), one being replaced: the caller goes on without it.
        connection.close()
        return None
    return connection


def open_control_agent(host: str, project_id: str) -> ControlAgent | None:
    """The agent of the process holding *host* for this project, or None when nothing (usable) holds it."""
    connection = _dial(host, project_id)
    if connection is None:
        return None
    try:
        _send_json_line(connection, {"want": "agent", "protocol": PROTOCOL})
        line, rest = _read_line(connection)
        answer = json.loads(line)
        if (
            not isinstance(answer, dict)
            or answer.get("ok") is not True
            or not isinstance(answer.get("hello"), dict)
        ):
            connection.close()
            return None
        connection.settimeout(None)
        return ControlAgent(connection, host, answer["hello"], rest)
    except (OSError, EOFError, ValueError):
        # A holder that is stuck or answers nonsense: connect directly.
        connection.close()
        return None


def flush_through_holder(host: str, project_id: str, *, verify: bool) -> dict[str, Any] | None:
    """Have the process holding *host* for this project flush its live sync (see the module's docstring): the
    report document it answers with, or None when nothing holds the host, it does not sync, or it could not
    vouch for the host (the caller then syncs on its own)."""
    connection = _dial(host, project_id)
    if connection is None:
        return None
    try:
        _send_json_line(connection, {"want": "flush", "control": CONTROL_VERSION, "verify": verify})
        connection.settimeout(FLUSH_TIMEOUT)
        line, _rest = _read_line(connection)
        answer = json.loads(line)
    except (OSError, EOFError, ValueError):
        return None
    finally:
        connection.close()
    if (
        not isinstance(answer, dict)
        or answer.get("ok") is not True
        or answer.get("control") != CONTROL_VERSION
        or not isinstance(answer.get("report"), dict)
    ):
        return None
    report: dict[str, Any] = answer["report"]
    return report


# ------------------------------------------------------------------------------------------------ server


class ControlServer:
    """The holder's side: hands each client a started agent on the held connection and relays its bytes.

    *start_agent* starts a new agent on the holder's current connection (after a reconnect, the new one); *flush*
    answers a flush request (its *verify*) with the answer's document, when the holder syncs.
    """

    def __init__(
        self,
        path: Path,
        start_agent: Callable[[], AgentSession],
        *,
        label: str,
        flush: Callable[[bool], dict[str, Any]] | None = None,
    ) -> None:
        self.path = path
        self.label = label
        self._start_agent = start_agent
        self._flush = flush
        self._listener: socket.socket | None = None
        self._spare: AgentSession | None = None
        self._spare_lock = threading.Lock()
        self._refilling = False
        self._relays: set[AgentSession] = set()
        self._closed = threading.Event()

    def start(self) -> ControlServer:
        """Listen; a socket left by a holder that died is replaced. Raises OSError when it cannot listen."""
        _private_folder(self.path.parent)
        if self.path.exists() or self.path.is_symlink():
            if open_control_agent_alive(self.path):
                raise OSError(f"another gpubox process already listens on {self.path}")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Made 0600 from the start (umask), not chmod-ed after: no moment where another user could connect.
            old_umask = os.umask(0o177)
            try:
                with _address(self.path) as address:
                    listener.bind(address)
            finally:
                os.umask(old_umask)
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="gpubox-control", daemon=True).start()
        self._refill()
        return self

    def close(self) -> None:
        self._closed.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
        with self._spare_lock:
            spare, self._spare = self._spare, None
            relays = list(self._relays)
        for agent in [spare, *relays]:
            if agent is not None:
                with contextlib.suppress(Exception):
                    agent.close()

    # -- spare agents

    def _refill(self) -> None:
        """Start the next spare agent in the background, unless one is ready or on its way."""
        with self._spare_lock:
            if (
                self._refilling
                or self._closed.is_set()
                or (self._spare is not None and self._spare.is_alive())
            ):
                return
            self._refilling = True
        threading.Thread(target=self._start_spare, name="gpubox-control-spare", daemon=True).start()

    def _start_spare(self) -> None:
        agent = None
        try:
            agent = self._start_agent()
        except Exception:  # the link is down, say: the next client starts one itself
            agent = None
        with self._spare_lock:
            self._refilling = False
            if agent is not None and self._spare is None and not self._closed.is_set():
                self._spare, agent = agent, None
        if agent is not None:
            agent.close()

    def _take_agent(self) -> AgentSession:
        with self._spare_lock:
            spare, self._spare = self._spare, None
        if spare is not None and not spare.is_alive():
            spare.close()
            spare = None
        agent = spare if spare is not None else self._start_agent()
        self._refill()
        return agent

    # -- clients

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                client, _ = listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            threading.Thread(
                target=self._serve, args=(client,), name="gpubox-control-client", daemon=True
            ).start()

    def _serve(self, client: socket.socket) -> None:
        agent = None
        try:
            if not _peer_is_us(client):
                return
            client.settimeout(HANDSHAKE_TIMEOUT)
            line, _ = _read_line(client)
            request = json.loads(line)
            if isinstance(request, dict) and request.get("want") == "flush":
                self._answer_flush(client, request)
                return
            if not isinstance(request, dict) or request.get("want") != "agent":
                _send_json_line(client, {"ok": False, "error": "unknown request"})
                return
            if request.get("protocol") != PROTOCOL:
                _send_json_line(client, {"ok": False, "error": f"this gpubox speaks protocol {PROTOCOL}"})
                return
            try:
                agent = self._take_agent()
            except GpuboxError as exc:
                _send_json_line(client, {"ok": False, "error": str(exc)})
                return
            client.settimeout(None)
            _send_json_line(client, {"ok": True, "hello": agent.hello})
            with self._spare_lock:
                self._relays.add(agent)
            self._relay(client, agent)
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if agent is not None:
                with self._spare_lock:
                    self._relays.discard(agent)
                agent.close()  # the agent exits once its channel closes

    def _answer_flush(self, client: socket.socket, request: dict[str, Any]) -> None:
        if request.get("control") != CONTROL_VERSION:
            answer = {"ok": False, "error": f"this gpubox speaks control version {CONTROL_VERSION}"}
        elif self._flush is None:
            answer = {"ok": False, "error": "this gpubox up does not sync the project"}
        else:
            try:
                answer = {**self._flush(request.get("verify") is True), "control": CONTROL_VERSION}
            except GpuboxError as exc:
                answer = {"ok": False, "error": str(exc)}
        _send_json_line(client, answer)

    def _relay(self, client: socket.socket, agent: AgentSession) -> None:
        """Bytes both ways until either end closes: the client's requests to the agent, its answers back."""
        channel = agent.channel
        assert channel is not None
        leftover = agent.take_buffered()
        if leftover:
            client.sendall(leftover)

        def answers() -> None:
            try:
                while chunk := channel.recv(1 << 20):
                    client.sendall(chunk)
            except Exception:  # either end gone: the relay ends
                pass
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        back = threading.Thread(target=answers, name="gpubox-control-relay", daemon=True)
        back.start()
        try:
            while chunk := client.recv(1 << 20):
                channel.sendall(chunk)
        except Exception:  # either end gone: the relay ends
            pass
        with contextlib.suppress(Exception):
            channel.shutdown_write()
        back.join(timeout=10)


def holder_answers(host: str) -> bool:
    """Whether a holder of *host* (for any project) answers on its control socket."""
    folder = paths.state_dir() / "control"
    try:
        names = os.listdir(folder)
    except OSError:
        return False
    return any(
        name.startswith(f"{host}@")
        and name.endswith(".sock")
        and _owned_socket(folder / name)
        and open_control_agent_alive(folder / name)
        for name in names
    )


def open_control_agent_alive(path: Path) -> bool:
    """Whether something answers on the socket at *path* (a live holder), as opposed to a stale file."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        with _address(path) as address:
            probe.connect(address)
        return True
    except OSError:
        return False
    finally:
        probe.close()
