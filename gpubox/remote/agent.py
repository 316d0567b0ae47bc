"""The gpubox agent: one stdlib-only program that runs on the host and answers framed JSON requests.

It is uploaded to ``~/.gpubox/agent-<hash>.py`` when its content changes and started once per connection as
``python3 -u`` on an exec channel; requests and responses travel on that channel's stdin/stdout.

Frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. A message whose JSON has ``"blob": N``
is followed by N raw bytes (binary payloads never go through JSON). Requests are ``{"id", "op", "args"}``;
responses ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error": {"kind", "message"}}``.

This file must run on any host ``python3`` >= 3.8 with nothing installed: standard library only, no syntax or
API newer than 3.8. It is imported by nothing else in gpubox; the client side lives in ``agent_client.py``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
from typing import Any, Callable, Dict, Optional, Tuple

PROTOCOL = 1
AGENT_VERSION = "1"
MAX_FRAME = 64 * 1024 * 1024
NVIDIA_SMI_TIMEOUT = 20


class ProtocolError(Exception):
    pass


class RequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        Exception.__init__(self, message)
        self.kind = kind


# ------------------------------------------------------------------------------------------------ framing


def read_exact(fd: int, count: int) -> bytes:
    chunks = []
    remaining = count
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> Tuple[Dict[str, Any], bytes]:
    (length,) = struct.unpack(">I", read_exact(fd, 4))
    if length > MAX_FRAME:
        raise ProtocolError("frame of %d bytes is over the limit" % length)
    try:
        message = json.loads(read_exact(fd, length).decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError("frame is not JSON: %s" % exc) from None
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    blob = b""
    size = message.get("blob", 0)
    if not isinstance(size, int) or size < 0 or size > MAX_FRAME:
        raise ProtocolError("bad blob size")
    if size:
        blob = read_exact(fd, size)
    return message, blob


def write_frame(fd: int, message: Dict[str, Any], blob: bytes = b"") -> None:
    if blob:
        message = dict(message, blob=len(blob))
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    data = struct.pack(">I", len(body)) + body + blob
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


# --------------------------------------------------------------------------------------------- requests


def op_hello(args: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "protocol": PROTOCOL,
        "agent_version": AGENT_VERSION,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "home": os.path.expanduser("~"),
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "%s %s" % (platform.system(), platform.release())


def _memory() -> Dict[str, Optional[int]]:
    found: Dict[str, Optional[int]] = {"total_bytes": None, "available_bytes": None}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name == "MemTotal":
                    found["total_bytes"] = int(rest.split()[0]) * 1024
                elif name == "MemAvailable":
                    found["available_bytes"] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def _disk(folder: str) -> Dict[str, Any]:
    """Free space where the project folder is (or will be: its nearest existing parent)."""
    path = os.path.abspath(os.path.expanduser(folder))
    probe = path
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        stats = os.statvfs(probe)
    except OSError as exc:
        return {"path": path, "error": str(exc)}
    return {
        "path": path,
        "exists": os.path.isdir(path),
        "free_bytes": stats.f_bavail * stats.f_frsize,
        "total_bytes": stats.f_blocks * stats.f_frsize,
    }


def _cpu_count() -> Optional[int]:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _nvidia_smi() -> Dict[str, Any]:
    """The raw output of ``nvidia-smi``, or why there is none; interpretation happens on the client."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
    try:
        done = subprocess.run(
            [binary],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=NVIDIA_SMI_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return {
            "available": False,
            "reason": "nvidia-smi did not answer within %d s" % NVIDIA_SMI_TIMEOUT,
            "output": "",
        }
    except OSError as exc:
        return {"available": False, "reason": "nvidia-smi could not start: %s" % exc, "output": ""}
    output = done.stdout.decode("utf-8", "replace")
    if done.returncode != 0:
        first = next((line.strip() for line in output.splitlines() if line.strip()), "")
        return {
            "available": False,
            "exit_code": done.returncode,
            "output": output,
            "reason": first or "nvidia-smi exited with status %d" % done.returncode,
        }
    return {"available": True, "exit_code": 0, "output": output, "path": binary}


def op_probe(args: Dict[str, Any]) -> Dict[str, Any]:
    project_dir = args.get("project_dir") or "~"
    if not isinstance(project_dir, str):
        raise RequestError("bad-request", "project_dir must be a string")
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "cpu_count": _cpu_count(),
        "memory": _memory(),
        "disk": _disk(project_dir),
        "nvidia_smi": _nvidia_smi(),
    }


OPS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {"hello": op_hello, "probe": op_probe}


def handle(message: Dict[str, Any]) -> Dict[str, Any]:
    request_id = message.get("id")
    op = message.get("op")
    args = message.get("args") or {}
    try:
        if not isinstance(args, dict):
            raise RequestError("bad-request", "args must be an object")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise RequestError("unknown-op", "unknown op %r" % (op,))
        return {"id": request_id, "ok": True, "result": handler(args)}
    except RequestError as exc:
        return {"id": request_id, "ok": False, "error": {"kind": exc.kind, "message": str(exc)}}
    except Exception as exc:  # one bad request must not end the session
        return {
            "id": request_id,
            "ok": False,
            "error": {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, exc)},
        }


def serve(fd_in: int = 0, fd_out: int = 1) -> int:
    while True:
        try:
            message, _blob = read_frame(fd_in)
        except EOFError:
            return 0
        except ProtocolError as exc:
            write_frame(fd_out, {"id": None, "ok": False, "error": {"kind": "protocol", "message": str(exc)}})
            return 2
        write_frame(fd_out, handle(message))


if __name__ == "__main__":
    sys.exit(serve())
