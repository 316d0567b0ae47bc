"""The gpubox agent: one stdlib-only program that runs on the host and answers framed JSON requests.

It is uploaded to ``~/.gpubox/agent-<hash>.py`` when its content changes and started once per connection as
``python3 -u`` on an exec channel; requests and responses travel on that channel's stdin/stdout.

Frame: a 4-byte big-endian length, then that many bytes of UTF-8 JSON. A message whose JSON has ``"blob": N``
is followed by N raw bytes (binary payloads never go through JSON). Requests are ``{"id", "op", "args"}``;
responses ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error": {"kind", "message"}}``.
Every op, its fields, the errors and the on-host layout of ``~/.gpubox`` are in PROTOCOL.md next to this file.

This file must run on any host ``python3`` >= 3.8 with nothing installed: standard library only, no syntax or
API newer than 3.8. In gpubox only the client (``client.py``, ``calls.py``) imports it, for its constants.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

# PROTOCOL is the contract between this file and the client (client.py, calls.py), checked both ways at hello:
# the client sends its own number and this agent refuses a different one, and the client refuses an agent
# that answers with a different one (one AgentError, exit 1). A client uploads and runs the agent whose content
# hash it carries, so the two halves normally come from the same gpubox; the check catches the rest (an agent
# file changed on the host after it was written, a client that runs an agent it did not bring).
#
# PROTOCOL MUST be bumped when a client and an agent of different gpubox versions would misread each other:
#   - the framing changes (length prefix, the blob announcement, the boot lines ``GPUBOX-BOOT ...``);
#   - an op is removed or renamed, or a request field is removed, renamed, or changes type or meaning;
#   - an answer field the client reads is removed, renamed, or changes type or meaning;
#   - an error kind the client maps (see PROTOCOL.md, "Errors") is removed or changes meaning.
# It need not be bumped for a new op, a new optional request field (absent keeps the old behaviour), a new
# answer field, a new error kind, or a fix inside a handler: those change only this file's hash, so clients
# upload the new file. The on-host layout under ~/.gpubox is a separate contract that no number guards:
# agents of every gpubox version that reaches this host share it at the same time (PROTOCOL.md, "Layout").
# 2: `apply` moves files on the host (op "mv"); an agent of protocol 1 fails a batch holding one.
# 3: an `apply` answer no longer means the files are on disk (the agent no longer fdatasyncs each one); the
#    `flush` op does, and a client of protocol 2 would take writes for durable that are not.
PROTOCOL = 3
# AGENT_VERSION names this file's revision for a person reading a host's hello answer; nothing compares it
# (the content hash decides which agent file runs). Bump it with PROTOCOL, or for any change worth seeing there.
AGENT_VERSION = "3"
MAX_FRAME = 64 * 1024 * 1024
NVIDIA_SMI_TIMEOUT = 20
# Importing TensorFlow for the first time on a cold disk can take a minute; a hung import must not hang us.
FRAMEWORK_TIMEOUT = 120
MAX_FRAMEWORK_TIMEOUT = 600
FRAMEWORK_MARK = "GPUBOX-FRAMEWORK "


class ProtocolError(Exception):
    pass


class RequestError(Exception):
    def __init__(self, kind: str, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        Exception.__init__(self, message)
        self.kind = kind
        self.details = details or {}


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
    """Who this agent is. A client that says which protocol it speaks (``client_protocol``) is refused unless
    it is this agent's; a hello without it (a heartbeat) is answered as is."""
    client = args.get("client_protocol")
    if client is not None and (type(client) is not int or client != PROTOCOL):
        raise RequestError(
            "protocol-mismatch",
            "this agent speaks protocol %d, the client %r" % (PROTOCOL, client),
            {"protocol": PROTOCOL},
        )
    return {
        "protocol": PROTOCOL,
        "agent_version": AGENT_VERSION,
        "python": platform.python_version(),
        "executable": sys.executable,
        "pid": os.getpid(),
        "home": os.path.expanduser("~"),
        "boot_id": _boot_id(),
    }


