"""The agent's wire protocol on the client side, whatever carries it: framed JSON requests and their answers.

:class:`FramedAgent` is what :mod:`calls` talks to. Two carriers subclass it: ``client.AgentSession`` (an SSH
exec channel of its own, paramiko) and ``remote.control.ControlAgent`` (the Unix socket of the process that holds
the host, which relays to an agent it already started). This module imports no paramiko, so a command that
rides a held connection never loads it.

``PROTOCOL`` and ``MAX_FRAME`` are the agent's own (``host.py``, the one file sent to the host, cannot import
gpubox); they are repeated here so the client need not load that 2,500-line file, and a test holds the two equal.
"""

from __future__ import annotations

import collections
import itertools
import json
import struct
import threading
from collections.abc import Generator, Iterator
from typing import Any

from gpubox.errors import AgentError, HostUnreachable, RemoteError, UsageError

__all__ = ["MAX_FRAME", "PROTOCOL", "FramedAgent", "protocol_mismatch"]

PROTOCOL = 3
MAX_FRAME = 64 * 1024 * 1024


def protocol_mismatch(host: str, agent_protocol: Any) -> AgentError:
    """The one error for an agent and a client that speak different protocols, whichever side noticed."""
    return AgentError(f"the agent on {host} speaks protocol {agent_protocol}, this gpubox {PROTOCOL}")


class FramedAgent:
    """One running agent; requests are serialised (one in flight at a time, or a pipeline of them).

    A carrier provides :meth:`_recv_chunk` (some bytes, raising when the stream ended or failed) and
    :meth:`_send_bytes`, and :attr:`host` for messages."""

    def __init__(self) -> None:
        self.hello: dict[str, Any] = {}
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        raise NotImplementedError

    def _recv_chunk(self) -> bytes:
        raise NotImplementedError

    def _send_bytes(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def is_alive(self) -> bool:
        """Whether requests can still reach the agent (no promise that the next one will)."""
        raise NotImplementedError

    def take_buffered(self) -> bytes:
        """What was received but not yet read: handed on with the stream when the agent changes hands."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def _read_line(self) -> str:
        while b"\n" not in self._buffer:
            if len(self._buffer) > 4096:
                raise AgentError(f"the gpubox agent on {self.host} sent an unexpected greeting")
            self._buffer += self._recv_chunk()
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode(errors="replace").strip()

    def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._buffer += self._recv_chunk()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def request(self, op: str, args: dict[str, Any] | None = None, blob: bytes = b"") -> dict[str, Any]:
        """One op's answer. gpubox code calls the op's function in calls.py instead, which names the op and its
        fields; this and :meth:`request_with_blob` are what those functions (and tests of the agent) use."""
        result, _ = self.request_with_blob(op, args, blob)
        return result

    def request_with_blob(
        self, op: str, args: dict[str, Any] | None = None, blob: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            request_id = self._send(op, args, blob)
            return self._receive(request_id)

    def pipeline(
        self, requests: Iterator[tuple[str, dict[str, Any], bytes]], depth: int = 2
    ) -> Generator[tuple[dict[str, Any], bytes], None, None]:
        """Send up to *depth* requests ahead of their answers, so the host works while the next batch travels.

        Answers come back in request order; the session is held for the whole pipeline.
        """
        with self._lock:
            in_flight: collections.deque[int] = collections.deque()
            try:
                for op, args, blob in requests:
                    in_flight.append(self._send(op, args, blob))
                    if len(in_flight) >= depth:
                        yield self._receive(in_flight.popleft())
                while in_flight:
                    yield self._receive(in_flight.popleft())
            finally:
                # Answers still due must be read, or the next request would get one of them.
                while in_flight:
                    try:
                        self._receive(in_flight.popleft())
                    except (RemoteError, AgentError):
                        continue
                    except HostUnreachable:
                        break

    def _send(self, op: str, args: dict[str, Any] | None, blob: bytes) -> int:
        request_id = next(self._ids)
        message: dict[str, Any] = {"id": request_id, "op": op, "args": args or {}}
        if blob:
            message["blob"] = len(blob)
        body = json.dumps(message, separators=(",", ":")).encode()
        if len(body) > MAX_FRAME or len(blob) > MAX_FRAME:
            raise AgentError(
                f"a {op} request of {len(body) + len(blob)} bytes is over the agent's frame limit"
            )
        self._send_bytes(struct.pack(">I", len(body)) + body)
        if blob:
            self._send_bytes(blob)
        return request_id

    def _receive(self, request_id: int) -> tuple[dict[str, Any], bytes]:
        (length,) = struct.unpack(">I", self._read_exact(4))
        if length > MAX_FRAME:
            raise AgentError(f"the agent on {self.host} sent a frame of {length} bytes")
        try:
            response = json.loads(self._read_exact(length))
        except ValueError:
            raise AgentError(f"the agent on {self.host} sent something that is not JSON") from None
        reply_blob = b""
        size = response.get("blob", 0) if isinstance(response, dict) else 0
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FRAME:
            raise AgentError(f"the agent on {self.host} announced a binary part of {size!r} bytes")
        if size:
            reply_blob = self._read_exact(size)
        if not isinstance(response, dict) or response.get("id") not in (request_id, None):
            raise AgentError(f"the agent on {self.host} answered out of turn")
        if not response.get("ok"):
            error = response.get("error")
            if not isinstance(error, dict):
                raise AgentError(f"the agent on {self.host} sent an error gpubox cannot read: {error!r:.80}")
            kind = error.get("kind", "error")
            if kind == "protocol-mismatch":
                raise protocol_mismatch(self.host, error.get("protocol"))
            if kind in ("protocol", "unknown-op", "bad-request", "internal"):
                raise AgentError(f"agent on {self.host}: {error.get('message', kind)}")
            if kind == "no-such-run":
                raise UsageError(
                    f"{error.get('message', kind)} ({self.host}); `gpubox runs` lists the runs there"
                )
            raise RemoteError(f"{self.host}: {error.get('message', kind)}")
        result = response.get("result")
        return (result if isinstance(result, dict) else {}), reply_blob
