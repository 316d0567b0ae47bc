"""The client side of the remote agent: upload by content hash, start, and talk framed JSON over one channel."""

from __future__ import annotations

import hashlib
import shlex
import struct
import threading
from functools import cache
from pathlib import Path
from typing import cast

import paramiko

from gpubox.errors import AgentError, HostUnreachable
from gpubox.remote.agent import calls
from gpubox.remote.agent.framing import PROTOCOL, FramedAgent, protocol_mismatch
from gpubox.remote.connection import Connection

__all__ = ["AgentSession", "agent_hash", "agent_source"]

BOOT_TIMEOUT = 30.0

# Runs on the host's python before the agent: it checks the version, receives the agent only when the
# cached copy is missing (one extra round trip on first use, none after), then imports it in the same
# interpreter (no second start, and Python caches its bytecode) and serves on the same pipes.
# Raw os.read is used on purpose: a buffered stdin could swallow bytes meant for the agent.
_BOOT = r"""
import hashlib, os, struct, sys
h = sys.argv[1]
if sys.version_info < (3, 8):
    os.write(1, ("GPUBOX-BOOT old %d.%d\n" % sys.version_info[:2]).encode()); sys.exit(3)
d = os.path.expanduser("~/.gpubox"); p = os.path.join(d, "agent-%s.py" % h)
def rd(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c: sys.exit(4)
        b += c
    return b
if not os.path.exists(p):
    os.write(1, b"GPUBOX-BOOT need\n")
    src = rd(struct.unpack(">I", rd(4))[0])
    if hashlib.sha256(src).hexdigest()[:16] != h:
        os.write(1, b"GPUBOX-BOOT corrupt\n"); sys.exit(5)
    os.makedirs(d, mode=0o700, exist_ok=True)
    t = "%s.%d.tmp" % (p, os.getpid())
    with open(t, "wb") as f:
        f.write(src); f.flush(); os.fsync(f.fileno())
    os.replace(t, p)
os.write(1, b"GPUBOX-BOOT ok\n")
import importlib.util
spec = importlib.util.spec_from_file_location("gpubox_agent", p)
agent = importlib.util.module_from_spec(spec)
sys.modules["gpubox_agent"] = agent
spec.loader.exec_module(agent)
sys.exit(agent.serve())
"""


@cache
def agent_source() -> bytes:
    return (Path(__file__).parent / "host.py").read_bytes()


def agent_hash() -> str:
    return hashlib.sha256(agent_source()).hexdigest()[:16]


def boot_command(python: str, prefer: str | None = None) -> str:
    """The shell line that starts the agent. *prefer* is the interpreter *python* resolved to last time: used
    directly when it still exists, it skips wrappers such as pyenv's shims (~0.1 s on every connection)."""
    script = f"PY={shlex.quote(python)}; "
    if prefer:
        script += f"[ -x {shlex.quote(prefer)} ] && PY={shlex.quote(prefer)}; "
    script += (
        'command -v "$PY" >/dev/null 2>&1 || { echo "gpubox-boot: $PY not found" >&2; exit 127; }; '
        f'exec "$PY" -u -c {shlex.quote(_BOOT)} {agent_hash()}'
    )
    return f"sh -c {shlex.quote(script)}"


def _send_all(channel: paramiko.Channel, data: bytes) -> None:
    """Channel.sendall re-slices the remaining bytes after every packet (quadratic on a 20 MB blob);
    a memoryview slices for free."""
    view = memoryview(data)
    while view:
        sent = channel.send(cast(bytes, view))  # paramiko copies from any buffer
        if sent == 0:
            raise EOFError("channel closed")
        view = view[sent:]