def _boot_id() -> Optional[str]:
    """What changes when the host boots again (Linux): how a client tells that writes not yet flushed may have
    been lost in a crash since."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


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


def _nvidia_smi(arguments: Tuple[str, ...] = (), timeout: int = NVIDIA_SMI_TIMEOUT) -> Dict[str, Any]:
    """The raw output of ``nvidia-smi`` (with *arguments*), or why there is none; the client interprets it."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
    try:
        done = subprocess.run(
            [binary, *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {
            "available": False,
            "reason": "nvidia-smi did not answer within %d s" % timeout,
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
    smi = _nvidia_smi()
    return {
        "hostname": socket.gethostname(),
        "os": _os_name(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "cpu_count": _cpu_count(),
        "memory": _memory(),
        "disk": _disk(project_dir),
        "nvidia_smi": smi,
        "gpu_query": _gpu_query() if smi.get("available") else None,
    }


# The host's own word on each GPU: its compute capability (drivers from R510 on) and its full name (the table
# cuts long names). An older nvidia-smi refuses the compute_cap field; the names alone are still worth asking.
GPU_QUERY_FIELDS = ("index", "pci.bus_id", "name", "compute_cap")


def _gpu_query() -> Dict[str, Any]:
    answer = _nvidia_smi(("--query-gpu=" + ",".join(GPU_QUERY_FIELDS), "--format=csv"))
    if not answer.get("available") and "not a valid field" in answer.get("output", ""):
        answer = _nvidia_smi(("--query-gpu=" + ",".join(GPU_QUERY_FIELDS[:-1]), "--format=csv"))
    return answer


# ------------------------------------------------------------------------------------------------- sync
#
# The host side of one-way-safe sync. Every path is relative to the project root and checked before use:
# no absolute paths, no "..", never through a symlinked folder, so nothing is written outside the root.
# Each write is staged in <root>/.gpubox-staging (same filesystem), then renamed into place only if the host's
# copy still matches what the client last saw (just in time). Nothing is fdatasync'ed per file: the client asks
# for durability once per pass (`flush`), and keeps a note of what it sent until the flush is answered, so a host
# that crashed before that is found out on the next connect (its boot id changed) and those files sent again.

STAGING = ".gpubox-staging"
Row = List[Any]
"""[kind, size, mtime_ns, exec, symlink target]: what sync compares about one path."""


class PathRefused(RequestError):
    def __init__(self, message: str) -> None:
        RequestError.__init__(self, "bad-path", message)


def _root(args: Dict[str, Any], create: bool = True) -> str:
    """The project root, resolved; only a request that writes creates it (a dry run leaves no trace)."""
    root = args.get("root")
    if not isinstance(root, str) or not root:
        raise RequestError("bad-request", "root must be a non-empty string")
    root = os.path.abspath(os.path.expanduser(root))
    if create:
        os.makedirs(root, exist_ok=True)
    return os.path.realpath(root)


def _parts(rel: Any) -> List[str]:
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\0" in rel:
        raise PathRefused("refusing path %r: not a relative path" % (rel,))
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise PathRefused("refusing path %r: empty, '.' or '..' component" % (rel,))
    if parts[0] == STAGING:
        raise PathRefused("refusing path %r: gpubox's staging folder" % (rel,))
    return parts


def _entry(st: os.stat_result, path: str) -> Row:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return ["l", 0, 0, False, os.readlink(path)]
    if stat.S_ISDIR(mode):
        return ["d", 0, 0, False, ""]
    if stat.S_ISREG(mode):
        return ["f", st.st_size, st.st_mtime_ns, bool(mode & 0o100), ""]
    return ["o", 0, 0, False, ""]


def _lentry(path: str) -> Optional[Row]:
    try:
        return _entry(os.lstat(path), path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _same(current: Optional[Row], wanted: Optional[Row]) -> bool:
    if current is None or wanted is None:
        return current is None and wanted is None
    if current[0] != wanted[0]:
        return False
    if current[0] == "f":
        return bool(current[1] == wanted[1] and current[2] == wanted[2] and current[3] == wanted[3])
    if current[0] == "l":
        return bool(current[4] == wanted[4])
    return bool(current[0] != "o")


def _stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _set_aside(path: str, stamp: str) -> str:
    """Keep the host's copy next to the path as NAME.gpubox-conflict-<UTC time>; return the new name."""
    _verified_folders.clear()  # it may have been a folder the batch already checked
    candidate = "%s.gpubox-conflict-%s" % (path, stamp)
    counter = 1
    while os.path.lexists(candidate):
        counter += 1
        candidate = "%s.gpubox-conflict-%s-%d" % (path, stamp, counter)
    os.rename(path, candidate)
    return os.path.basename(candidate)


_verified_folders: Set[str] = set()
"""Parent folders already checked in this batch (one lstat per folder, not per file and level)."""


def _parent(root: str, parts: List[str], stamp: str, conflicts: List[str]) -> str:
    """Create the parent folders of a path; a file in the way is set aside, a symlinked folder refused."""
    parent = "/".join(parts[:-1])
    if parent in _verified_folders:
        return os.path.join(root, parent) if parent else root
    current = _checked_parent(root, parts, stamp, conflicts)
    _verified_folders.add(parent)
    return current


def _checked_parent(root: str, parts: List[str], stamp: str, conflicts: List[str]) -> str:
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if stat.S_ISDIR(st.st_mode):
            continue
        if stat.S_ISLNK(st.st_mode):
            raise PathRefused("refusing to write through symlinked folder %s" % current[len(root) + 1 :])
        conflicts.append(current[len(root) + 1 :] + " -> " + _set_aside(current, stamp))
        os.mkdir(current)
    return current


def _existing_parent(root: str, parts: List[str]) -> Optional[str]:
    """The parent folder of a path when it already exists as a real folder (None otherwise); never creates."""
    current = root
    for part in parts[:-1]:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            raise PathRefused("refusing to work through symlinked folder %s" % current[len(root) + 1 :])
        if not stat.S_ISDIR(st.st_mode):
            return None
    return current


_FLUSH_THREADS = 16
_SYNCFS_FROM = 64
"""From this many files on, one syncfs(2) of the project's filesystem beats an fdatasync per file."""


def _stage_one(job: Tuple[str, int, int, int, bool], blob: bytes) -> None:
    """Write one file's bytes to its staging name, with its mtime and mode (made durable later, by `flush`)."""
    temp, offset, size, mtime, executable = job
    if offset < 0:
        # Written piece by piece by `stage` requests (a file too large for one frame): only the mode and the
        # mtime are left to do.
        fd = os.open(temp, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fchmod(fd, 0o755 if executable else 0o644)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
        return
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755 if executable else 0o644)
    try:
        view = memoryview(blob)[offset : offset + size]
        while view:
            view = view[os.write(fd, view) :]
        os.utime(fd, ns=(mtime, mtime))
        if size >= _EARLY_WRITEBACK_FROM:
            _start_writeback(fd)
    finally:
        os.close(fd)


_EARLY_WRITEBACK_FROM = 1 << 20
_sync_file_range: List[Any] = []


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing a large file to disk now, without waiting for it (sync_file_range(2),
    SYNC_FILE_RANGE_WRITE): the pass's flush then finds most of its bytes already there, instead of writing
    them all while the client waits. Linux only; elsewhere (or without ctypes) the flush does it all."""
    if not _sync_file_range:
        try:
            import ctypes

            call = ctypes.CDLL(None, use_errno=True).sync_file_range
            call.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            _sync_file_range.append(call)
        except (ImportError, OSError, AttributeError):
            _sync_file_range.append(None)
    call = _sync_file_range[0]
    if call is not None:
        call(fd, 0, 0, 2)  # a hint: its failure changes nothing the flush does not cover


def _stage_all(jobs: List[Tuple[str, int, int, int, bool]], blob: bytes) -> None:
    for job in jobs:
        _stage_one(job, blob)


_unflushed: Dict[str, Set[str]] = {}
"""Per project root, the paths this agent wrote (files, links, folders) since the client last asked to flush."""


def _syncfs(path: str) -> bool:
    """syncfs(2) on the filesystem holding *path*; False where the call is not available (not Linux, no ctypes)."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).syncfs
    except (ImportError, OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        if call(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)
    return True


def _sync_path(path: str) -> None:
    """fsync a file or folder if it is still there (what stands there now is what must last)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return  # gone since, or a symlink: its folder's fsync keeps it
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def op_flush(args: Dict[str, Any]) -> Dict[str, Any]:
    """Make durable what this agent wrote under the root since the last flush, plus ``paths`` (what an earlier
    agent wrote that its client never saw flushed): the files and their folders. Many files: one syncfs(2)
    of the filesystem; a few: an fsync each, in parallel, so as not to flush everyone else's data."""
    root = _root(args, create=False)
    given = args.get("paths") or []
    if not isinstance(given, list):
        raise RequestError("bad-request", "paths must be a list")
    with contextlib.suppress(OSError):
        os.rmdir(
            os.path.join(root, STAGING)
        )  # the pass is over; only when empty: another may be staging there
    wanted = set(_unflushed.pop(root, set()))
    for rel in given:
        _parts(rel)
        wanted.add(rel)
    if not wanted:
        return {"files": 0, "how": "nothing"}
    how = "fsync"
    try:
        if len(wanted) >= _SYNCFS_FROM and _syncfs(root):
            how = "syncfs"
        else:
            folders = set()
            for rel in wanted:
                folder = rel.rpartition("/")[0]
                while True:
                    folders.add(folder)
                    if not folder:
                        break
                    folder = folder.rpartition("/")[0]
            targets = [os.path.join(root, rel) for rel in wanted]
            targets += [os.path.join(root, folder) if folder else root for folder in folders]
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(_FLUSH_THREADS, len(targets))) as pool:
                for _ in pool.map(_sync_path, targets):
                    pass
    except OSError as exc:
        _unflushed.setdefault(root, set()).update(wanted)  # still owed
        raise RequestError(
            "os-error", "making the synced files durable on the host failed: %s" % (exc.strerror or exc)
        ) from None
    return {"files": len(wanted), "how": how}


def _trash_dir(args: Dict[str, Any]) -> str:
    slug = args.get("trash")
    if not isinstance(slug, str) or not slug or "/" in slug or slug in (".", ".."):
        raise RequestError("bad-request", "trash must be a plain folder name")
    return os.path.join(os.path.expanduser("~"), ".gpubox", "trash", slug)


def _trash_free(batch: str, rel: str) -> bool:
    """True when *rel* can go into the trash folder *batch* without landing on or under something there."""
    current = batch
    for part in rel.split("/")[:-1]:
        current = os.path.join(current, part)
        if os.path.islink(current) or (os.path.lexists(current) and not os.path.isdir(current)):
            return False
    return not os.path.lexists(os.path.join(batch, rel))


def _to_trash(path: str, rel: str, trash_batch: str) -> str:
    """Move *path* into the trash; return where it went, relative to the project's trash folder."""
    _verified_folders.clear()
    # Batches of the same second share a stamp: a path trashed twice (or a file, then a folder of that name)
    # goes to a sibling folder instead of failing or overwriting the first copy.
    batch, counter = trash_batch, 1
    while not _trash_free(batch, rel):
        counter += 1
        batch = "%s-%d" % (trash_batch, counter)
    destination = os.path.join(batch, rel)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    try:
        os.rename(path, destination)
    except OSError:
        shutil.move(path, destination)  # the trash is on another filesystem than the project
    return os.path.basename(batch) + "/" + rel


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _move_source(root: str, op: Dict[str, Any], trash_batch: str) -> Optional[str]:
    """Where a move's content is now: a path of the project (``f``) or of its trash folder (``T``); None when
    a folder on the way is missing. A symlinked folder on the way is refused."""
    if op.get("T") is not None:
        parts = _parts(op.get("T"))
        trash = os.path.dirname(trash_batch)
        folder = os.path.join(trash, *parts[:-1])
        if not os.path.isdir(folder):
            return None
        real_trash = os.path.realpath(trash)
        if not (os.path.realpath(folder) + "/").startswith(real_trash + "/"):
            raise PathRefused("refusing to move %r out of the trash through a symlink" % (op.get("T"),))
        return os.path.join(folder, parts[-1])
    parts = _parts(op.get("f"))
    parent = _existing_parent(root, parts)
    return None if parent is None else parent + "/" + parts[-1]


def _move(
    root: str,
    op: Dict[str, Any],
    path: str,
    rel: str,
    current: Optional[Row],
    stamp: str,
    trash_batch: str,
    conflicts: List[str],
) -> List[str]:
    """Rename a file the host already holds to *path*, once its facts and digest show it is the content
    wanted there; ``["miss", why]`` leaves everything as it was (the client then writes and deletes)."""
    size, mtime, digest = op.get("n"), op.get("m"), op.get("h")
    if not isinstance(size, int) or not isinstance(mtime, int) or not isinstance(digest, str):
        raise RequestError("bad-request", "move %r needs n, m and h" % (rel,))
    wanted = ["f", size, mtime, bool(op.get("x")), ""]
    source = _move_source(root, op, trash_batch)
    found = None if source is None else _lentry(source)
    if source is None or found is None:
        return ["miss", "the file to move is gone"]
    if not _same(found, op.get("e")) or not _same(found, wanted):
        return ["miss", "the file to move changed on the host"]
    if _digest(source) != digest:
        return ["miss", "the file to move holds other content"]
    if _same(current, wanted):
        # Already in place (an earlier batch wrote it): the origin goes the way of any deletion.
        if op.get("T") is None:
            _to_trash(source, "/".join(_parts(op.get("f"))), trash_batch)
        return ["same"]
    note = ""
    if current is not None and current[0] == "d":
        try:
            _verified_folders.clear()
            os.rmdir(path)
        except OSError:
            note = _set_aside(path, stamp)
    elif current is not None:
        note = _set_aside(path, stamp)  # something the client did not know of: kept, never overwritten
    if note:
        conflicts.append(rel + " -> " + note)
    _verified_folders.clear()
    os.rename(source, path)
    if op.get("T") is not None:
        # Taken back out of the trash: the folders it leaves empty there go too.
        folder, trash = os.path.dirname(source), os.path.dirname(trash_batch)
        while folder.startswith(trash + "/"):
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)
    return ["conflict", note] if note else ["ok"]


def _sweep_staging(staging: str, keep: bool = False) -> None:
    """Remove what an agent killed mid-batch left staged (files named <pid>-<n> of a process now gone), and the
    folder when empty, unless *keep* (a pass is under way: see op_apply)."""
    try:
        names = os.listdir(staging)
    except OSError:
        return
    for name in names:
        try:
            if _alive(int(name.split("-", 1)[0])):
                continue  # that agent is still at work
        except ValueError:
            pass
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(staging, name))
    if not keep:
        with contextlib.suppress(OSError):
            os.rmdir(staging)


def _alive(pid: int) -> bool:
    """Whether process *pid* still runs; a killed agent not yet reaped (a zombie) does not."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        if os.path.isdir("/proc/self"):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # alive, another user's
    return True


def op_manifest(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    """Every entry under the root, skipping gpubox's staging folder and the folders the client names."""
    root = _root(args, create=False)
    _sweep_staging(os.path.join(root, STAGING))
    skip = set(args.get("skip") or ())
    skip.add(STAGING)
    rows = []
    only = args.get("only")
    stack = [""]
    if only:
        # Just these subtrees (pull asks for the outputs folders, not the whole project).
        stack = []
        for rel in only:
            parts = _parts(rel)
            path = os.path.join(root, *parts)
            row = _lentry(path)
            if row is None or os.path.realpath(os.path.dirname(path)) != os.path.dirname(path):
                continue
            rows.append([rel, *row])
            if row[0] == "d":
                stack.append(rel)
    while stack:
        folder = stack.pop()
        try:
            listing = os.scandir(os.path.join(root, folder) if folder else root)
        except OSError:
            continue
        with listing:
            for item in listing:
                rel = folder + "/" + item.name if folder else item.name
                if rel in skip:
                    continue
                try:
                    row = _entry(item.stat(follow_symlinks=False), item.path)
                except OSError:
                    continue
                rows.append([rel, *row])
                if row[0] == "d":
                    stack.append(rel)
    data = zlib.compress(json.dumps(rows, separators=(",", ":")).encode("utf-8"), 1)
    return {"count": len(rows), "root": root}, data


def op_apply(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    root = _root(args)
    ops = args.get("ops")
    if not isinstance(ops, list):
        raise RequestError("bad-request", "ops must be a list")
    trash = _trash_dir(args)
    stamp = _stamp()
    trash_batch = os.path.join(trash, stamp)
    _verified_folders.clear()
    staging = os.path.join(root, STAGING)
    # The staging folder stays while more batches of the pass follow (``more``; its flush removes it): a folder
    # made anew for each batch gets its inodes from a block group of its own, and creating files there cost
    # ext4 ~10x more (0.24 ms a file, strace of a 50,000-file sync) than in a folder that already has them.
    _sweep_staging(staging, keep=True)
    staged: Dict[int, str] = {}
    checked: Dict[int, List[str]] = {}
    jobs = []
    offset = 0
    prefix = "%s/%d-" % (staging, os.getpid())
    try:
        for index, op in enumerate(ops):
            if op.get("o") != "w":
                continue
            checked[index] = _parts(op.get("p"))
            size = op.get("n")
            mtime = op.get("m")
            if op.get("s") is not None:  # its bytes came before, in `stage` requests
                temp = _staged_part(staging, op.get("s"))
                if not isinstance(size, int) or os.path.getsize(temp) != size:
                    raise RequestError("bad-request", "write %r has a bad size" % (op.get("p"),))
                if not isinstance(mtime, int):
                    raise RequestError("bad-request", "write %r has a bad mtime" % (op.get("p"),))
                staged[index] = temp
                jobs.append((temp, -1, size, mtime, bool(op.get("x"))))
                continue
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise RequestError("bad-request", "write %r has a bad size" % (op.get("p"),))
            if not isinstance(mtime, int):
                raise RequestError("bad-request", "write %r has a bad mtime" % (op.get("p"),))
            temp = prefix + str(index)
            staged[index] = temp
            jobs.append((temp, offset, size, mtime, bool(op.get("x"))))
            offset += size
        if jobs:
            os.makedirs(staging, exist_ok=True)
            _stage_all(jobs, blob)
    except Exception as exc:
        # A refused path or a malformed op fails the whole batch: nothing it staged may stay behind.
        for temp in staged.values():
            with contextlib.suppress(OSError):
                os.unlink(temp)
        with contextlib.suppress(OSError):
            os.rmdir(staging)
        if not isinstance(exc, OSError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # say so plainly, with what the batch needed
            raise RequestError(
                "disk-full",
                "host disk full: no space left in %s for this batch (%d bytes); nothing was changed, and sync "
                "goes on once space is freed there" % (root, offset),
            ) from None
        raise RequestError(
            "os-error", "staging on the host failed, nothing was changed: %s" % (exc.strerror or exc)
        ) from None
    results = []
    conflicts: List[str] = []
    written = _unflushed.setdefault(root, set())
    for index, op in enumerate(ops):
        outcome = ["error", "%s: failed" % (op.get("p"),)]
        try:
            outcome = _apply_one(
                root, op, staged.get(index), stamp, trash_batch, conflicts, checked.get(index)
            )
            if outcome[0] in ("ok", "conflict", "same"):
                # Deletions and a move's origin too: the fsync of their folder keeps the entry gone.
                written.update(rel for rel in (op.get("p"), op.get("f")) if isinstance(rel, str) and rel)
        except PathRefused as exc:
            outcome = ["refused", str(exc)]
        except OSError as exc:
            outcome = ["error", "%s: %s" % (op.get("p"), exc.strerror or exc)]
        finally:
            results.append(outcome)
            leftover = staged.pop(index, None)
            # A write put in place took its staged file with it; any other outcome leaves it to remove.
            if leftover is not None and not (op.get("o") == "w" and outcome[0] in ("ok", "conflict")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
    if not args.get("more"):
        with contextlib.suppress(OSError):
            os.rmdir(staging)  # only when empty: another batch may be staging there
    return {"results": results, "conflicts": conflicts}, b""


def _apply_one(
    root: str,
    op: Dict[str, Any],
    temp: Optional[str],
    stamp: str,
    trash_batch: str,
    conflicts: List[str],
    parts: Optional[List[str]] = None,
) -> List[str]:
    kind = op.get("o")
    if parts is None:
        parts = _parts(op.get("p"))
    rel = "/".join(parts)
    if kind in ("rm", "rmdir"):
        # A deletion never creates folders nor sets aside a host file standing where a folder was.
        folder = _existing_parent(root, parts)
        if folder is None:
            return ["gone"]
        path = folder + "/" + parts[-1]
    else:
        path = _parent(root, parts, stamp, conflicts) + "/" + parts[-1]
    current = _lentry(path)
    expect = op.get("e")
    if kind in ("w", "l"):
        wanted = (
            ["f", op.get("n"), op.get("m"), bool(op.get("x")), ""]
            if kind == "w"
            else ["l", 0, 0, False, op.get("t")]
        )
        if _same(current, wanted) and not op.get("a"):
            return ["same"]
        note = ""
        if current is not None and current[0] == "d":
            # A folder the client replaced by a file: gone if empty, else it holds host files and is kept aside.
            try:
                _verified_folders.clear()
                os.rmdir(path)
            except OSError:
                note = _set_aside(path, stamp)
        elif current is not None and op.get("r"):
            _to_trash(path, rel, trash_batch)  # local wins by request: the host's copy waits in the trash
        elif current is not None and not _same(current, expect):
            note = _set_aside(path, stamp)
        if note:
            conflicts.append(rel + " -> " + note)
        if kind == "w":
            if temp is None:
                raise RequestError("bad-request", "write %r was not staged" % (rel,))
            os.replace(temp, path)
        else:
            target = op.get("t")
            if not isinstance(target, str) or not target:
                raise RequestError("bad-request", "symlink %r needs a target" % (rel,))
            if os.path.lexists(path):
                os.unlink(path)
            os.symlink(target, path)
        return ["conflict", note] if note else ["ok"]
    if kind == "d":
        if current is not None and current[0] == "d":
            return ["same"]
        note = ""
        if current is not None:
            if not _same(current, expect):
                note = _set_aside(path, stamp)
                conflicts.append(rel + " -> " + note)
            else:
                _to_trash(path, rel, trash_batch)
        os.mkdir(path)
        return ["conflict", note] if note else ["ok"]
    if kind == "rm":
        if current is None:
            return ["gone"]
        if current[0] == "d" or not _same(current, expect):
            return ["kept"]
        return ["ok", _to_trash(path, rel, trash_batch)]
    if kind == "mv":
        return _move(root, op, path, rel, current, stamp, trash_batch, conflicts)
    if kind == "rmdir":
        if current is None:
            return ["gone"]
        if current[0] != "d":
            return ["kept"]
        try:
            _verified_folders.clear()
            os.rmdir(path)
        except OSError:
            return ["kept"]
        return ["ok"]
    raise RequestError("bad-request", "unknown sync op %r" % (kind,))


def op_read(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    """Byte ranges of files under the root (for pull), with each file's size and mtime at read time.

    ``files`` is a list of [path, offset, length]; a file that vanished or cannot be read is reported, not
    fatal. Large files are read in several requests, so no frame has to hold a whole checkpoint.
    """
    root = _root(args, create=False)
    wanted = args.get("files")
    if not isinstance(wanted, list):
        raise RequestError("bad-request", "files must be a list")
    found = []
    chunks = []
    for item in wanted:
        if not isinstance(item, list) or len(item) != 3:
            raise RequestError("bad-request", "each file is [path, offset, length]")
        rel, offset, length = item
        parts = _parts(rel)
        if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
            raise RequestError("bad-request", "bad range for %r" % (rel,))
        folder = os.path.join(root, *parts[:-1]) if len(parts) > 1 else root
        if os.path.realpath(folder) != folder:
            raise PathRefused("refusing to read %r through a symlinked folder" % (rel,))
        try:
            fd = os.open(os.path.join(folder, parts[-1]), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            found.append([rel, None, exc.strerror or str(exc), 0])
            continue
        try:
            st = os.fstat(fd)
            pieces = []
            remaining = min(length, max(0, st.st_size - offset))
            position = offset
            while remaining > 0:
                piece = os.pread(fd, min(remaining, 1 << 20), position)
                if not piece:
                    break
                pieces.append(piece)
                position += len(piece)
                remaining -= len(piece)
            data = b"".join(pieces)
        finally:
            os.close(fd)
        found.append([rel, [st.st_size, st.st_mtime_ns, bool(st.st_mode & 0o100)], None, len(data)])
        chunks.append(data)
    return {"files": found}, b"".join(chunks)


def op_prune_trash(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    trash = _trash_dir(args)
    days = args.get("days", 7)
    if not isinstance(days, (int, float)) or days < 0:
        raise RequestError("bad-request", "days must be a number >= 0")
    removed = 0
    cutoff = time.time() - days * 86400
    try:
        batches = os.listdir(trash)
    except OSError:
        batches = []
    for name in batches:
        path = os.path.join(trash, name)
        try:
            if os.lstat(path).st_mtime < cutoff:
                shutil.rmtree(path)
                removed += 1
        except OSError:
            pass
    return {"removed": removed}, b""


_parts_staged = [0]


def _staged_part(staging: str, name: Any) -> str:
    """The path of a file this agent staged with `stage` requests; any other name is refused."""
    if not isinstance(name, str) or not re.match(r"^%d-part-[0-9]+$" % os.getpid(), name):
        raise RequestError("bad-request", "%r is not a file this agent staged" % (name,))
    path = os.path.join(staging, name)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise RequestError("bad-request", "%r is not a file this agent staged" % (name,))
    return path


def op_stage(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    """One piece of a file too large for one frame, written at its offset into a file in the staging folder;
    the `apply` that finishes it names that file ("s") instead of carrying the bytes. Staged names start with
    this agent's pid, so a sweep leaves them alone while it lives and removes them once it is gone."""
    root = _root(args)
    staging = os.path.join(root, STAGING)
    name = args.get("name")
    offset = args.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise RequestError("bad-request", "offset must be a non-negative integer")
    if args.get("discard"):
        # The client gave up on this file (it grew past the size limit while being read): nothing stays.
        with contextlib.suppress(OSError):
            os.unlink(_staged_part(staging, name))
        return {"name": name}, b""
    if name is None:
        if offset:
            raise RequestError("bad-request", "a staged file starts at offset 0")
        os.makedirs(staging, exist_ok=True)
        _parts_staged[0] += 1
        name = "%d-part-%d" % (os.getpid(), _parts_staged[0])
        path = os.path.join(staging, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    else:
        try:
            path = _staged_part(staging, name)
        except OSError:
            raise RequestError("bad-request", "%r is not a file this agent staged" % (name,)) from None
        flags = os.O_WRONLY
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            view = memoryview(blob)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise RequestError(
            "os-error", "staging on the host failed, nothing was changed: %s" % (exc.strerror or exc)
        ) from None
    return {"name": name}, b""


# Runs in the python whose TensorFlow is asked about (any Python 3). It prints one marked JSON line, because
# TensorFlow and its plugins may print to stdout too. find_spec first: a python without TensorFlow answers
# in milliseconds instead of paying for a failed import.
_FRAMEWORK_SCRIPT = r"""
import json, sys
def look():
    try:
        import importlib.util
        if importlib.util.find_spec("tensorflow") is None:
            return {"installed": False, "reason": "tensorflow is not installed"}
        import tensorflow as tf
    except Exception as exc:
        return {"installed": False, "reason": "import tensorflow failed: %s: %s" % (type(exc).__name__, exc)}
    found = {"installed": True, "version": str(getattr(tf, "__version__", "")) or None}
    try:
        found["gpus"] = [str(d.name) for d in tf.config.list_physical_devices("GPU")]
    except Exception as exc:
        found["gpus"] = None
        found["reason"] = "list_physical_devices failed: %s: %s" % (type(exc).__name__, exc)
    try:
        found["built_with_cuda"] = bool(tf.test.is_built_with_cuda())
    except Exception:
        found["built_with_cuda"] = None
    return found
sys.stdout.write("%s%s\n" % (sys.argv[1], json.dumps(look())))
sys.stdout.flush()
"""


def op_framework(args: Dict[str, Any]) -> Dict[str, Any]:
    """What TensorFlow installed in a given python reports: its version and the GPUs it can use."""
    python = args.get("python")
    name = args.get("name", "tensorflow")
    timeout = args.get("timeout", FRAMEWORK_TIMEOUT)
    if not isinstance(python, str) or not python:
        raise RequestError("bad-request", "python must be a non-empty string")
    if name != "tensorflow":
        raise RequestError("bad-request", "only tensorflow can be asked about, not %r" % (name,))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise RequestError("bad-request", "timeout must be a number of seconds")
    if not 0 < timeout <= MAX_FRAMEWORK_TIMEOUT:
        raise RequestError("bad-request", "timeout must be between 0 and %d s" % MAX_FRAMEWORK_TIMEOUT)
    answer: Dict[str, Any] = {"python": python, "framework": name}
    executable = python if os.sep in python else shutil.which(python)
    if executable is None or not os.access(executable, os.X_OK):
        answer.update(installed=False, reason="%s not found on the host" % python)
        return answer
    environment = dict(os.environ)
    # TensorFlow's C++ start-up banner goes to stderr; only errors are worth reading from it.
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        done = subprocess.run(
            [executable, "-c", _FRAMEWORK_SCRIPT, FRAMEWORK_MARK],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=environment,
            # Not the project folder: a stray tensorflow/ folder there would shadow the installed package.
            cwd=os.path.expanduser("~"),
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        answer.update(installed=None, reason="%s did not answer within %g s" % (python, timeout))
        return answer
    except OSError as exc:
        answer.update(installed=False, reason="%s could not start: %s" % (python, exc))
        return answer
    for line in reversed(done.stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(FRAMEWORK_MARK):
            try:
                found = json.loads(line[len(FRAMEWORK_MARK) :])
            except ValueError:
                break
            if isinstance(found, dict):
                answer.update(found)
                return answer
    errors = [line.strip() for line in done.stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    last = (": " + errors[-1]) if errors else ""
    answer.update(installed=None, reason="%s exited with status %d%s" % (python, done.returncode, last))
    return answer


# ------------------------------------------------------------------------------------------------- idle
#
# What the host is doing, for idle autostop: GPU utilisation (nvidia-smi's --query-gpu CSV, parsed on the
# client like every other nvidia-smi form) and this user's terminals with how long since their last input
# (a tty's access time moves when someone types, as `w` shows). Runs and Jupyter kernels are reported as
# None until gpubox runs them.

IDLE_QUERY = ("--query-gpu=index,name,utilization.gpu", "--format=csv")
IDLE_SMI_TIMEOUT = 10


def _ttys() -> List[Dict[str, Any]]:
    found: List[Dict[str, Any]] = []
    now = time.time()
    try:
        names = os.listdir("/dev/pts")
    except OSError:
        return found
    for name in names:
        if not name.isdigit():
            continue
        try:
            st = os.stat(os.path.join("/dev/pts", name))
        except OSError:
            continue
        if st.st_uid == os.getuid():
            found.append({"tty": "pts/" + name, "idle_seconds": round(max(0.0, now - st.st_atime), 1)})
    return found


def op_idle(args: Dict[str, Any]) -> Dict[str, Any]:
    active = _active_runs()
    return {
        "time": time.time(),
        "nvidia_smi": _nvidia_smi(IDLE_QUERY, IDLE_SMI_TIMEOUT) if args.get("gpu", True) else None,
        "ttys": _ttys() if args.get("ttys", True) else [],
        "runs": len(active),
        "active": active,
        "kernels": _busy_kernels(),
    }


def _busy_kernels() -> int:
    """Jupyter kernels executing right now, across gpubox's Jupyter servers on this host (asked through their
    own API on loopback, with the token each was started with)."""
    import urllib.request

    busy = 0
    base = os.path.join(os.path.expanduser("~"), ".gpubox", "services")
    try:
        projects = os.listdir(base)
    except OSError:
        return 0
    for project in projects:
        row = _service_row(os.path.join(base, project, "jupyter"))
        if row["state"] != "running" or not row.get("secret"):
            continue
        url = "http://127.0.0.1:%d/api/kernels" % row["port"]
        request = urllib.request.Request(url, headers={"Authorization": "token %s" % row["secret"]})
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                kernels = json.loads(answer.read().decode("utf-8"))
        except (OSError, ValueError):
            continue
        busy += sum(
            1 for kernel in kernels if isinstance(kernel, dict) and kernel.get("execution_state") == "busy"
        )
    return busy


def _active_runs() -> List[Dict[str, Any]]:
    """The runs starting or running on this host (any project's: a run elsewhere also uses it): their id, and
    the id and name of their project when they have one."""
    runs = os.path.join(os.path.expanduser("~"), ".gpubox", "runs")
    try:
        names = [n for n in os.listdir(runs) if n.startswith("r-") and n[2:].isdigit()]
    except OSError:
        return []
    active = []
    for name in sorted(names, key=lambda n: int(n[2:])):
        folder = os.path.join(runs, name)
        if os.path.exists(os.path.join(folder, "exit_code")):
            continue
        row = _run_row(folder)
        if row["state"] in ("starting", "running"):
            project = row.get("project") or {}
            active.append(
                {
                    "id": name,
                    "project": project.get("id"),
                    "project_name": project.get("name"),
                    "progress_at": _progress_at(folder),
                }
            )
    return active


def _progress_at(folder: str) -> Optional[float]:
    """When a run last showed progress (host wall clock): its start, its log's last write, or the newest file
    in its TensorBoard folder (two levels: logs/<id>/train/events...)."""
    spec = _read_json(os.path.join(folder, "spec.json")) or {}
    moments = [float(spec["started_at"])] if isinstance(spec.get("started_at"), (int, float)) else []
    with contextlib.suppress(OSError):
        moments.append(os.stat(os.path.join(folder, "log")).st_mtime)
    tb_dir = (spec.get("env") or {}).get("GPUBOX_TB_DIR")
    if isinstance(tb_dir, str):
        for top in [tb_dir] + [os.path.join(tb_dir, n) for n in _listdir(tb_dir)]:
            for name in _listdir(top):
                with contextlib.suppress(OSError):
                    moments.append(os.stat(os.path.join(top, name)).st_mtime)
    return max(moments) if moments else None


def _listdir(folder: str) -> List[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


# --------------------------------------------------------------------------------------------- projects
#
# Which project each folder on this host belongs to: ~/.gpubox/projects/<hash of the folder's real path>.json
# holds the owner's record ({id, name, root, machine, folder, claimed_at}), written when a project first claims
# the folder. A record whose folder is gone is stale and ignored. gpubox refuses to sync a project into a folder
# another project owns; a folder with no record (made before gpubox kept them) is free.


def _projects_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".gpubox", "projects")


def _real_folder(folder: Any) -> str:
    if not isinstance(folder, str) or not folder or "\0" in folder:
        raise RequestError("bad-request", "folder must be a non-empty path")
    return os.path.realpath(os.path.abspath(os.path.expanduser(folder)))


def _owner_path(real: str) -> str:
    digest = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:20]
    return os.path.join(_projects_dir(), digest + ".json")


def _folder_owner(real: str) -> Optional[Dict[str, Any]]:
    """The record of the project owning folder *real*; None when it has none (or the folder is gone)."""
    if not os.path.isdir(real):
        return None
    try:
        with open(_owner_path(real)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("folder") != real or not isinstance(record.get("id"), str):
        return None
    return record


def _write_owner(real: str, owner: Dict[str, Any]) -> Dict[str, Any]:
    record = dict(owner, folder=real, claimed_at=time.time())
    os.makedirs(_projects_dir(), mode=0o700, exist_ok=True)
    path = _owner_path(real)
    temp = "%s.%d.tmp" % (path, os.getpid())
    with open(temp, "w") as handle:
        json.dump(record, handle)
    os.replace(temp, path)
    return record


def op_project_folder(args: Dict[str, Any]) -> Dict[str, Any]:
    """Settle a project's folder: ``folder`` (or, when that does not exist yet, ``legacy``, a folder of an older
    gpubox layout that no other project owns), who owns it, and with ``claim`` make it and record ``owner``
    as its owner unless another project owns it."""
    owner = args.get("owner")
    if not isinstance(owner, dict) or not isinstance(owner.get("id"), str) or not owner.get("id"):
        raise RequestError("bad-request", "owner must be a record with an id")
    owner = {k: v for k, v in owner.items() if k in ("id", "name", "root", "machine") and isinstance(v, str)}
    folder = args.get("folder")
    real = _real_folder(folder)
    legacy = args.get("legacy")
    chosen, chosen_real, adopted = folder, real, False
    if legacy is not None and not os.path.lexists(real):
        legacy_real = _real_folder(legacy)
        legacy_owner = _folder_owner(legacy_real)
        if os.path.isdir(legacy_real) and (legacy_owner is None or legacy_owner.get("id") == owner["id"]):
            chosen, chosen_real, adopted = legacy, legacy_real, legacy_owner is None
    current = _folder_owner(chosen_real)
    taken_over = False
    if current is not None and args.get("claim") and args.get("take_over") == current.get("id"):
        # The client knows the owner is gone (a project moved away from its folder on the same machine).
        current, taken_over = None, True
    mine = current is not None and current.get("id") == owner["id"]
    if os.path.lexists(chosen_real) and not os.path.isdir(chosen_real):
        raise RequestError("no-project", "%s on the host is not a folder" % chosen_real)
    exists = os.path.isdir(chosen_real)
    created = False
    if args.get("claim") and (current is None or mine):
        if not exists:
            os.makedirs(chosen_real)
            created = exists = True
        if current is None:
            current = _write_owner(chosen_real, owner)
        mine = True
    return {
        "folder": chosen,
        "path": chosen_real,
        "exists": exists,
        "created": created,
        "adopted": (adopted or taken_over) and mine,
        "owner": current,
        "mine": mine,
    }


def op_projects(args: Dict[str, Any]) -> Dict[str, Any]:
    """Every project folder with an owner record on this host (records of folders that are gone left out)."""
    found = []
    try:
        names = sorted(os.listdir(_projects_dir()))
    except OSError:
        names = []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(_projects_dir(), name)) as handle:
                record = json.load(handle)
        except (OSError, ValueError):
            continue
        folder = record.get("folder") if isinstance(record, dict) else None
        if isinstance(folder, str) and _folder_owner(folder) == record:
            found.append(record)
    return {"projects": found}


# ------------------------------------------------------------------------------------------------- runs
#
# Each run lives in ~/.gpubox/runs/<id>/: spec.json (started_at among it), log (stdout and stderr together),
# pid, ended_at, exit_code, and "stopped" when gpubox stopped it. A waiter process, in its own session, starts
# the command in another new session (so stop can signal the command's whole process group without the waiter),
# and records how it ended. Neither needs the agent, the SSH link or gpubox once started. Agents of other gpubox
# versions read these folders too: change them only as PROTOCOL.md ("Layout") allows.


def _run_waiter(folder: str, spec: Dict[str, Any], go: int, started: int) -> None:
    """The run's waiter, in a process forked from the agent (see :func:`_fork_waiter`): once the agent has
    written spec.json (it says so on *go*), start the command in a session of its own, record its pid (then
    close *started*: the agent waits for that), wait for it and record how it ended. An agent that could not
    write spec.json says nothing: no command starts (the run reads as lost, as it would have). Never returns."""
    import signal

    try:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # nothing of the agent's SSH link stays open here
        low, high = sorted((go, started))
        os.closerange(3, low)
        os.closerange(low + 1, high)
        os.closerange(high + 1, 1 << 16)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        said = b""
        while True:
            chunk = os.read(go, 64)
            if not chunk:
                break
            said += chunk
        os.close(go)
        if said != b"go":
            return

        def put(name: str, text: str) -> None:
            tmp = os.path.join(folder, "." + name + ".tmp")
            with open(tmp, "w") as handle:
                handle.write(text)
            os.replace(tmp, os.path.join(folder, name))

        env = dict(os.environ)
        env.update(spec["env"])
        log = os.open(os.path.join(folder, "log"), os.O_WRONLY | os.O_APPEND)
        try:
            os.chdir(spec["cwd"])
        except OSError as exc:
            os.write(log, ("gpubox: the run could not start: %s\n" % exc).encode())
            put("ended_at", repr(time.time()))
            put("exit_code", "127")
            return
        # What subprocess.Popen(start_new_session=True) does: this starts every run.
        child = os.fork()
        if child == 0:
            try:
                os.setsid()
                for name in ("SIGPIPE", "SIGXFSZ"):
                    if hasattr(signal, name):
                        signal.signal(getattr(signal, name), signal.SIG_DFL)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                os.closerange(3, 1 << 16)
                os.execve("/bin/sh", ["/bin/sh", "-c", spec["shell"]], env)
            except BaseException as exc:
                os.write(2, ("gpubox: the run could not start: %s\n" % exc).encode())
            os._exit(127)
        put("pid", str(child))
        os.close(started)
        _, status = os.waitpid(child, 0)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        put("ended_at", repr(time.time()))
        put("exit_code", str(code))
    finally:
        os._exit(0)


def _fork_waiter(folder: str, spec: Dict[str, Any]) -> Tuple[int, int, int]:
    """Fork the run's waiter off this agent (no new interpreter to start): a child that leads a new session
    forks the waiter and exits at once, so the waiter is nobody's child here, in a session of its own, and
    outlives the agent and its SSH session (as :func:`_spawn_away` starts a process). Returns the waiter's pid
    and the pipe end on which to say ``go`` once spec.json is written (the waiter starts the command only then),
    then close, and one that reaches its end once the run's pid file is written (or the waiter gave up)."""
    read_pid, write_pid = os.pipe()
    go_read, go_write = os.pipe()
    started_read, started_write = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_pid)
            os.close(go_write)
            os.close(started_read)
            os.setsid()
            waiter = os.fork()
            if waiter == 0:
                os.close(write_pid)
                _run_waiter(folder, spec, go_read, started_write)
            os.write(write_pid, str(waiter).encode())
        finally:
            os._exit(0)
    os.close(write_pid)
    os.close(go_read)
    os.close(started_write)
    answer = b""
    try:
        while True:
            chunk = os.read(read_pid, 64)
            if not chunk:
                break
            answer += chunk
    finally:
        os.close(read_pid)
        os.waitpid(middle, 0)
    try:
        return int(answer), go_write, started_read
    except ValueError:
        os.close(go_write)
        os.close(started_read)
        raise RequestError("spawn-failed", "could not start the run's waiter") from None


_SETSID_EXEC = "import os, sys; os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])"


def _spawn_away(
    argv: List[str],
    *,
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    log: str = os.devnull,
) -> int:
    """Start *argv* as nobody's child here, in a session of its own (so its pid leads its process group), with
    stdin from /dev/null and its output appended to *log*; return its pid.

    Runs and services must outlive this agent and the SSH session it serves: a session that is killed outright
    (an sshd restart that takes its sessions down, a killed connection) kills its descendants, and a process
    started with a plain Popen stays the agent's descendant until the agent exits. A short-lived shell starts the
    process in the background and exits at once, so it is re-parented to init before anything can go wrong.
    (A run's waiter is forked instead: :func:`_fork_waiter`.)"""
    line = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    shell = subprocess.Popen(
        ["/bin/sh", "-c", line, "gpubox-spawn", log, sys.executable, "-c", _SETSID_EXEC, *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    out, _ = shell.communicate()
    try:
        return int(out.strip())
    except ValueError:
        raise RequestError("spawn-failed", "could not start %s" % argv[0]) from None


def _runs_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".gpubox", "runs")


def _run_dir(run_id: Any) -> str:
    if (
        not isinstance(run_id, str)
        or not run_id.startswith("r-")
        or not run_id[2:].isdigit()
        or len(run_id) > 12
    ):
        raise RequestError("bad-request", "%r is not a run id" % (run_id,))
    path = os.path.join(_runs_dir(), run_id)
    if not os.path.isdir(path):
        raise RequestError("no-such-run", "no run %s on this host" % run_id)
    return path


def _read_text(folder: str, name: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, name)) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _run_row(folder: str) -> Dict[str, Any]:
    spec: Dict[str, Any] = {}
    try:
        with open(os.path.join(folder, "spec.json")) as handle:
            spec = json.load(handle)
    except (OSError, ValueError):
        pass
    exit_text = _read_text(folder, "exit_code")
    pid_text = _read_text(folder, "pid")
    pid = int(pid_text) if pid_text and pid_text.isdigit() else None
    waiter = spec.get("waiter")
    if exit_text is not None:
        code: Optional[int] = int(exit_text) if exit_text.lstrip("-").isdigit() else None
        if os.path.exists(os.path.join(folder, "stopped")):
            state = "stopped"
        else:
            state = "succeeded" if code == 0 else "failed"
    else:
        code = None
        waiter_alive = isinstance(waiter, int) and _alive(waiter)
        if pid is not None:
            # The command may have just ended, its waiter about to record how: still "running" until then.
            state = "running" if _alive(pid) or waiter_alive else "lost"
        else:
            state = "starting" if waiter_alive else "lost"
    ended = _read_text(folder, "ended_at")
    try:
        log_bytes = os.path.getsize(os.path.join(folder, "log"))
    except OSError:
        log_bytes = 0
    return {
        "id": os.path.basename(folder),
        "command": spec.get("shell", ""),
        "name": spec.get("name"),
        "cwd": spec.get("cwd"),
        "project": spec.get("project") if isinstance(spec.get("project"), dict) else None,
        "state": state,
        "pid": pid,
        "started_at": spec.get("started_at"),
        "ended_at": float(ended) if ended else None,
        "exit_code": code,
        "log_bytes": log_bytes,
        "progress": _progress(folder, spec) if state in ("running", "starting") else None,
    }


# -- progress: what training already writes. The epoch count comes from Keras's "Epoch i/N" log lines; loss
# and metrics from the log's own "loss: 0.29" figures, then from the TensorBoard event files the run wrote (see
# "metrics without code changes" below; TFRecord framing and protobuf by hand: the agent has only the
# standard library).

_EPOCH_LINE = re.compile(rb"Epoch (\d+)/(\d+)")
_LOG_METRIC = re.compile(rb"(?<![\w.])([a-z_][a-z0-9_]*): (\d+\.\d+(?:e[-+]?\d+)?)")


def _varint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> List[Tuple[int, int, Any]]:
    """(field number, wire type, value) of one protobuf message; unknown wire types end the message."""
    found: List[Tuple[int, int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at : at + size], at + size
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            break
        found.append((number, wire, value))
    return found


def _scalar_of(value_message: bytes) -> Tuple[Optional[str], Optional[float]]:
    """Tag and number of one Summary.Value: simple_value (field 2) or a scalar tensor (field 8)."""
    tag, number = None, None
    for field, wire, value in _fields(value_message):
        if field == 1 and wire == 2:
            tag = value.decode("utf-8", "replace")
        elif field == 2 and wire == 5:
            number = struct.unpack("<f", value)[0]
        elif field == 8 and wire == 2:
            dtype = 1
            for tfield, twire, tvalue in _fields(value):
                if tfield == 1 and twire == 0:
                    dtype = tvalue
                elif tfield == 2 and twire == 2 and _elements(tvalue) != 1:
                    return tag, None  # a histogram or any other tensor that is not one number
                elif tfield == 4 and twire == 2 and len(tvalue) in (4, 8):  # tensor_content
                    number = struct.unpack("<f" if len(tvalue) == 4 else "<d", tvalue)[0]
                elif tfield == 5 and twire == 2 and len(tvalue) >= 4:  # packed float_val
                    number = struct.unpack("<f", tvalue[:4])[0]
                elif tfield == 5 and twire == 5:
                    number = struct.unpack("<f", tvalue)[0]
                elif tfield == 6 and twire == 2 and len(tvalue) >= 8:  # packed double_val
                    number = struct.unpack("<d", tvalue[:8])[0]
            if dtype not in (1, 2, 19):  # float, double, half: anything else is not a curve
                number = None
    return tag, number


def _elements(shape: bytes) -> int:
    """How many numbers a TensorShapeProto holds (1 for a scalar, which has no dims)."""
    count = 1
    for field, wire, value in _fields(shape):
        if field == 2 and wire == 2:
            for dfield, dwire, dvalue in _fields(value):
                if dfield == 1 and dwire == 0:
                    count *= dvalue
    return count


def _event_points(record: bytes) -> Tuple[float, int, List[Tuple[str, float]]]:
    """(wall time, step, [(tag, number), ...]) of the scalars in one TensorBoard Event record."""
    wall, step = 0.0, 0
    found: List[Tuple[str, float]] = []
    event = _fields(record)
    for field, wire, value in event:
        if field == 1 and wire == 1:
            wall = struct.unpack("<d", value)[0]
        elif field == 2 and wire == 0:
            step = value
    for field, wire, value in event:
        if field == 5 and wire == 2:
            for sfield, swire, svalue in _fields(value):
                if sfield == 1 and swire == 2:
                    tag, number = _scalar_of(svalue)
                    if tag is not None and number is not None:
                        found.append((tag, number))
    return wall, step, found


# -- metrics without code changes: the scalars of every TensorBoard event file the run wrote anywhere under the
# project's output folders (Keras's train/ and validation/, tf.summary writers, PyTorch's SummaryWriter, nested
# run folders), plus GPUBOX_TB_DIR. Finding them is cheap on big log folders: only folders whose mtime changed
# are listed again, an event file is judged by its name (TensorFlow and PyTorch put the writer's start time and
# pid there), other runs' GPUBOX_TB_DIR folders are skipped whole, and files are read incrementally, skipping
# records too big to hold only scalars (images, audio, large histograms) without reading them.

_DEFAULT_OUTPUTS = ("runs", "checkpoints", "logs", "outputs")
"""The output folders of a run whose spec names none (started by an older gpubox)."""
_EVENT_NAME = re.compile(r"tfevents\.(\d+)\.(?:.*)\.(\d+)\.\d+(?:\.v2)?$")
_RUN_FOLDER = re.compile(r"r-\d+$")
_BIG_RECORD = 4096
"""Bytes: an event record larger than this holds an image, audio or a large histogram; a scalar takes < 1 KiB."""
_CLOCK_SLACK = 2.0
"""Seconds: an event file's name has its creation time in whole seconds."""


class _RunEvents:
    """The event files of one run, found incrementally: every folder's mtime is remembered and only the folders
    that changed are listed again; each event file is judged once."""

    def __init__(self, folder: str, spec: Dict[str, Any]) -> None:
        cwd = os.path.normpath(str(spec.get("cwd") or "/"))
        env = spec.get("env") or {}
        tb_dir = env.get("GPUBOX_TB_DIR") if isinstance(env, dict) else None
        self.tb_dir = os.path.normpath(tb_dir) if isinstance(tb_dir, str) and tb_dir else None
        started = spec.get("started_at")
        self.started = float(started) if isinstance(started, (int, float)) else 0.0
        self.run_id = os.path.basename(folder)
        self.folder = folder
        # The project folder (a run may start in a subfolder of it): recorded with the run, else the one its
        # GPUBOX_TB_DIR (<project>/logs/<id>) is in.
        record = spec.get("project")
        project = record.get("folder") if isinstance(record, dict) else None
        if not isinstance(project, str) or not project:
            project = os.path.dirname(os.path.dirname(self.tb_dir)) if self.tb_dir else cwd
        project = os.path.normpath(project)
        outputs = spec.get("outputs")
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            outputs = list(_DEFAULT_OUTPUTS)
        self.roots = []  # type: List[str]
        # The output folders of the project, and of the subfolder the run started in (a script writing to
        # "logs/x" from there writes below it).
        for base in [project] + ([cwd] if self._under(cwd, project) and cwd != project else []):
            for name in outputs:
                root = os.path.normpath(os.path.join(base, name))
                if project != "/" and self._under(root, base) and root != base and root not in self.roots:
                    self.roots.append(root)
        self.listed = {}  # type: Dict[str, Tuple[int, List[str]]]
        self.judged = {}  # type: Dict[str, Optional[str]]
        """event file path -> its series prefix, or None when it is not this run's"""

    def files(self) -> Dict[str, str]:
        """{event file: series prefix} of every event file this run wrote, as of now."""
        ended_text = _read_text(self.folder, "ended_at")
        try:
            ended = float(ended_text) if ended_text else None
        except ValueError:
            ended = None
        pid_text = _read_text(self.folder, "pid")
        group = int(pid_text) if pid_text and pid_text.isdigit() else None
        roots = list(self.roots)
        if self.tb_dir is not None and not any(self._under(self.tb_dir, root) for root in roots):
            roots.append(self.tb_dir)
        for root in roots:
            stack = [root]
            while stack:
                folder = stack.pop()
                stack.extend(self._children(folder, ended, group))
        return {path: prefix for path, prefix in self.judged.items() if prefix is not None}

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root + os.sep)

    def _children(self, folder: str, ended: Optional[float], group: Optional[int]) -> List[str]:
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            self.listed.pop(folder, None)
            return []
        known = self.listed.get(folder)
        if known is not None and known[0] == mtime:
            return known[1]
        children = []  # type: List[str]
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return []
        for entry in entries:
            path = entry.path
            try:
                if entry.is_dir(follow_symlinks=False):
                    # Another run's GPUBOX_TB_DIR (logs/r-<n>) is that run's: not walked at all.
                    if (
                        _RUN_FOLDER.match(entry.name)
                        and entry.name != self.run_id
                        and (self.tb_dir is None or os.path.dirname(self.tb_dir) == folder)
                    ):
                        continue
                    children.append(path)
                elif "tfevents" in entry.name and path not in self.judged:
                    self.judged[path] = self._judge(entry, folder, ended, group)
            except OSError:
                continue
        self.listed[folder] = (mtime, children)
        return children

    def _judge(self, entry: Any, folder: str, ended: Optional[float], group: Optional[int]) -> Optional[str]:
        """The series prefix of an event file this run wrote (created while it ran, by none of another
        process group's living processes), else None."""
        match = _EVENT_NAME.search(entry.name)
        if match:
            created = float(match.group(1))
            writer = int(match.group(2))
        else:
            created = entry.stat().st_mtime
            writer = None
        if created + _CLOCK_SLACK < self.started or (ended is not None and created > ended + _CLOCK_SLACK):
            return None
        if writer is not None and group is not None and writer != group:
            try:
                if os.getpgid(writer) != group:
                    return None  # written by a living process of something else (another run)
            except OSError:
                pass  # the writer has ended: it was this run's, as far as anyone can tell now
        base = self.tb_dir if self.tb_dir is not None and self._under(folder, self.tb_dir) else None
        if base is None:
            base = next((root for root in self.roots if self._under(folder, root)), folder)
        rel = os.path.relpath(folder, base)
        return "" if rel == "." else rel.replace(os.sep, "/") + "/"


_run_events = {}  # type: Dict[Tuple[str, Any], _RunEvents]


def _events_of(folder: str, spec: Dict[str, Any]) -> Dict[str, str]:
    key = (folder, spec.get("started_at"))
    found = _run_events.get(key)
    if found is None:
        found = _run_events[key] = _RunEvents(folder, spec)
    return found.files()


def _new_records(path: str, offset: int) -> Tuple[int, List[bytes]]:
    """The whole records of an event file from *offset* on (records too big to hold only scalars skipped
    unread), and the offset after the last one (a record being written is left for next time)."""
    records = []  # type: List[bytes]
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset > size:
                offset = 0  # the file was replaced by a shorter one
            handle.seek(offset)
            while offset + 12 <= size:
                header = handle.read(12)
                if len(header) < 12:
                    break
                (length,) = struct.unpack("<Q", header[:8])
                end = offset + 12 + length + 4
                if end > size:
                    break
                if length > _BIG_RECORD:
                    handle.seek(end)
                else:
                    body = handle.read(length + 4)
                    if len(body) < length + 4:
                        break
                    records.append(body[:length])
                offset = end
    except OSError:
        pass
    return offset, records


_series_cache = {}  # type: Dict[str, List[Any]]
"""Event file -> [bytes read, {tag: [[step, value], ...]}, {tag: wall time of its last point}]: each look
reads only what is new."""


def _event_series(path: str) -> Tuple[Dict[str, List[List[float]]], Dict[str, float]]:
    """Every scalar point of every tag in one event file, and the wall time of each tag's last point."""
    cached = _series_cache.get(path)
    if cached is None:
        cached = _series_cache[path] = [0, {}, {}]
    try:
        size = os.path.getsize(path)
    except OSError:
        return {}, {}
    if size < cached[0]:
        cached[:] = [0, {}, {}]
    if size > cached[0]:
        cached[0], records = _new_records(path, cached[0])
        for record in records:
            try:
                wall, step, points = _event_points(record)
            except (IndexError, struct.error):
                continue
            for tag, number in points:
                cached[1].setdefault(tag, []).append([step, number])
                cached[2][tag] = wall
    return cached[1], cached[2]


def _progress(folder: str, spec: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, "log"), "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 65536))
            tail = handle.read()
    except OSError:
        tail = b""
    epochs = _EPOCH_LINE.findall(tail)
    progress: Dict[str, Any] = {}
    if epochs:
        progress["epoch"], progress["epochs"] = int(epochs[-1][0]), int(epochs[-1][1])
    metrics: Dict[str, float] = {}
    for line in tail.replace(b"\r", b"\n").splitlines()[-40:]:
        for name, number in _LOG_METRIC.findall(line):
            metrics[name.decode()] = float(number)
    walls: List[float] = []
    for series, (step, number, wall) in sorted(_last_scalars(folder, spec).items()):
        where, _, tag = series.rpartition("/")
        part = where.rpartition("/")[2]
        if tag.startswith("epoch_") and part in ("train", "validation"):
            # Keras's TensorBoard callback: the names its own log lines use (loss, val_loss, ...).
            metrics[tag[6:] if part == "train" else "val_" + tag[6:]] = number
            progress["epochs_logged"] = max(progress.get("epochs_logged", 0), step + 1)
            walls.append(wall)
        else:
            metrics[series] = number
    if metrics:
        progress["metrics"] = metrics
    started = spec.get("started_at")
    done = progress.get("epochs_logged") or (progress.get("epoch", 1) - 1)
    if isinstance(started, (int, float)) and progress.get("epochs") and done:
        per_epoch = ((max(walls) if walls else time.time()) - started) / done
        progress["eta_seconds"] = max(0.0, per_epoch * (progress["epochs"] - done))
    return progress or None


def _last_scalars(folder: str, spec: Dict[str, Any]) -> Dict[str, Tuple[int, float, float]]:
    """{series: (step, value, wall time)} of the last point of each of the run's scalars.

    Kept in the run's folder (``scalars.json``: per event file, the bytes read and each tag's last point), so
    a `gpubox runs` on a new connection reads only what was written since the last look."""
    path = os.path.join(folder, "scalars.json")
    try:
        with open(path) as handle:
            kept = json.load(handle)
        if not isinstance(kept, dict):
            kept = {}
    except (OSError, ValueError):
        kept = {}
    found = {}  # type: Dict[str, Tuple[int, float, float]]
    changed = False
    for event_file, prefix in sorted(_events_of(folder, spec).items()):
        if event_file in _series_cache:
            # This agent reads the file for the dashboard's curves already: its last points are there.
            series, walls = _event_series(event_file)
            for name, line in series.items():
                if line:
                    found[prefix + name] = (int(line[-1][0]), float(line[-1][1]), walls.get(name, 0.0))
            continue
        entry = kept.get(event_file)
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)):
            entry = [0, {}]
        try:
            size = os.path.getsize(event_file)
        except OSError:
            continue
        if size < entry[0]:
            entry = [0, {}]
        if size > entry[0]:
            entry[0], records = _new_records(event_file, entry[0])
            for record in records:
                try:
                    wall, step, points = _event_points(record)
                except (IndexError, struct.error):
                    continue
                for tag, number in points:
                    entry[1][tag] = [step, number, wall]
            kept[event_file] = entry
            changed = True
        for tag, point in entry[1].items():
            if isinstance(point, list) and len(point) == 3:
                found[prefix + tag] = (int(point[0]), float(point[1]), float(point[2]))
    if changed:
        with contextlib.suppress(OSError, ValueError):
            with open(path + ".tmp", "w") as handle:
                json.dump(kept, handle)
            os.replace(path + ".tmp", path)
    return found


def op_run_start(args: Dict[str, Any]) -> Dict[str, Any]:
    project = args.get("project")
    shell = args.get("shell")
    env = args.get("env") or {}
    if not isinstance(shell, str) or not shell.strip():
        raise RequestError("bad-request", "the run needs a command")
    if not isinstance(project, str) or not project:
        raise RequestError("bad-request", "project must be a folder")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise RequestError("bad-request", "env must map names to strings")
    root = os.path.abspath(os.path.expanduser(project))
    if not os.path.isdir(root):
        raise RequestError("no-project", "the project folder %s does not exist on the host yet" % root)
    cwd = root
    sub = args.get("cwd")
    if sub:
        # A subfolder of the project (where `gpubox run` was called, or [run] cwd): made if sync has not yet.
        cwd = os.path.join(root, *_parts(sub))
        if not os.path.realpath(cwd).startswith(os.path.realpath(root).rstrip("/") + "/"):
            raise PathRefused("refusing cwd %r: it leads out of the project" % (sub,))
        os.makedirs(cwd, exist_ok=True)
    owner = args.get("owner")
    if owner is not None and (not isinstance(owner, dict) or not isinstance(owner.get("id"), str)):
        raise RequestError("bad-request", "owner must be a record with an id")
    runs = _runs_dir()
    os.makedirs(runs, mode=0o700, exist_ok=True)
    numbers = [int(name[2:]) for name in os.listdir(runs) if name.startswith("r-") and name[2:].isdigit()]
    number = max(numbers, default=0)
    while True:
        number += 1
        folder = os.path.join(runs, "r-%d" % number)
        try:
            os.mkdir(folder, 0o700)  # atomic: two gpubox processes never get the same id
            break
        except FileExistsError:
            continue
    run_id = os.path.basename(folder)
    run_env = dict(env)
    run_env.update(
        {
            "GPUBOX_RUN_ID": run_id,
            "GPUBOX_RUN_DIR": folder,
            "GPUBOX_TB_DIR": os.path.join(root, "logs", run_id),
            "PYTHONUNBUFFERED": "1",
        }
    )
    outputs = args.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, str) and o for o in outputs)
    ):
        raise RequestError("bad-request", "outputs must be a list of folder names")
    venv = args.get("venv")
    if isinstance(venv, str) and venv:
        # Inside the project's env, as `source bin/activate` would do.
        venv = os.path.expanduser(venv)
        run_env["VIRTUAL_ENV"] = venv
        run_env["PATH"] = os.path.join(venv, "bin") + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin")
    spec = {"shell": shell, "cwd": cwd, "env": run_env, "name": args.get("name"), "started_at": time.time()}
    if outputs is not None:
        spec["outputs"] = outputs
    if owner is not None:
        project_record = {k: v for k, v in owner.items() if k in ("id", "name") and isinstance(v, str)}
        project_record["folder"] = root
        spec["project"] = project_record

    with open(os.path.join(folder, "log"), "wb"):
        pass
    spec["waiter"], go, started = _fork_waiter(folder, spec)
    try:
        try:
            with open(os.path.join(folder, "spec.json.tmp"), "w") as handle:
                json.dump(spec, handle)
            os.replace(os.path.join(folder, "spec.json.tmp"), os.path.join(folder, "spec.json"))
            os.write(go, b"go")
        finally:
            os.close(go)
        # Until the waiter has written the pid file (or ended: the command could not start): it closes its end.
        select.select([started], [], [], 5.0)
    finally:
        os.close(started)
    return _run_row(folder)


def op_run_list(args: Dict[str, Any]) -> Dict[str, Any]:
    ids = args.get("ids")
    runs = _runs_dir()
    if ids:
        folders = [_run_dir(run_id) for run_id in ids]
    else:
        try:
            names = [n for n in os.listdir(runs) if n.startswith("r-") and n[2:].isdigit()]
        except OSError:
            names = []
        folders = [os.path.join(runs, n) for n in sorted(names, key=lambda n: int(n[2:]))]
    return {"runs": [_run_row(folder) for folder in folders]}


def op_run_log(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    folder = _run_dir(args.get("id"))
    offset = args.get("offset", 0)
    limit = args.get("max", 1 << 20)
    if not isinstance(offset, int) or offset < 0 or not isinstance(limit, int) or limit <= 0:
        raise RequestError("bad-request", "offset and max must be non-negative integers")
    # The row first: if the run has ended, every byte it wrote is already in the file when we read it.
    row = _run_row(folder)
    path = os.path.join(folder, "log")
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(min(limit, MAX_FRAME - 4096))
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        data, size = b"", 0
    return {"run": row, "size": size}, data


def op_run_stop(args: Dict[str, Any]) -> Dict[str, Any]:
    folder = _run_dir(args.get("id"))
    grace = args.get("grace", 10)
    if not isinstance(grace, (int, float)) or grace < 0:
        raise RequestError("bad-request", "grace must be a number of seconds")
    row = _run_row(folder)
    if row["state"] not in ("running", "starting"):
        return row
    with open(os.path.join(folder, "stopped"), "w") as handle:
        handle.write(repr(time.time()))
    pid = row["pid"]
    if pid:
        _stop_group(pid, grace)
        deadline = time.time() + 5
        while time.time() < deadline and not os.path.exists(os.path.join(folder, "exit_code")):
            time.sleep(0.02)
    return _run_row(folder)


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group *pgid*."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stats = _proc_stats()
    if stats is None:
        return True
    return any(len(f) > 3 and f[3] == str(pgid) and f[0] not in ("Z", "X") for f in stats)


def _proc_stats() -> Optional[List[List[str]]]:
    """Every process's /proc/PID/stat fields after its command name (state, ppid, pgrp, session, ...); None
    where /proc cannot be read."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    found = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as handle:
                found.append(handle.read().rsplit(")", 1)[1].split())
        except (OSError, IndexError):
            continue
    return found


def op_env_ready(args: Dict[str, Any]) -> Dict[str, Any]:
    """Whether a project env is already built (its marker is written last), without a shell round trip."""
    key = args.get("key")
    if not isinstance(key, str) or not key.isalnum():
        raise RequestError("bad-request", "key must be alphanumeric")
    # Its real path: ~/.gpubox/envs may be a link to a bigger disk, and what is installed into the env later
    # (tools, a run's pip install) writes the path it was given into its scripts' first line.
    path = os.path.realpath(os.path.join(os.path.expanduser("~"), ".gpubox", "envs", key))
    return {"ready": os.path.isfile(os.path.join(path, ".gpubox-ready")), "path": path}


def op_node_info(args: Dict[str, Any]) -> Dict[str, Any]:
    """For a multi-host run: the address this host sends from toward ``toward``, and free TCP ports here.

    A UDP connect only looks the route up (nothing is sent); without ``toward``, or when it does not resolve,
    the default route's source address is used. The ``ports`` ports are held together so they differ.
    """
    toward = args.get("toward")
    count = args.get("ports", 1)
    if toward is not None and not isinstance(toward, str):
        raise RequestError("bad-request", "toward must be a host name or address")
    if not isinstance(count, int) or not 0 <= count <= 16:
        raise RequestError("bad-request", "ports must be a number from 0 to 16")
    address = None
    for target in ([toward] if toward else []) + ["192.0.2.1"]:
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(target, 9, 0, socket.SOCK_DGRAM)[0]
            probe = socket.socket(family, kind, proto)
            try:
                probe.connect(sockaddr)
                address = probe.getsockname()[0]
            finally:
                probe.close()
            break
        except (OSError, IndexError):
            continue
    held = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(listener)
            listener.bind(("", 0))
        ports = [listener.getsockname()[1] for listener in held]
    finally:
        for listener in held:
            listener.close()
    return {"address": address, "ports": ports, "hostname": socket.gethostname()}


# --------------------------------------------------------------------------------------------- services
#
# Jupyter, TensorBoard and custom servers: detached like runs (own session, log kept), bound to the host's
# 127.0.0.1 only, reused while their process lives and their port answers, restarted otherwise. Each lives in
# ~/.gpubox/services/<project key>/<name>/ (mode 0700: a Jupyter token is stored there).


def _service_dir(args: Dict[str, Any]) -> str:
    key, name = args.get("key"), args.get("name")
    for value in (key, name):
        if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
            raise RequestError("bad-request", "key and name must be plain folder names")
    return os.path.join(_services_root(), str(key), str(name))


def _port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _services_root() -> str:
    return os.path.join(os.path.expanduser("~"), ".gpubox", "services")


@contextlib.contextmanager
def _flocked(path: str) -> Any:
    """An exclusive flock(2) on *path* (made if missing) for the duration."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _services_lock() -> Any:
    """Held while a service's port is chosen and claimed in its spec.json: two projects starting services at the
    same moment (two `gpubox up`s) must not both find one port free and both take it. The loser's server then
    fails to bind, or worse, it answers as if started while the port answers with the winner's server."""
    folder = os.path.join(os.path.expanduser("~"), ".gpubox")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return _flocked(os.path.join(folder, "services.lock"))


def _service_folders(key: Optional[str] = None) -> List[Tuple[str, str]]:
    """(project key, folder) of every service of project *key*, or of every project when None, in name order."""
    root = _services_root()
    try:
        keys = [key] if key is not None else sorted(os.listdir(root))
    except OSError:
        return []
    found = []
    for project in keys:
        try:
            names = sorted(os.listdir(os.path.join(root, project)))
        except OSError:
            continue
        found += [(project, os.path.join(root, project, name)) for name in names]
    return found


def _read_spec(folder: str) -> Dict[str, Any]:
    """A service's spec.json; empty when it is missing or unreadable."""
    try:
        with open(os.path.join(folder, "spec.json")) as handle:
            spec = json.load(handle)
    except (OSError, ValueError):
        return {}
    return spec if isinstance(spec, dict) else {}


def _claimed_ports(skip: str) -> Set[int]:
    """The ports other services on this host were started on and still hold (their process lives)."""
    claimed: Set[int] = set()
    for _key, folder in _service_folders():
        spec = _read_spec(folder) if folder != skip else {}
        port, pid = spec.get("port"), spec.get("pid")
        if isinstance(port, int) and isinstance(pid, int) and _alive(pid):
            claimed.add(port)
    return claimed


def _free_port(preferred: int, claimed: Optional[Set[int]] = None) -> int:
    taken = claimed or set()
    for port in [p for p in (preferred + offset for offset in range(20)) if p not in taken] + [0]:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # As the servers bind (Jupyter, TensorBoard, http.server all reuse addresses): connections of a
        # server that just died, left in TIME_WAIT, must not push its successor to another port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return int(probe.getsockname()[1])
        except OSError:
            continue
        finally:
            probe.close()
    raise RequestError("no-port", "no free port on the host")


def _service_row(folder: str) -> Dict[str, Any]:
    spec = _read_spec(folder)
    pid = spec.get("pid")
    port = spec.get("port")
    alive = isinstance(pid, int) and _alive(pid)
    healthy = alive and isinstance(port, int) and _port_answers(port)
    return {
        "name": os.path.basename(folder),
        "state": "running" if healthy else ("starting" if alive else "stopped"),
        "pid": pid if alive else None,
        "port": port,
        "secret": spec.get("secret"),
        "command": spec.get("command"),
        "log": os.path.join(folder, "log"),
    }


def _stop_group(pid: Any, grace: float = 5.0) -> None:
    """SIGTERM the process group *pid* leads, SIGKILL it after *grace* seconds. Done only when the whole group is
    gone: a shell may exit on SIGTERM and leave children that ignore it running."""
    if not isinstance(pid, int) or not _group_alive(pid):
        return
    for signum, wait in ((15, grace), (9, 5.0)):
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.time() + wait
        while time.time() < deadline and _group_alive(pid):
            time.sleep(0.02)
        if not _group_alive(pid):
            return


def _start_service(
    args: Dict[str, Any], folder: str, command: str, port: int, preferred: int, cwd: str
) -> int:
    """Spawn the service on *port* and record it in its spec.json (which claims the port); its pid."""
    env = dict(os.environ)
    extra = args.get("env") or {}
    if isinstance(extra, dict):
        # Secrets such as JUPYTER_TOKEN travel in the environment, never on a command line `ps` shows.
        env.update({str(k): str(v) for k, v in extra.items()})
    venv = args.get("venv")
    if isinstance(venv, str) and venv:
        venv = os.path.expanduser(venv)
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    os.makedirs(cwd, exist_ok=True)
    log = os.path.join(folder, "log")
    with open(log, "ab") as handle:
        handle.write(("\n--- gpubox: starting at %s on port %d\n" % (time.ctime(), port)).encode())
    pid = _spawn_away(["/bin/sh", "-c", command.replace("{port}", str(port))], cwd=cwd, env=env, log=log)
    spec = {
        "command": command,
        "port": port,
        "asked": preferred,
        "pid": pid,
        "secret": args.get("secret"),
        "cwd": cwd,
    }
    temp = os.path.join(folder, "spec.json.tmp")
    with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        json.dump(spec, handle)
    os.replace(temp, os.path.join(folder, "spec.json"))
    return pid


def op_service_ensure(args: Dict[str, Any]) -> Dict[str, Any]:
    """Start the service unless the same one already runs and answers; wait until its port answers."""
    folder = _service_dir(args)
    command = args.get("command")
    preferred = args.get("port")
    cwd = os.path.abspath(os.path.expanduser(str(args.get("cwd") or "~")))
    if not isinstance(command, str) or not command.strip():
        raise RequestError("bad-request", "the service needs a command")
    if not isinstance(preferred, int) or not 0 < preferred < 65536:
        raise RequestError("bad-request", "port must be 1-65535")
    row = _service_row(folder)
    if row["state"] == "running" and row["command"] == command:
        row["reused"] = True
        return row
    before = _read_spec(folder)
    _stop_group(before.get("pid"))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    with _services_lock():
        claimed = _claimed_ports(skip=folder)
        if "{port}" in command:
            # The port it had last time, while free and asked for the same way: its tunnel's URL stays the same.
            last = before.get("port")
            same = before.get("asked") == preferred and isinstance(last, int) and 0 < last < 65536
            port = _free_port(int(last) if same and isinstance(last, int) else preferred, claimed)
        elif preferred in claimed or _port_answers(preferred):
            # A command with its port written in cannot move: someone else's server holds it.
            raise RequestError("port-taken", "port %d is already taken on the host" % preferred)
        else:
            port = preferred
        pid = _start_service(args, folder, command, port, preferred, cwd)
    wait = args.get("wait", 60)
    deadline = time.time() + (wait if isinstance(wait, (int, float)) else 60)
    while time.time() < deadline:
        if not _alive(pid):
            break
        if _port_answers(port):
            row = _service_row(folder)
            row["reused"] = False
            return row
        time.sleep(0.1)
    _stop_group(pid)
    try:
        with open(os.path.join(folder, "log"), "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - 2000))
            tail = handle.read().decode("utf-8", "replace").strip().splitlines()[-5:]
    except OSError:
        tail = []
    raise RequestError(
        "service-failed", "%s did not answer on port %d: %s" % (args.get("name"), port, " | ".join(tail))
    )


def op_service_list(args: Dict[str, Any]) -> Dict[str, Any]:
    """The services of one project (``key``), or of every project on this host when ``key`` is null."""
    key = args.get("key")
    if key is not None and (not isinstance(key, str) or not key or "/" in key or key in (".", "..")):
        raise RequestError("bad-request", "key must be a plain folder name")
    rows = []
    for project, folder in _service_folders(key):
        row = _service_row(folder)
        row["key"] = project
        row["rss_bytes"] = _group_rss(row["pid"]) if row["pid"] else None
        rows.append(row)
    return {"services": rows}


def _group_rss(pgid: int) -> Optional[int]:
    """Resident memory of every process in process group *pgid* (a service and its children), in bytes."""
    total, seen = 0, False
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    stats = _proc_stats()
    if stats is None:
        return None
    for fields in stats:
        if len(fields) > 22 and fields[2] == str(pgid):
            total += int(fields[21]) * page
            seen = True
    return total if seen else None


def op_service_stop(args: Dict[str, Any]) -> Dict[str, Any]:
    folder = _service_dir(args)
    row = _service_row(folder)
    _stop_group(row.get("pid"))
    return _service_row(folder)


# -------------------------------------------------------------------------------------------- dashboard
#
# One round trip per host per dashboard refresh: the GPUs' utilisation and memory, the runs (active ones and
# the latest finished), and for the run the user selected its TensorBoard scalar series (only the points the
# client does not have yet) and the next piece of its log (the blob).

DASH_QUERY = ("--query-gpu=index,name,utilization.gpu,memory.used,memory.total", "--format=csv")


def _run_scalars(folder: str, spec: Dict[str, Any], have: Dict[str, Any], limit: int) -> Dict[str, Any]:
    """{"train/epoch_loss": {"from": n, "points": [[step, value], ...]}, ...}: the points after the first *n*
    the client already has (from 0 again when the series got shorter, e.g. its files were replaced)."""
    series: Dict[str, List[List[float]]] = {}
    for event_file, prefix in sorted(_events_of(folder, spec).items()):
        for tag, points in _event_series(event_file)[0].items():
            series.setdefault(prefix + tag, []).extend(points)
    found: Dict[str, Any] = {}
    for key, points in series.items():
        start = have.get(key, 0)
        if not isinstance(start, int) or start < 0 or start > len(points):
            start = 0
        found[key] = {"from": start, "points": points[start : start + limit]}
    return found


def _run_is_of(spec: Dict[str, Any], folder: Optional[str], owner: Optional[str]) -> bool:
    """Whether a run (its spec) is the project's: started with the project's id, or in the project's folder (or
    one below it): a folder has one owner at a time, and runs from before project ids have only their folder."""
    project = spec.get("project")
    if not isinstance(project, dict):
        project = {}
    if owner is not None and project.get("id") == owner:
        return True
    place = project.get("folder") or spec.get("cwd")
    if folder is None or not isinstance(place, str):
        return False
    return place == folder or place.startswith(folder.rstrip("/") + "/")


def _dash_runs(recent: int, project: Optional[str], owner: Optional[str] = None) -> List[Dict[str, Any]]:
    """The rows of every run still going (any project's: they all use the host) and of the *recent* latest
    ended ones of the project (its id *owner*, or for older runs its folder *project* on the host), oldest
    first. With either, each row says whether it is one of that project's runs (``mine``)."""
    runs = _runs_dir()
    try:
        names = [n for n in os.listdir(runs) if n.startswith("r-") and n[2:].isdigit()]
    except OSError:
        return []
    names.sort(key=lambda n: int(n[2:]))
    wanted = os.path.abspath(os.path.expanduser(project)) if project else None
    chosen = wanted is not None or owner is not None
    rows: Dict[str, Dict[str, Any]] = {}
    ended: List[str] = []
    for name in names:
        if os.path.exists(os.path.join(runs, name, "exit_code")):
            ended.append(name)
            continue
        row = _run_row(os.path.join(runs, name))
        if row["state"] in ("starting", "running"):
            rows[name] = row
        else:
            ended.append(name)  # lost: its process vanished without an exit code
    found = 0
    for name in reversed(ended):
        if found >= recent:
            break
        if chosen:
            try:
                with open(os.path.join(runs, name, "spec.json")) as handle:
                    if not _run_is_of(json.load(handle), wanted, owner):
                        continue
            except (OSError, ValueError):
                continue
        rows[name] = _run_row(os.path.join(runs, name))
        found += 1
    ordered = [rows[n] for n in names if n in rows]
    if chosen:
        for row in ordered:
            row["mine"] = _run_is_of(row, wanted, owner)
    return ordered


def op_dash(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
    """What a dashboard refresh needs from this host, in one answer (the selected run's new log bytes in the
    blob)."""
    recent = args.get("recent", 10)
    project = args.get("project")
    owner = args.get("owner")
    if not isinstance(recent, int) or recent < 0:
        raise RequestError("bad-request", "recent must be a non-negative integer")
    if project is not None and not isinstance(project, str):
        raise RequestError("bad-request", "project must be a folder")
    result: Dict[str, Any] = {
        "time": time.time(),
        "nvidia_smi": _nvidia_smi(DASH_QUERY, IDLE_SMI_TIMEOUT) if args.get("gpu", True) else None,
        "runs": [],
        "run": None,
    }
    data = b""
    run_id = args.get("run")
    if run_id is not None:
        try:
            folder = _run_dir(run_id)
        except RequestError:
            folder = None
        if folder is not None:
            spec: Dict[str, Any] = {}
            try:
                with open(os.path.join(folder, "spec.json")) as handle:
                    spec = json.load(handle)
            except (OSError, ValueError):
                pass
            have = args.get("scalars") or {}
            limit = args.get("points", 5000)
            offset = args.get("log_offset")
            tail = args.get("log_tail", 65536)
            most = args.get("log_max", 262144)
            if not isinstance(have, dict) or not isinstance(limit, int):
                raise RequestError("bad-request", "scalars must map tags to counts, points be a number")
            if not isinstance(tail, int) or not isinstance(most, int) or tail < 0 or most <= 0:
                raise RequestError("bad-request", "log_tail and log_max must be byte counts")
            path = os.path.join(folder, "log")
            size = 0
            try:
                with open(path, "rb") as handle:
                    size = os.fstat(handle.fileno()).st_size
                    if not isinstance(offset, int) or offset < 0 or offset > size:
                        # First look (or the log was replaced): only its tail, from a line start.
                        offset = max(0, size - tail)
                        if offset:
                            handle.seek(offset - 1)
                            before = handle.read(min(tail, 4096) + 1)
                            cut = before.find(b"\n")
                            offset = offset - 1 + (cut + 1 if cut >= 0 else 1)
                    handle.seek(offset)
                    data = handle.read(min(most, MAX_FRAME - 65536))
            except OSError:
                offset = 0
            result["run"] = {
                "id": run_id,
                "offset": offset,
                "size": size,
                "scalars": _run_scalars(folder, spec, have, max(1, limit)),
            }
    # After the selected run's curves: its progress then comes from the series just read.
    result["runs"] = _dash_runs(recent, project, owner if isinstance(owner, str) else None)
    return result, data


# ---------------------------------------------------------------------------------------------- op table

# ------------------------------------------------------------------------------------------- idle rules
#
# The ONE implementation of gpubox's idle rules: the guardian below applies them on the host, and the laptop
# (gpubox.cost re-exports both names) applies the very same code, so the two can never disagree on what idle is.


def _plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def busy_reasons(
    gpu_percent: Optional[float] = None,
    gpu_threshold: float = 5.0,
    active_runs: Optional[int] = None,
    busy_kernels: Optional[int] = None,
    shells: int = 0,
) -> List[str]:
    """Why a host is not idle now (empty: idle). None counts mean "not known" and keep nobody up; a GPU with
    unknown utilisation does not either. Moments of activity (a sync batch, typing in a terminal) are not
    states: :class:`IdleTracker` takes them as ``last_activity``."""
    reasons = []
    if active_runs:
        reasons.append("%s active" % _plural(active_runs, "run"))
    if gpu_percent is not None and gpu_percent >= gpu_threshold:
        reasons.append("GPU busy (%s %% ≥ %s %%)" % (format(gpu_percent, "g"), format(gpu_threshold, "g")))
    if busy_kernels:
        reasons.append("%s busy" % _plural(busy_kernels, "Jupyter kernel"))
    if shells:
        reasons.append("%s open" % _plural(shells, "interactive `gpubox ssh` shell"))
    return reasons


class IdleTracker:
    """Whether a host has been idle for a whole window, from samples on a clock that never jumps.

    Any busy sample, or activity seen (a sync batch, typing), restarts the window. A gap between samples longer
    than *max_gap* (the link was down, the laptop slept) restarts it too: nobody saw what happened meanwhile."""

    def __init__(self, window_seconds: float, max_gap: float) -> None:
        self.window_seconds = window_seconds
        self.max_gap = max_gap
        self.idle_since = None  # type: Optional[float]
        self.busy = []  # type: List[str]
        self._last_sample = None  # type: Optional[float]

    def observe(self, now: float, reasons: List[str], last_activity: Optional[float] = None) -> None:
        gap = self._last_sample is not None and now - self._last_sample > self.max_gap
        self._last_sample = now
        self.busy = list(reasons)
        if reasons:
            self.idle_since = None
            return
        if self.idle_since is None or gap:
            self.idle_since = now
        if last_activity is not None and last_activity > self.idle_since:
            self.idle_since = min(last_activity, now)

    def reset(self) -> None:
        self.idle_since = None
        self._last_sample = None

    def idle_seconds(self, now: float) -> float:
        return 0.0 if self.idle_since is None else max(0.0, now - self.idle_since)

    def remaining(self, now: float) -> Optional[float]:
        if self.idle_since is None:
            return None
        return max(0.0, self.window_seconds - self.idle_seconds(now))

    def due(self, now: float) -> bool:
        return self.idle_since is not None and self.idle_seconds(now) >= self.window_seconds


def stalled_runs(
    active: List[Dict[str, Any]], now: float, stall_seconds: Optional[float]
) -> Tuple[int, List[str]]:
    """(How many of the *active* runs (the ``idle`` op's rows) count as busy, why the others do not): a run that
    has shown no progress (no log line, no new event file) for *stall_seconds* is stalled, and a stalled run
    is not activity. The GPU is judged on its own: a stalled run on a busy GPU still keeps the host up."""
    if not stall_seconds:
        return len(active), []
    live, stalled = 0, []
    for run in active:
        at = run.get("progress_at")
        if isinstance(at, (int, float)) and now - at >= stall_seconds:
            stamp = time.strftime("%H:%M:%S", time.localtime(at))
            stalled.append("run %s stalled since %s" % (run.get("id"), stamp))
        else:
            live += 1
    return live, stalled


def sample_seconds(window_seconds: float) -> float:
    """How often the idle rules look at a host with this autostop window (laptop and guardian alike)."""
    return min(30.0, max(0.5, window_seconds / 6))


def format_duration(seconds: float) -> str:
    """``0:03:07``, ``2d 1:00:00``: gpubox.fmt.format_duration's format (a unit test holds them together)."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = "%d:%02d:%02d" % (hours, minutes, secs)
    return "%dd %s" % (days, clock) if days else clock


def busiest_gpu_percent(nvidia_smi: Optional[Dict[str, Any]]) -> Tuple[Optional[float], str]:
    """The busiest GPU's utilisation in the CSV of IDLE_QUERY (index, name, utilization.gpu), and a few words.
    The laptop reads every form nvidia-smi prints (gpubox.remote.gpu); the guardian only ever asks this one."""
    if not nvidia_smi:
        return None, "not sampled"
    if not nvidia_smi.get("available"):
        reason = str(nvidia_smi.get("reason") or "nvidia-smi failed")
        return None, "no GPU" if reason.startswith("nvidia-smi not found") else reason
    values = []
    rows = [line for line in str(nvidia_smi.get("output") or "").splitlines()[1:] if line.strip()]
    for line in rows:
        cell = line.rsplit(",", 1)[-1].strip().rstrip("%").strip()
        try:
            values.append(float(cell))
        except ValueError:
            continue
    if not values:
        return None, "%d GPU%s, utilisation not reported" % (len(rows), "" if len(rows) == 1 else "s")
    busiest = max(values)
    many = " (busiest of %d)" % len(rows) if len(rows) > 1 else ""
    return busiest, "GPU %s %%%s" % (format(busiest, "g"), many)


# --------------------------------------------------------------------------------------------- guardian
#
# The host's own watch (PROTOCOL.md, "The guardian"): a detached process started from this very file
# (``python3 agent-<hash>.py guardian <folder>``) that applies the idle rules above, a deadline (max_hours) and
# the budget deadline the laptop last computed, and stops the host itself when one says so, whether or not the
# laptop is there. The laptop's holding gpubox beats through the `guardian` op (its shells, its last sync) and
# takes the guardian's verdict instead of keeping a second countdown; a stop happens once, under a lock, by
# whichever side gets there first (the file stopped.json says it happened).

GUARDIAN_STOP_TIMEOUT = 120
DEADLINE_WARNINGS = (30, 5)
"""Minutes before a max_hours deadline at which the guardian warns (decisions log, the host's terminals)."""
MAX_DECISIONS_BYTES = 256 * 1024
_GUARDIAN_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _guardian_dir(key: Any) -> str:
    if not isinstance(key, str) or not _GUARDIAN_KEY.match(key):
        raise RequestError("bad-request", "key must be 1-64 letters, digits, - or _")
    return os.path.join(os.path.expanduser("~"), ".gpubox", "guardian", key)


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: str, data: Dict[str, Any]) -> None:
    temp = "%s.%d.tmp" % (path, os.getpid())
    with open(temp, "w") as handle:
        json.dump(data, handle)
    os.replace(temp, path)


def _write_secret(path: str, text: str) -> None:
    """*text* in a file only this user can read, from its first byte (never world-readable for a moment)."""
    temp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temp, 0o600)
    os.replace(temp, path)


def _elapsed() -> float:
    """A clock that never jumps and counts through suspend (as gpubox.cost.elapsed on the laptop)."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def _guardian_pid(folder: str) -> Optional[Dict[str, Any]]:
    """The pid record of the guardian of *folder* if that process still runs (and is that guardian)."""
    record = _read_json(os.path.join(folder, "pid"))
    pid = record.get("pid") if record else None
    if not isinstance(pid, int) or not _alive(pid):
        return None
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            if folder.encode() not in handle.read():
                return None  # the pid was reused by another process
    except OSError:
        if os.path.isdir("/proc/self"):
            return None
    return record


def _decide(folder: str, event: str, text: str, **fields: Any) -> None:
    """One line in the guardian's decisions log: what it saw or did, and when (newest last)."""
    path = os.path.join(folder, "decisions.log")
    entry = dict(fields, at=round(time.time(), 3), event=event, text=text)
    with contextlib.suppress(OSError):
        if os.path.getsize(path) > MAX_DECISIONS_BYTES:
            with open(path, "rb") as handle:
                handle.seek(-MAX_DECISIONS_BYTES // 2, os.SEEK_END)
                tail = handle.read().split(b"\n", 1)[-1]
            with open(path + ".tmp", "wb") as handle:
                handle.write(tail)
            os.replace(path + ".tmp", path)
    with open(path, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def _last_decisions(folder: str, count: int) -> List[Dict[str, Any]]:
    try:
        with open(os.path.join(folder, "decisions.log")) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines[-count:] if count > 0 else []:
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def _guardian_lock(folder: str) -> Any:
    return _flocked(os.path.join(folder, "lock"))


def _tell_terminals(text: str) -> None:
    """Write *text* on every terminal of this user on the host (as `wall` would, without needing it)."""
    for tty in _ttys():
        with contextlib.suppress(OSError):
            fd = os.open("/dev/" + tty["tty"], os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            try:
                os.write(fd, ("\r\n*** gpubox: %s ***\r\n" % text).encode("utf-8"))
            finally:
                os.close(fd)


def _signal_stop(stop: Dict[str, Any]) -> Tuple[bool, str]:
    import signal

    pid, match, what = stop.get("pid"), str(stop.get("match") or ""), str(stop.get("what") or "the server")
    if not isinstance(pid, int) or not _alive(pid):
        return True, "%s was not running" % what
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            if match.encode() not in handle.read():
                return True, "%s was not running" % what  # its pid now names another process
    except OSError:
        return True, "%s was not running" % what
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 5
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.02)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True, "stopped %s" % what


def _command_stop(stop: Dict[str, Any]) -> Tuple[bool, str]:
    command = str(stop.get("command") or "")
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=GUARDIAN_STOP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False, "`%s` did not finish within %d s" % (command, GUARDIAN_STOP_TIMEOUT)
    except OSError as exc:
        return False, "`%s` could not start: %s" % (command, exc)
    if done.returncode == 0:
        return True, "ran `%s` on the host" % command
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    return False, "`%s` exited with status %d%s" % (
        command,
        done.returncode,
        ": " + lines[-1] if lines else "",
    )


_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
PROVIDER_STOP_TRIES = 4


def _container_env(name: str) -> Optional[str]:
    """A variable the cloud gave the instance: in this process's environment, else in that of the container's
    first process (an SSH login does not inherit what the container was started with)."""
    if not name:
        return None
    value = os.environ.get(name)
    if value:
        return value
    with contextlib.suppress(OSError), open("/proc/1/environ", "rb") as handle:
        for entry in handle.read().split(b"\0"):
            key, _, found = entry.partition(b"=")
            if key.decode("utf-8", "replace") == name and found:
                return found.decode("utf-8", "replace")
    return None


def _fill(value: Any, words: Dict[str, str]) -> Any:
    if isinstance(value, str):
        for word, meaning in words.items():
            value = value.replace(word, meaning)
        return value
    if isinstance(value, list):
        return [_fill(v, words) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, words) for k, v in value.items()}
    return value


def _api_call(method: str, url: str, body: Any, key: str, tries: int) -> Tuple[bool, str]:
    """One request to a cloud's API, asked again (backing off) while the cloud is busy or out of reach.
    Answers whether it was taken, else what the cloud said (the key never in it)."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode()
    last = ""
    for attempt in range(tries):
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", "gpubox-guardian")
        request.add_header("Authorization", "Bearer " + key)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (OSError, ValueError) as exc:
            status, text = 0, str(exc).replace(key, "[redacted]").encode()
        answer = None
        with contextlib.suppress(ValueError):
            answer = json.loads(text.decode("utf-8", "replace"))
        refused = isinstance(answer, dict) and (answer.get("errors") or answer.get("success") is False)
        if 200 <= status < 300 and not refused:
            return True, ""
        detail = text.decode("utf-8", "replace").strip().replace(key, "[redacted]")[:300]
        last = ("HTTP %d: %s" % (status, detail)) if status else detail
        if status not in (0, 429, 500, 502, 503, 504):
            break  # refused (a bad key, an unknown instance): asking again will not help
        if attempt < tries - 1:
            time.sleep(min(8.0, 1.0 * 2**attempt))
    return False, last


def _provider_stop(stop: Dict[str, Any], folder: str, at: Optional[float] = None) -> Tuple[bool, str]:
    """Stop this rented instance through its cloud's API (the plan gpubox sent: PROTOCOL.md, kind
    ``provider``), with the key the cloud gave the instance, or the user's own key placed in *folder*. Where
    the cloud keeps no stop time, the plan's note leaves *at* in its record of the instance first."""
    provider = str(stop.get("provider") or "the cloud")
    instance = str(stop.get("instance_id") or "")
    if not _INSTANCE_ID.match(instance):
        return False, "no instance id to stop"
    seen = _container_env(str(stop.get("id_env") or ""))
    if seen and seen != instance:
        # Never stop another instance than this one: gpubox's record and the cloud's word disagree.
        return False, "this host is %s instance %s, not %s" % (provider, seen, instance)
    key = None  # type: Optional[str]
    if stop.get("key_file"):
        with contextlib.suppress(OSError), open(os.path.join(folder, "api-key")) as handle:
            key = handle.read().strip() or None
        where = 'the API key gpubox placed on the host (self_stop = "key")'
    else:
        key = _container_env(str(stop.get("key_env") or ""))
        where = "$%s, the key %s gives the instance" % (stop.get("key_env"), provider)
    if not key:
        return False, "no key to stop it with: %s is missing" % where
    words = {"{id}": instance, "{name}": str(stop.get("name") or ""), "{at}": "%.2f" % (at or time.time())}
    url = str(stop.get("url") or "").rstrip("/") + _fill(str(stop.get("path") or "/"), words)
    method = str(stop.get("method") or "POST")
    unnoted = ""
    note = stop.get("note")
    if isinstance(note, dict) and stop.get("name"):
        # Once, not retried: the stop matters more than its note, and must not wait on it.
        noted, detail = _api_call(method, url, _fill(note, words), key, tries=1)
        if not noted:
            unnoted = "; %s did not keep its stop time (%s), so the ledger counts until a gpubox last held it"
            unnoted %= (provider, detail)
    ok, detail = _api_call(method, url, _fill(stop.get("body") or {}, words), key, tries=PROVIDER_STOP_TRIES)
    if ok:
        return True, str(stop.get("done") or "stopped it through its API").replace("{id}", instance) + unnoted
    return False, "%s refused the stop (%s)" % (provider, detail)


def guardian_stop(folder: str, config: Dict[str, Any], reason: str, why: str, by: str) -> Dict[str, Any]:
    """Stop the host the way *config* says, at most once: under the folder's lock, and never again once
    stopped.json records a stop. Answers that record, or ``{"ok": false, "error"}``."""
    with _guardian_lock(folder):
        done = _read_json(os.path.join(folder, "stopped.json"))
        if done is not None:
            return done
        stop = config.get("stop") or {}
        kind = stop.get("kind")
        # The stop's time is when it began; `sudo poweroff` may take this process down before it answers, so
        # stopping.json says what began, and the next `start` reads it as the stop (see op_guardian).
        record = {"ok": True, "at": time.time(), "reason": reason, "why": why, "by": by}  # type: Dict[str, Any]
        stopping = os.path.join(folder, "stopping.json")
        if kind in ("command", "signal", "provider"):
            _write_json(stopping, dict(record, done="began: %s" % stop.get("action")))
        if kind == "command":
            ok, text = _command_stop(stop)
        elif kind == "signal":
            ok, text = _signal_stop(stop)
        elif kind == "provider":
            ok, text = _provider_stop(stop, folder, record["at"])
        else:
            ok, text = False, str(stop.get("why") or "this host cannot be stopped from itself")
        with contextlib.suppress(OSError):
            os.remove(stopping)
        if not ok:
            _decide(folder, "stop-failed", "%s: %s; %s keeps running" % (why, text, config.get("host")))
            return {"ok": False, "error": text}
        record["done"] = text
        _write_json(os.path.join(folder, "stopped.json"), record)
        _decide(folder, "stopped", "%s: %s" % (why, text), reason=reason, by=by)
        return record


class _Guardian:
    """One guardian's loop state (see guardian_main)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.tracker = None  # type: Optional[IdleTracker]
        self.warned = set()  # type: Set[str]
        self.laptop_fresh = None  # type: Optional[bool]
        self.was_busy = None  # type: Optional[bool]
        self.failed = set()  # type: Set[str]
        self.due_at = {}  # type: Dict[str, float]

    def path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _laptop_holds(self, laptop: Dict[str, Any]) -> bool:
        """Whether the laptop is there to stop the host itself: its beat is fresh, or it said it is stopping the
        host (pulling the outputs first takes a while, without beats) and that hold has not run out."""
        hold = laptop.get("stopping_until")
        return bool(self.laptop_fresh) or (isinstance(hold, (int, float)) and time.time() < hold)

    def still_mine(self) -> bool:
        record = _read_json(self.path("pid"))
        return record is not None and record.get("pid") == os.getpid()

    def round(self, config: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], float]:
        """Look at the host once; (the stop record if it stopped the host, seconds until the next look)."""
        wall, now = time.time(), _elapsed()
        host = str(config.get("host") or "this host")
        since = float(config.get("since") or wall)
        window = float(config.get("autostop_minutes") or 0) * 60.0
        poll = sample_seconds(window) if window > 0 else 30.0
        wait = poll
        stop_for = None  # type: Optional[Tuple[str, str]]
        status = {"pid": os.getpid(), "at": wall, "since": since, "host": host}  # type: Dict[str, Any]

        laptop = _read_json(self.path("laptop.json")) or {}
        seen_at = laptop.get("at")
        beat = float(config.get("beat_seconds") or 5.0)
        # The laptop beats every `beat` seconds: three missed beats (and slack for a busy laptop) is "gone".
        fresh = isinstance(seen_at, (int, float)) and wall - seen_at <= 3 * beat + 2
        if self.laptop_fresh is not None and fresh != self.laptop_fresh:
            if fresh:
                _decide(self.folder, "laptop-back", "the laptop's gpubox is back")
            else:
                away = format_duration(wall - seen_at) if isinstance(seen_at, (int, float)) else "ever"
                _decide(
                    self.folder, "laptop-gone", "the laptop's gpubox not seen for %s: watching alone" % away
                )
        self.laptop_fresh = fresh
        status["laptop"] = {"seen_at": seen_at, "present": fresh}

        max_hours = float(config.get("max_hours") or 0)
        status["deadline_at"] = None
        if max_hours > 0:
            deadline = since + max_hours * 3600.0
            left = deadline - wall
            status["deadline_at"] = deadline
            for minutes in DEADLINE_WARNINGS:
                key = "deadline-%d" % minutes
                if 0 < left <= minutes * 60 and max_hours * 60 > minutes and key not in self.warned:
                    self.warned.add(key)
                    text = "%s stops in %s: max_hours = %s, whatever it is doing" % (
                        host,
                        format_duration(left),
                        format(max_hours, "g"),
                    )
                    _decide(self.folder, "warning", text, minutes=minutes)
                    _tell_terminals(text)
            if left <= 0:
                stop_for = ("max_hours", "max_hours: %s is %s old" % (host, format_duration(wall - since)))
            else:
                wait = min(wait, left, *[left - m * 60 for m in DEADLINE_WARNINGS if left > m * 60])
        budget_at = config.get("budget_stop_at")
        if isinstance(budget_at, (int, float)):
            if wall >= budget_at and stop_for is None:
                stop_for = ("budget", str(config.get("budget_why") or "budget: used up"))
            elif wall < budget_at:
                wait = min(wait, budget_at - wall)
        status["budget_stop_at"] = budget_at

        status["autostop"] = None
        if window > 0:
            if self.tracker is None or self.tracker.window_seconds != window:
                self.tracker = IdleTracker(window, max_gap=3 * poll + beat)
            answer = op_idle({"gpu": True, "ttys": bool(config.get("ttys", True))})
            gpu_percent, gpu_note = busiest_gpu_percent(answer.get("nvidia_smi"))
            shells = int(laptop.get("shells") or 0) if fresh else 0
            stall = float(config.get("stall_minutes") or 0) * 60.0
            runs, stalled = stalled_runs(answer.get("active") or [], wall, stall)
            reasons = busy_reasons(
                gpu_percent, float(config.get("gpu_percent", 5.0)), runs, answer["kernels"], shells
            )
            moments = []  # type: List[Tuple[float, str]]
            sync_at = laptop.get("sync_at")
            if isinstance(sync_at, (int, float)):
                moments.append((float(sync_at), "sync"))
            typed = [t for t in answer.get("ttys") or [] if isinstance(t.get("idle_seconds"), (int, float))]
            if typed:
                latest = min(typed, key=lambda t: float(t["idle_seconds"]))
                moments.append((wall - float(latest["idle_seconds"]), "typing on %s" % latest["tty"]))
            last = max(moments) if moments else None
            self.tracker.observe(now, reasons, None if last is None else now - max(0.0, wall - last[0]))
            busy = bool(reasons)
            if self.was_busy is None or busy != self.was_busy:
                if busy:
                    _decide(self.folder, "busy", "busy: %s" % "; ".join(reasons))
                else:
                    note = " (%s)" % "; ".join(stalled) if stalled else ""
                    _decide(
                        self.folder,
                        "idle",
                        "idle%s: countdown of %s started" % (note, format_duration(window)),
                    )
                    self.failed.discard("autostop")
            self.was_busy = busy
            remaining = self.tracker.remaining(now)
            status["autostop"] = {
                "minutes": float(config.get("autostop_minutes") or 0),
                "busy": reasons,
                "active": answer.get("active") or [],
                "gpu": gpu_note,
                "gpu_percent": gpu_percent,
                "last_activity": (
                    "%s %s ago" % (last[1], format_duration(wall - last[0]))
                    if last is not None and wall - last[0] < window
                    else None
                ),
                "idle_seconds": round(self.tracker.idle_seconds(now), 1),
                "remaining_seconds": None if remaining is None else round(remaining, 1),
                "stops_at": None if remaining is None else wall + remaining,
                "stalled": stalled,
            }
            if remaining is not None:
                wait = min(wait, max(remaining, 0.05))
            if self.tracker.due(now) and stop_for is None:
                why = "idle for %s" % format_duration(self.tracker.idle_seconds(now))
                stop_for = ("autostop", why + (" (%s)" % "; ".join(stalled) if stalled else ""))

        status["due"] = None
        if stop_for is not None:
            reason, why = stop_for
            status["due"] = {"reason": reason, "why": why}
            kind = (config.get("stop") or {}).get("kind")
            # A rented host's laptop, while there, stops it itself: it brings the outputs home first.
            can_act = kind in ("command", "signal") or (kind == "provider" and not self._laptop_holds(laptop))
            status["due"]["by"] = "guardian" if can_act else "laptop"
            grace = float(config.get("laptop_grace") or 0)
            due_for = wall - self.due_at.setdefault(reason, wall)
            if can_act and kind != "provider" and reason not in self.failed and fresh and due_for < grace:
                # The laptop is here: it pulls the outputs home, then asks for this stop (through the lock).
                status["due"]["laptop_pulls"] = True
                wait = min(wait, max(0.05, grace - due_for))
            elif can_act and reason not in self.failed:
                record = guardian_stop(self.folder, config, reason, why, "guardian")
                if record.get("ok"):
                    status["stopped"] = record
                    _write_json(self.path("status.json"), status)
                    return record, 0.0
                self.failed.add(reason)  # once per idle stretch, like the laptop: no stop loop
            elif not can_act and kind != "provider" and "due-" + reason not in self.warned:
                self.warned.add("due-" + reason)
                _decide(
                    self.folder,
                    "due",
                    "%s: %s" % (why, (config.get("stop") or {}).get("why") or "cannot stop"),
                )
        else:
            self.due_at.clear()
        if stop_for is None and (self.tracker is None or self.tracker.idle_since is None):
            self.warned.discard("due-autostop")
        _write_json(self.path("status.json"), status)
        return None, max(0.05, wait)


def guardian_main(folder: str) -> int:
    """The guardian's loop: until it stops the host, its config is withdrawn, or another guardian replaces it."""
    import signal

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    guardian = _Guardian(folder)
    _decide(
        folder, "watching", "guardian pid %d watching (agent %s)" % (os.getpid(), os.path.basename(__file__))
    )
    while guardian.still_mine():
        config = _read_json(guardian.path("config.json"))
        if config is None or _read_json(guardian.path("stopped.json")) is not None:
            break
        try:
            record, wait = guardian.round(config)
        except Exception as exc:  # a bad sample must not end the watch
            _decide(folder, "error", "%s: %s" % (type(exc).__name__, exc))
            record, wait = None, 5.0
        if record is not None:
            break
        time.sleep(wait)
    if guardian.still_mine():
        with contextlib.suppress(OSError):
            os.remove(guardian.path("pid"))
    return 0


def _release_locked(folder: str, record: Optional[Dict[str, Any]]) -> None:
    if record is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(record["pid"]), 15)
    had = os.path.exists(os.path.join(folder, "config.json"))
    for name in ("pid", "config.json", "laptop.json", "status.json", "api-key"):
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
    if had:
        _decide(folder, "released", "`gpubox down`: the laptop let go of the host; the guardian ended")


def guardian_release(folder: str) -> bool:
    """End the guardian of *folder* and withdraw its config, as the `guardian` op's ``release`` does: for the
    laptop's own machine, whose guardian it reaches without SSH (the `local` host with its sshd stopped).
    True if a guardian was running."""
    if not os.path.isdir(folder):
        return False
    with _guardian_lock(folder):
        record = _guardian_pid(folder)
        _release_locked(folder, record)
    return record is not None


def op_guardian(args: Dict[str, Any]) -> Dict[str, Any]:
    folder = _guardian_dir(args.get("key"))
    if args.get("release") and not os.path.isdir(folder):
        return {
            "running": False,
            "pid": None,
            "started": False,
            "previous": None,
            "acted": None,
            "status": None,
            "stopped": None,
            "decisions": [],
            "time": time.time(),
        }
    os.makedirs(folder, mode=0o700, exist_ok=True)
    config = args.get("config")
    if config is not None and not isinstance(config, dict):
        raise RequestError("bad-request", "config must be an object")
    answer = {"started": False, "previous": None, "acted": None}  # type: Dict[str, Any]
    with _guardian_lock(folder):
        record = _guardian_pid(folder)
        if args.get("release"):
            _release_locked(folder, record)
            record = None
        elif args.get("start"):
            for name in ("stopped.json", "stopping.json"):
                previous = _read_json(os.path.join(folder, name))
                if previous is not None and record is None:
                    # A stop the laptop did not see (stopping.json: one that took the guardian down with the
                    # host, such as a poweroff): it records it now.
                    answer["previous"] = answer["previous"] or previous
                    os.remove(os.path.join(folder, name))
            if record is None:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, "status.json"))  # the last guardian's view
            if record is not None and record.get("agent") != os.path.basename(__file__):
                # A guardian of another gpubox version: this one's rules replace it.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(record["pid"]), 15)
                record = None
            if config is not None:
                old = _read_json(os.path.join(folder, "config.json")) or {}
                if record is not None and old.get("since"):
                    config = dict(config, since=old["since"])  # adopted: the host's age goes on
                _write_json(
                    os.path.join(folder, "config.json"),
                    dict(config, since=config.get("since") or time.time()),
                )
            if record is None and config is not None:
                pid = _spawn_away(
                    [sys.executable, os.path.abspath(__file__), "guardian", folder],
                    cwd=os.path.expanduser("~"),
                    log=os.path.join(folder, "log"),
                )
                record = {"pid": pid, "agent": os.path.basename(__file__), "started_at": time.time()}
                _write_json(os.path.join(folder, "pid"), record)
                answer["started"] = True
            else:
                _decide(
                    folder,
                    "adopted",
                    "the laptop's gpubox adopted guardian pid %s" % (record or {}).get("pid"),
                )
        elif config is not None and record is not None:
            old = _read_json(os.path.join(folder, "config.json")) or {}
            new = dict(config, since=old.get("since") or time.time())
            if new != old:
                _write_json(os.path.join(folder, "config.json"), new)
    api_key = args.get("api_key")
    if isinstance(api_key, str) and api_key and not args.get("release"):
        _write_secret(os.path.join(folder, "api-key"), api_key)
    beat = args.get("beat")
    if isinstance(beat, dict):
        _write_json(os.path.join(folder, "laptop.json"), dict(beat, at=time.time()))
    stop = args.get("stop")
    if isinstance(stop, dict):
        current = _read_json(os.path.join(folder, "config.json")) or config or {}
        answer["acted"] = guardian_stop(
            folder, current, str(stop.get("reason") or "stop"), str(stop.get("why") or "stop"), "laptop"
        )
    answer.update(
        running=record is not None,
        pid=None if record is None else record.get("pid"),
        status=_read_json(os.path.join(folder, "status.json")),
        stopped=_read_json(os.path.join(folder, "stopped.json")),
        decisions=_last_decisions(folder, int(args.get("decisions", 10))),
        time=time.time(),
    )
    return answer


Handler = Callable[[Dict[str, Any], bytes], Tuple[Dict[str, Any], bytes]]


def _no_blob(op: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Handler:
    """An op that neither reads a binary part nor sends one back, shaped like those that do."""

    def answer(args: Dict[str, Any], blob: bytes) -> Tuple[Dict[str, Any], bytes]:
        return op(args), b""

    answer.__wrapped__ = op  # type: ignore[attr-defined]
    return answer


# Every request this agent answers, and the one place it is listed: PROTOCOL.md describes each op, and
# gpubox/remote/agent/calls.py is the one place the client names them.
OPS: Dict[str, Handler] = {
    "hello": _no_blob(op_hello),
    "probe": _no_blob(op_probe),
    "framework": _no_blob(op_framework),
    "idle": _no_blob(op_idle),
    "guardian": _no_blob(op_guardian),
    # sync
    "manifest": op_manifest,
    "apply": op_apply,
    "flush": _no_blob(op_flush),
    "stage": op_stage,
    "read": op_read,
    "prune_trash": op_prune_trash,
    # runs and envs
    "run_start": _no_blob(op_run_start),
    "run_list": _no_blob(op_run_list),
    "run_log": op_run_log,
    "run_stop": _no_blob(op_run_stop),
    "env_ready": _no_blob(op_env_ready),
    "node_info": _no_blob(op_node_info),
    # services
    "service_ensure": _no_blob(op_service_ensure),
    "service_list": _no_blob(op_service_list),
    "service_stop": _no_blob(op_service_stop),
    # projects and their folders
    "project_folder": _no_blob(op_project_folder),
    "projects": _no_blob(op_projects),
    # the dashboard
    "dash": op_dash,
}


def handle(message: Dict[str, Any], blob: bytes = b"") -> Tuple[Dict[str, Any], bytes]:
    request_id = message.get("id")
    op = message.get("op")
    args = message.get("args") or {}
    try:
        if not isinstance(args, dict):
            raise RequestError("bad-request", "args must be an object")
        handler = OPS.get(op) if isinstance(op, str) else None
        if handler is None:
            raise RequestError("unknown-op", "unknown op %r" % (op,))
        result, reply_blob = handler(args, blob)
        return {"id": request_id, "ok": True, "result": result}, reply_blob
    except RequestError as exc:
        error = dict(exc.details, kind=exc.kind, message=str(exc))
        return {"id": request_id, "ok": False, "error": error}, b""
    except Exception as exc:  # one bad request must not end the session
        error = {"kind": "internal", "message": "%s: %s" % (type(exc).__name__, exc)}
        return {"id": request_id, "ok": False, "error": error}, b""


def serve(fd_in: int = 0, fd_out: int = 1) -> int:
    while True:
        try:
            message, blob = read_frame(fd_in)
        except EOFError:
            return 0
        except ProtocolError as exc:
            write_frame(fd_out, {"id": None, "ok": False, "error": {"kind": "protocol", "message": str(exc)}})
            return 2
        response, reply_blob = handle(message, blob)
        write_frame(fd_out, response, reply_blob)


if __name__ == "__main__":
    if sys.argv[1:2] == ["guardian"] and len(sys.argv) == 3:
        sys.exit(guardian_main(sys.argv[2]))  # the host's guardian, started by the `guardian` op
    sys.exit(serve())
