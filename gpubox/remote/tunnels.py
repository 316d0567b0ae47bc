"""Local port forwards, bound to 127.0.0.1 only, each connection a ``direct-tcpip`` channel on the host's one SSH
transport.

A tunnel asks for its transport on every new connection, so after the supervisor reconnects, the same local URL
simply works again: the listener never goes away with the link. A connection that arrives while the link is down
waits for it (up to :data:`LINK_PATIENCE` seconds) instead of being reset: a page load or Jupyter's websocket
reconnect during a Wi-Fi blip then takes a moment longer, and does not fail.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

# paramiko loads with the first forwarded connection: `gpubox status` asks whether a tunnel answers without it.
if TYPE_CHECKING:
    import paramiko

__all__ = ["Tunnel", "bind_local", "tunnel_answers"]

CHUNK = 64 * 1024
PORT_TRIES = 20
LINK_PATIENCE = 20.0
"""How long a connection that arrives while the link is down waits for it to come back (a browser waits longer)."""
FAILURE_TOLD_EVERY = 60.0


def bind_local(preferred: int) -> socket.socket:
    """A listening socket on 127.0.0.1: the preferred port when free, else one of the next few, else any."""
    candidates = [preferred + offset for offset in range(PORT_TRIES) if 0 < preferred + offset < 65536] + [0]
    last_error: OSError | None = None
    for port in candidates:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError as exc:
            listener.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            last_error = exc
            continue
        listener.listen(128)
        return listener
    raise last_error or OSError(errno.EADDRINUSE, "no free local port")


class Tunnel:
    """127.0.0.1:local_port on this machine → remote_host:remote_port as seen from the host."""

    def __init__(
        self,
        transport: Callable[[], paramiko.Transport],
        remote_port: int,
        *,
        local_port: int | None = None,
        remote_host: str = "127.0.0.1",
        name: str = "tunnel",
        on_link_lost: Callable[[], None] | None = None,
        patience: float = LINK_PATIENCE,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        """*transport* raises :class:`~gpubox.errors.HostUnreachable` while the link is down; *on_link_lost* is
        then called (the supervisor's wake-up, so it reconnects now rather than at its next heartbeat) and the
        connection waits up to *patience* seconds for a transport again. *on_failure* hears why a connection
        could not be forwarded, at most once a minute (a browser retries far more often)."""
        self.transport = transport
        self.on_link_lost = on_link_lost
        self.patience = patience
        self.on_failure = on_failure
        self._failure_told_at = -FAILURE_TOLD_EVERY
        self.remote_port = remote_port
        self.remote_host = remote_host
        self.name = name
        self._preferred = local_port or remote_port
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.failures = 0
        """Connections that could not be forwarded (host unreachable, nothing listening there)."""

    @property
    def local_port(self) -> int:
        if self._listener is None:
            raise RuntimeError("the tunnel is not started")
        port: int = self._listener.getsockname()[1]
        return port

    def start(self) -> Tunnel:
        self._listener = bind_local(self._preferred)
        threading.Thread(target=self._accept, name=f"gpubox-tunnel-{self.name}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, address = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.add(client)
            threading.Thread(
                target=self._forward,
                args=(client, address),
                name=f"gpubox-tunnel-{self.name}-conn",
                daemon=True,
            ).start()

    def _forward(self, client: socket.socket, address: tuple[str, int]) -> None:
        import paramiko

        channel = None
        try:
            try:
                channel = self._open_channel(address)
            except Exception as exc:
                # The link is down or nothing listens on the host: this browser request fails, the next may not.
                self.failures += 1
                self._tell_failure(exc)
                return
            try:
                _pump(client, channel)
            except (OSError, EOFError, ValueError, paramiko.SSHException):
                # The browser reset the connection, or the link dropped mid-copy: that connection is over.
                return
        finally:
            with contextlib.suppress(Exception):
                if channel is not None:
                    channel.close()
            with contextlib.suppress(OSError):
                client.close()
            with self._lock:
                self._connections.discard(client)

    def _tell_failure(self, exc: Exception) -> None:
        import paramiko

        now = time.monotonic()
        if self.on_failure is None or now - self._failure_told_at < FAILURE_TOLD_EVERY:
            return
        self._failure_told_at = now
        if isinstance(exc, paramiko.ChannelException):
            why = f"nothing answers on the host's {self.remote_host}:{self.remote_port} ({exc.text})"
        else:
            why = str(exc) or type(exc).__name__
        self.on_failure(f"{self.name}: a connection through its tunnel failed: {why}")

    def _open_channel(self, address: tuple[str, int]) -> paramiko.Channel:
        """A channel to the service, waiting out a dropped link; what the host answers (nothing listens there,
        the channel is refused) is final."""
        import paramiko

        from gpubox.errors import HostUnreachable

        deadline = time.monotonic() + self.patience
        while True:
            transport = None
            try:
                transport = self.transport()
                return transport.open_channel(
                    "direct-tcpip", (self.remote_host, self.remote_port), address, timeout=15
                )
            except HostUnreachable:
                pass  # the link is down: wait for the reconnect
            except paramiko.ChannelException:
                raise  # the host refused it (nothing listens there): final
            except (paramiko.SSHException, EOFError, OSError):
                # A transport that died as the channel was asked for fails the request in this thread before its
                # own thread has marked it inactive; a live one fails it this way only when two refusals race in
                # paramiko. A moment tells the two apart: a dead link is waited out, a refusal is final.
                if transport is not None:
                    self._stopping.wait(0.2)
                    if transport.is_active():
                        raise
            if self._stopping.is_set() or time.monotonic() >= deadline:
                raise HostUnreachable("the link to the host stayed down")
            if self.on_link_lost is not None:
                self.on_link_lost()
            self._stopping.wait(0.1)


def _pump(client: socket.socket, channel: paramiko.Channel) -> None:
    """Copy both ways until either side closes; a half-close is passed on as one.

    Each direction has its own thread blocked in a read: nothing here ever asks the channel for a file
    descriptor to select() on. paramiko makes that descriptor a pipe its transport thread writes to as data
    arrives, and closes it when the channel is closed. A browser that resets a download closes the channel while
    data still arrives: the transport thread then wrote to a closed descriptor, got EBADF and took the whole
    SSH connection down (sync, runs and every tunnel with it), or wrote into whatever file took that number."""
    import paramiko

    def upstream() -> None:
        try:
            while data := client.recv(CHUNK):
                channel.sendall(data)
            channel.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            # The browser reset the connection (the host's side of it ends too), or the link dropped under the
            # channel (closing it then fails the same way: nothing is left to close).
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()

    sender = threading.Thread(target=upstream, name="gpubox-tunnel-upstream", daemon=True)
    sender.start()
    try:
        while data := channel.recv(CHUNK):
            client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
        # The host is done sending; what the browser still sends goes on until it closes, or the channel does.
        while sender.is_alive() and not channel.closed:
            sender.join(1.0)
    finally:
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)  # wakes the upstream thread if it still waits on the browser
        sender.join()


def tunnel_answers(local_port: int, timeout: float = 3.0) -> bool:
    """Whether the service behind a tunnel answers: the tunnel closes a connection at once when nothing
    listens on the host's port, so an HTTP request that gets bytes back, or is held open (a server that speaks
    something else), counts as answering; a refused connection or an early close not. While the link is down the
    tunnel holds connections too: `status` asks only when the holder says the link is up."""
    try:
        with socket.create_connection(("127.0.0.1", local_port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return bool(sock.recv(1))
    except TimeoutError:
        return True
    except OSError:
        return False