class AgentSession(FramedAgent):
    """One running agent on one host, on an SSH exec channel of its own."""

    def __init__(self, connection: Connection, *, python: str = "python3", prefer: str | None = None) -> None:
        super().__init__()
        self.connection = connection
        self.python = python
        self.prefer = prefer
        self.channel: paramiko.Channel | None = None

    @property
    def host(self) -> str:
        return self.connection.endpoint.display

    @property
    def boot_timeout(self) -> float:
        """How long the agent may take to start and answer hello: twice the host's connect_timeout (30 s by
        default), since starting Python on a loaded host takes a while, but never forever."""
        connect_timeout = getattr(self.connection, "connect_timeout", BOOT_TIMEOUT / 2)
        return max(3.0, 2.0 * float(connect_timeout))

    def start(self) -> AgentSession:
        channel = self.connection.exec(boot_command(self.python, self.prefer))
        channel.settimeout(self.boot_timeout)
        self.channel = channel
        while True:
            line = self._read_line()
            if line == "GPUBOX-BOOT need":
                source = agent_source()
                channel.sendall(struct.pack(">I", len(source)) + source)
            elif line == "GPUBOX-BOOT ok":
                break
            elif line.startswith("GPUBOX-BOOT old"):
                version = line.rsplit(" ", 1)[-1]
                raise AgentError(
                    f"{self.python} on {self.host} is Python {version}; gpubox's agent needs 3.8 or newer "
                    f'(set python = "..." for this host in hosts.toml)'
                )
            else:
                raise AgentError(f"the gpubox agent did not start on {self.host}: unexpected {line[:80]!r}")
        # An agent that started but never answers must not hang gpubox: hello is still under the boot timeout.
        # The protocol is checked both ways: the agent refuses a client_protocol other than its own (answered
        # as a protocol-mismatch error, see _receive), and an agent that does not check (or answers anyway)
        # is refused here.
        try:
            self.hello = dict(calls.hello(self, client_protocol=PROTOCOL))
            if self.hello.get("protocol") != PROTOCOL:
                raise protocol_mismatch(self.host, self.hello.get("protocol"))
        except AgentError:
            self.close()  # the agent exits once its channel closes
            raise
        channel.settimeout(None)
        return self

    def _fail_to_start(self) -> AgentError | HostUnreachable:
        channel = self.channel
        assert channel is not None
        if not self.connection.is_alive():
            during = " while starting the agent" if not self.hello else ""
            return HostUnreachable(f"the connection to {self.host} was lost{during}")
        detail = b""
        try:
            while chunk := channel.recv_stderr(4096):
                detail += chunk
        except (OSError, paramiko.SSHException):
            pass
        # The exit status may trail the stderr EOF by a moment.
        code = channel.exit_status if channel.status_event.wait(5) else None
        if not self.connection.is_alive():
            # The channel's end can be read a moment before the transport notices the connection itself is gone
            # (the host's sshd died): that is a lost link, not an agent that stopped ("exit status -1").
            during = " while starting the agent" if not self.hello else ""
            return HostUnreachable(f"the connection to {self.host} was lost{during}")
        text = detail.decode(errors="replace").strip().splitlines()
        if code == 127 or any(
            line.startswith("gpubox-boot:") and line.endswith("not found") for line in text
        ):
            return AgentError(
                f"{self.python} not found on {self.host}: gpubox's agent needs Python >= 3.8 there "
                f'(set python = "..." for this host in hosts.toml)'
            )
        last = text[-1] if text else f"exit status {code}"
        return AgentError(f"the gpubox agent on {self.host} stopped: {last}")

    def _recv_chunk(self) -> bytes:
        assert self.channel is not None
        try:
            try:
                chunk = self.channel.recv(1 << 20)
            except TimeoutError:
                if not self._link_answers():
                    # Not the agent's fault: the link went quiet (down, or the host froze) while it was starting.
                    # Callers that ride out a dropped link (logs -f, the supervisor) wait for it to come back.
                    raise HostUnreachable(
                        f"{self.host} stopped answering while the gpubox agent was starting (the link is down?)"
                    ) from None
                # The link answers, and what the agent sent before that answer (same TCP stream) is here by now:
                # after an outage its output may merely have been late.
                chunk = self._recv_now()
        except (OSError, paramiko.SSHException, EOFError):
            chunk = b""
        if not chunk:
            raise self._fail_to_start()
        return chunk

    def _send_bytes(self, data: bytes) -> None:
        if self.channel is None:
            raise AgentError("the agent is not started")
        try:
            _send_all(self.channel, data)
        except (OSError, paramiko.SSHException, EOFError):
            raise self._fail_to_start() from None

    def _recv_now(self) -> bytes:
        assert self.channel is not None
        timeout = self.channel.gettimeout()
        self.channel.settimeout(0.5)
        try:
            return self.channel.recv(1 << 20)
        except TimeoutError:
            raise AgentError(
                f"the gpubox agent on {self.host} did not answer within {self.boot_timeout:g} s "
                "(twice connect_timeout)"
            ) from None
        finally:
            self.channel.settimeout(timeout)

    def _link_answers(self, timeout: float = 3.0) -> bool:
        """Whether the host's sshd still answers on this transport (one global request it replies to, even
        with a refusal), telling a stuck agent from a dead link."""
        try:
            transport = self.connection.transport
        except HostUnreachable:
            return False
        answered = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:
                return
            if transport.is_active():
                answered.set()

        # The request blocks until the reply or the transport's end: a thread, so a dead link cannot hang us.
        threading.Thread(target=ask, name="gpubox-link-probe", daemon=True).start()
        return answered.wait(timeout)

    def is_alive(self) -> bool:
        channel = self.channel
        if channel is None or channel.closed or channel.exit_status_ready():
            return False
        return self.connection.is_alive()

    def close(self) -> None:
        if self.channel is not None:
            try:
                self.channel.shutdown_write()
                self.channel.close()
            except (OSError, paramiko.SSHException, EOFError):
                pass
            self.channel = None
