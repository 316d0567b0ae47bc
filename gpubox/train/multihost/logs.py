"""The logs of a multi-host run: every part's log, each line behind its host's name, followed live.

A dropped link only pauses that host's stream; while following, a failed worker gets the others stopped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gpubox.errors import HostError
from gpubox.remote.agent import calls
from gpubox.train.multihost.record import MultiRun, Part
from gpubox.train.multihost.status import MultiStatus, failure_line, remember, status_of, stop_parts
from gpubox.train.runs import TERMINAL, RunInfo

if TYPE_CHECKING:
    from gpubox.remote.pool import SessionPool

__all__ = ["follow_logs", "tail_offsets"]

_PARTIAL_LINE_LIMIT = 8192


class _Prefixer:
    """Writes whole lines of one part's log, each behind the part's host name."""

    def __init__(self, prefix: bytes, out: IO[bytes]) -> None:
        self.prefix = prefix
        self.out = out
        self.pending = bytearray()

    def feed(self, data: bytes) -> None:
        self.pending += data
        cut = self.pending.rfind(b"\n")
        if cut >= 0:
            lines = bytes(self.pending[:cut]).split(b"\n")
            del self.pending[: cut + 1]
            self.out.write(b"".join(self.prefix + line + b"\n" for line in lines))
        if len(self.pending) > _PARTIAL_LINE_LIMIT:
            self.close()

    def close(self) -> None:
        if self.pending:
            self.out.write(self.prefix + bytes(self.pending) + b"\n")
            self.pending.clear()


def _prefixes(run: MultiRun) -> dict[str, bytes]:
    width = max(len(host) for host in run.hosts)
    return {host: f"[{host}]{' ' * (width - len(host))} ".encode() for host in run.hosts}


def _cache_path(host: str, run_id: str) -> Path:
    from gpubox import paths

    return paths.ensure_private_dir(paths.state_dir() / "runs" / host) / f"{run_id}.log"


def tail_offsets(run: MultiRun, pool: SessionPool, lines: int, out: IO[bytes]) -> dict[str, int]:
    """Print the last *lines* lines of each part (prefixed); return where each part's log was read to."""
    window = 1 << 20
    prefixes = _prefixes(run)
    offsets: dict[str, int] = {}
    for part in run.parts:
        agent = pool.get(part.host).agent
        head, _ = calls.run_log(agent, run_id=part.run_id, offset=0, max_bytes=1)
        start = max(0, int(head.get("size", 0)) - window)
        _, data = calls.run_log(agent, run_id=part.run_id, offset=start, max_bytes=window)
        printer = _Prefixer(prefixes[part.host], out)
        printer.feed(b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b"")
        printer.close()
        offsets[part.host] = start + len(data)
    out.flush()
    return offsets


def follow_logs(
    run: MultiRun,
    pool: SessionPool,
    out: IO[bytes],
    *,
    follow: bool,
    say: Callable[[str], None],
    offsets: dict[str, int] | None = None,
    poll_seconds: float = 0.2,
) -> MultiStatus:
    """Print every part's log, each line behind its host's name; with *follow*, until every part ended.

    Without *offsets* each part goes through its local copy (``state/runs/HOST/RUN.log``, as for one-host runs):
    what it holds is printed first and fetching resumes at its size, so nothing is fetched twice. While
    following, a failed worker gets the others stopped. A dropped link only pauses that host's stream.
    """
    prefixes = _prefixes(run)
    printers = {part.host: _Prefixer(prefixes[part.host], out) for part in run.parts}
    caches: dict[str, IO[bytes]] = {}
    start: dict[str, int] = dict(offsets or {})
    try:
        if offsets is None:
            for part in run.parts:
                cache = open(_cache_path(part.host, part.run_id), "a+b")  # noqa: SIM115 (closed below)
                caches[part.host] = cache
                cache.seek(0)
                while chunk := cache.read(1 << 20):
                    printers[part.host].feed(chunk)
                start[part.host] = cache.tell()
            out.flush()
        events: queue.Queue[tuple[str, Part, Any]] = queue.Queue()
        quit_event = threading.Event()
        pumps = [
            threading.Thread(
                target=_pump,
                args=(part, pool, start.get(part.host, 0), events, quit_event, follow, poll_seconds),
                daemon=True,
            )
            for part in run.parts
        ]
        for pump in pumps:
            pump.start()
        infos: dict[str, RunInfo] = {}
        ended: set[str] = set()
        gaps: set[str] = set()
        stopper: threading.Thread | None = None
        try:
            while len(ended) < len(run.parts):
                kind, part, payload = events.get()
                if kind == "error":
                    raise payload
                if kind == "gap":
                    if part.host not in gaps:
                        say(
                            f"gpubox: link to {part.host} lost ({payload}); reconnecting, its log resumes where it stopped"
                        )
                        gaps.add(part.host)
                    continue
                gaps.discard(part.host)
                data, info = payload
                infos[part.host] = info
                if data:
                    if part.host in caches:
                        caches[part.host].write(data)
                        caches[part.host].flush()
                    printers[part.host].feed(data)
                    out.flush()
                if kind == "end":
                    printers[part.host].close()
                    out.flush()
                    ended.add(part.host)
                if follow and stopper is None:
                    status = status_of(run, [infos.get(p.host) for p in run.parts])
                    if status.state == "failed":
                        # The failed worker's own end may not have been read yet: it is never one "to stop".
                        alive = [
                            p
                            for p in run.parts
                            if p.host not in ended
                            and p != status.failed
                            and not ((known := infos.get(p.host)) is not None and known.finished)
                        ]
                        if alive:
                            say(
                                f"gpubox: {failure_line(status)}; stopping "
                                + ", ".join(f"{p.host} ({p.run_id})" for p in alive)
                            )
                            stopper = threading.Thread(target=stop_parts, args=(pool, alive), daemon=True)
                            stopper.start()
        finally:
            quit_event.set()
        if stopper is not None:
            stopper.join()
    finally:
        for opened in caches.values():
            opened.close()
    final = [infos.get(part.host) for part in run.parts]
    remember((p.host, i) for p, i in zip(run.parts, final, strict=True) if i is not None)
    return status_of(run, final)


def _pump(
    part: Part,
    pool: SessionPool,
    offset: int,
    events: queue.Queue[tuple[str, Part, Any]],
    quit_event: threading.Event,
    follow: bool,
    poll_seconds: float,
) -> None:
    """Fetch one part's log from *offset* on; report ("data"|"end", (bytes, RunInfo)), "gap" or "error"."""
    last_state = None
    while not quit_event.is_set():
        try:
            session = pool.get(part.host)
            result, data = calls.run_log(session.agent, run_id=part.run_id, offset=offset, max_bytes=1 << 20)
        except HostError as exc:
            if not follow:
                events.put(("error", part, exc))
                return
            events.put(("gap", part, exc))
            quit_event.wait(poll_seconds * 5)
            continue
        except BaseException as exc:
            events.put(("error", part, exc))
            return
        info = RunInfo.from_agent(part.host, result["run"])
        offset += len(data)
        size = int(result.get("size", offset))
        if data:
            events.put(("data", part, (data, info)))
            last_state = info.state
            continue
        if not follow or (info.state in TERMINAL and offset >= size):
            events.put(("end", part, (b"", info)))
            return
        if info.state != last_state:
            events.put(("data", part, (b"", info)))
            last_state = info.state
        quit_event.wait(poll_seconds)
