"""Where a multi-host run stands: its state derived from its parts', fail-fast, and the listings.

The run's state: ``failed`` as soon as one part failed or was lost (its exit code is the run's), else
``running`` while one runs, else ``stopped`` when one was stopped, else ``succeeded``. Fail fast: when a worker
fails, the others would wait for it in their collectives forever, so whoever watches the run stops them
(:func:`enforce`, :func:`stop_parts`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.errors import HostError
from gpubox.record import record
from gpubox.remote.pool import SessionPool
from gpubox.train.multihost.record import (
    MultiRun,
    Part,
    all_runs,
    first_failure,
    mark_failure,
    mark_stop_requested,
    stop_requested_at,
)
from gpubox.train.runs import RunInfo

if TYPE_CHECKING:
    from gpubox.config import HostsConfig, ProjectConfig

__all__ = [
    "STOP_GRACE",
    "MultiStatus",
    "aggregate",
    "cached_infos",
    "enforce",
    "exit_code",
    "failure_line",
    "fetch_status",
    "has_finished",
    "remember",
    "split_listing",
    "status_of",
    "statuses",
    "stop_multi",
    "stop_parts",
    "table_lines",
]

STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when gpubox stops the other workers of a failed run."""


@record
class MultiStatus:
    run: MultiRun
    parts: tuple[RunInfo | None, ...]
    """What each part's host said, in worker order; None where its host could not be asked."""
    state: str
    """starting, running, succeeded, failed, stopped, or unknown (a host did not answer)."""
    exit_code: int | None
    failed: Part | None = None
    """The part whose failure failed the run (the first to end)."""

    @property
    def finished(self) -> bool:
        return all(info is not None and info.finished for info in self.parts)

    @property
    def started_at(self) -> float | None:
        starts = [i.started_at for i in self.parts if i is not None and i.started_at is not None]
        return min(starts) if starts else self.run.created_at

    @property
    def ended_at(self) -> float | None:
        if not self.finished:
            return None
        ends = [i.ended_at for i in self.parts if i is not None and i.ended_at is not None]
        return max(ends) if ends else None

    def duration(self, now: float | None = None) -> float | None:
        start = self.started_at
        if start is None:
            return None
        end = self.ended_at if self.ended_at is not None else (now if now is not None else time.time())
        return max(0.0, end - start)

    @property
    def chief_progress(self) -> dict[str, Any] | None:
        """Worker 0's progress: every worker trains the same model, the chief speaks for them."""
        chief = self.parts[0] if self.parts else None
        return None if chief is None else chief.progress

    def alive_parts(self) -> list[Part]:
        return [p for p, i in zip(self.run.parts, self.parts, strict=True) if i is None or not i.finished]

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        return {
            "id": self.run.id,
            "host": ",".join(self.run.hosts),
            "hosts": list(self.run.hosts),
            "name": self.run.name,
            "command": self.run.command,
            "state": self.state,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": self.duration(now),
            "exit_code": self.exit_code,
            "log_bytes": sum(i.log_bytes for i in self.parts if i is not None),
            "progress": self.chief_progress,
            "failed_part": None if self.failed is None else self.failed.host,
            "parts": [
                {
                    "host": part.host,
                    "id": part.run_id,
                    "index": part.index,
                    "address": part.address,
                    "state": "unknown" if info is None else info.state,
                    "started_at": None if info is None else info.started_at,
                    "ended_at": None if info is None else info.ended_at,
                    "exit_code": None if info is None else info.exit_code,
                    "log_bytes": 0 if info is None else info.log_bytes,
                }
                for part, info in zip(self.run.parts, self.parts, strict=True)
            ],
        }


def aggregate(
    run: MultiRun,
    infos: Sequence[RunInfo | None],
    stop_requested_at: float | None = None,
    first_failure: tuple[str, str] | None = None,
) -> MultiStatus:
    """The run's state from its parts' (see the module's docstring).

    A part that failed after the user asked to stop the run (a worker dying of its peers' SIGTERM) counts as
    stopped, not failed.
    """
    parts = tuple(infos)
    failures = [
        (info.ended_at if info.ended_at is not None else float("inf"), index)
        for index, info in enumerate(parts)
        if info is not None and info.state in ("failed", "lost")
    ]
    if stop_requested_at is not None:
        failures = [f for f in failures if f[0] < stop_requested_at]
    if failures:
        _, index = min(failures)
        seen_first = [i for _, i in failures if (run.parts[i].host, run.parts[i].run_id) == first_failure]
        if seen_first:
            index = seen_first[0]
        info = parts[index]
        assert info is not None
        code = info.exit_code if info.exit_code is not None else 1
        return MultiStatus(run, parts, "failed", code, run.parts[index])
    states = ["unknown" if info is None else info.state for info in parts]
    if "unknown" in states:
        return MultiStatus(run, parts, "unknown", None)
    if "running" in states:
        return MultiStatus(run, parts, "running", None)
    if "starting" in states:
        return MultiStatus(run, parts, "starting", None)
    stopped = [info for info in parts if info is not None and info.state != "succeeded"]
    if stopped or stop_requested_at is not None:
        stop_code = next((i.exit_code for i in stopped if i.exit_code is not None), None)
        return MultiStatus(run, parts, "stopped", stop_code)
    return MultiStatus(run, parts, "succeeded", 0)


def status_of(run: MultiRun, infos: Sequence[RunInfo | None]) -> MultiStatus:
    """:func:`aggregate` with what the run's record adds: a stop the user asked for, the first failure seen."""
    status = aggregate(run, infos, stop_requested_at(run), first_failure(run))
    if status.failed is not None:
        mark_failure(run, status.failed)
        if first_failure(run) != (status.failed.host, status.failed.run_id):
            status = aggregate(run, infos, stop_requested_at(run), first_failure(run))
    return status


def _list_part(pool: SessionPool, part: Part) -> RunInfo | None:
    from gpubox.train.runs import list_runs

    try:
        found = list_runs(pool.get(part.host), [part.run_id])
    except HostError:
        return None
    return found[0] if found else None


def fetch_status(
    run: MultiRun,
    pool: SessionPool,
    *,
    known: dict[tuple[str, str], RunInfo] | None = None,
    fresh: Sequence[str] = (),
) -> MultiStatus:
    """Ask every part's host (in parallel) how its part is doing.

    Parts in *known* are not asked when they have finished, nor at all when their host is in *fresh* (what it
    said a moment ago).
    """
    known = known or {}
    infos: list[RunInfo | None] = [None] * len(run.parts)
    errors: list[BaseException] = []

    def ask(index: int, part: Part) -> None:
        try:
            infos[index] = _list_part(pool, part)
        except BaseException as exc:
            errors.append(exc)

    threads = []
    for index, part in enumerate(run.parts):
        cached = known.get((part.host, part.run_id))
        if part.host in fresh or (cached is not None and cached.finished):
            infos[index] = cached
            continue
        thread = threading.Thread(target=ask, args=(index, part), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return status_of(run, infos)


def remember(parts: Iterable[tuple[str, RunInfo]]) -> None:
    """Cache what the hosts said, so `gpubox cost` and later listings need not ask again."""
    from gpubox.state import open_state

    by_host: dict[str, list[RunInfo]] = {}
    for host, info in parts:
        by_host.setdefault(host, []).append(info)
    if not by_host:
        return
    with open_state() as state:
        for host, infos in by_host.items():
            state.cache_runs(host, infos)


def cached_infos() -> dict[tuple[str, str], RunInfo]:
    from gpubox.state import open_state

    with open_state() as state:
        rows = state.cached_runs()
    return {
        (row.host, row.id): RunInfo(
            id=row.id,
            host=row.host,
            command=row.command,
            state=row.state,
            started_at=row.started_at,
            ended_at=row.ended_at,
            exit_code=row.exit_code,
            name=row.name,
        )
        for row in rows
    }


def stop_parts(
    pool: SessionPool, parts: Sequence[Part], *, grace: float = STOP_GRACE
) -> dict[Part, RunInfo | BaseException]:
    """Stop *parts* on their hosts at the same time (SIGTERM, SIGKILL after *grace*)."""
    from gpubox.train.runs import stop_run

    results: dict[Part, RunInfo | BaseException] = {}

    def stop(part: Part) -> None:
        try:
            results[part] = stop_run(pool.get(part.host), part.run_id, grace_seconds=grace)
        except BaseException as exc:
            results[part] = exc

    threads = [threading.Thread(target=stop, args=(part,), daemon=True) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    remember((p.host, r) for p, r in results.items() if isinstance(r, RunInfo))
    return results


def failure_line(status: MultiStatus) -> str:
    failed = status.failed
    assert failed is not None
    info = status.parts[status.run.parts.index(failed)]
    how = "was lost" if info is not None and info.state == "lost" else f"failed (exit {status.exit_code})"
    return f"{status.run.id}: worker {failed.index} on {failed.host} ({failed.run_id}) {how}"


def enforce(status: MultiStatus, pool: SessionPool, *, say: Callable[[str], None] | None = None) -> bool:
    """Stop the workers still running in a failed run; True when there were some."""
    if status.state != "failed":
        return False
    alive = [
        p for p, i in zip(status.run.parts, status.parts, strict=True) if i is not None and not i.finished
    ]
    if not alive:
        return False
    if say is not None:
        others = ", ".join(f"{p.host} ({p.run_id})" for p in alive)
        say(f"gpubox: {failure_line(status)}; stopping {others}")
    stop_parts(pool, alive)
    return True


def stop_multi(run: MultiRun, pool: SessionPool, *, grace: float) -> MultiStatus:
    """The user's `gpubox stop m-N`: every part still running is stopped."""
    mark_stop_requested(run)
    status = fetch_status(run, pool)
    stop_parts(pool, status.alive_parts(), grace=grace)
    return fetch_status(run, pool)


def exit_code(status: MultiStatus, err: Callable[[str], None]) -> int:
    """What `run -f` and `logs -f` exit with: the failing worker's exit code, else the run's."""
    if status.state == "failed":
        err(f"gpubox: {failure_line(status)}")
        return status.exit_code if status.exit_code else 1
    if status.state == "succeeded":
        return 0
    return status.exit_code if status.exit_code is not None else 1


def split_listing(host: str, runs: Sequence[RunInfo]) -> tuple[list[RunInfo], list[MultiRun]]:
    """The host's single-host runs, and the multi-host runs that have a part on it (parts taken out).

    Hosts that share a home folder (NFS on a cluster) list each other's runs too: a part of another host
    is recognised by its id and start time.
    """
    records = [run for run in all_runs() if host in run.hosts]
    if not records:
        return list(runs), []
    known = cached_infos()
    parts_here = {p.run_id for run in records for p in run.parts if p.host == host}
    elsewhere = {
        (p.run_id, info.started_at)
        for run in records
        for p in run.parts
        if p.host != host and (info := known.get((p.host, p.run_id))) is not None
    }
    single = [r for r in runs if r.id not in parts_here and (r.id, r.started_at) not in elsewhere]
    return single, records


def statuses(
    records: Sequence[MultiRun],
    host: str,
    runs: Sequence[RunInfo],
    hosts: HostsConfig,
    project: ProjectConfig | str,
) -> list[MultiStatus]:
    """The state of each of *records*, from what *host* just said (*runs*), the cache, and the other hosts."""
    known = cached_infos()
    known.update({(host, r.id): r for r in runs})
    needed = {
        p.host
        for run in records
        for p in run.parts
        if p.host != host and not has_finished(known.get((p.host, p.run_id)))
    }
    pool = SessionPool([hosts.get(name) for name in needed if name in hosts.hosts], project, deadline=5.0)
    try:
        found = []
        for run in records:
            asked = {p.host for p in run.parts if p.host != host and p.host in pool.hosts}
            if not asked:
                infos = [known.get((p.host, p.run_id)) for p in run.parts]
                found.append(status_of(run, infos))
                continue
            trusted = [name for name in run.hosts if name not in asked]
            found.append(fetch_status(run, pool, known=known, fresh=trusted))
    finally:
        pool.close()
    remember((p.host, i) for s in found for p, i in zip(s.run.parts, s.parts, strict=True) if i is not None)
    return found


def has_finished(info: RunInfo | None) -> bool:
    return info is not None and info.finished


def table_lines(found: Sequence[MultiStatus], now: float) -> list[str]:
    """`gpubox runs`' table of multi-host runs: one row per run, then one per part."""
    from gpubox.fmt import format_duration

    rows: list[list[str]] = []
    for status in found:
        started = status.started_at
        rows.append(
            [
                status.run.id,
                ",".join(status.run.hosts),
                status.state,
                time.strftime("%m-%d %H:%M", time.localtime(started)) if started else "",
                format_duration(status.duration(now) or 0),
                "" if status.exit_code is None else str(status.exit_code),
                status.parts[0].progress_text() if status.parts and status.parts[0] is not None else "",
                status.run.command if len(status.run.command) <= 60 else status.run.command[:57] + "...",
            ]
        )
        for index, (part, info) in enumerate(zip(status.run.parts, status.parts, strict=True)):
            branch = "└" if index == len(status.run.parts) - 1 else "├"
            rows.append(
                [
                    f" {branch} {part.run_id}",
                    part.host,
                    "unknown" if info is None else info.state,
                    "",
                    "" if info is None else format_duration(info.duration(now) or 0),
                    "" if info is None or info.exit_code is None else str(info.exit_code),
                    "",
                    f"worker {part.index} {part.address}",
                ]
            )
    headers = ["MULTI-HOST", "HOSTS", "STATE", "STARTED", "DURATION", "EXIT", "PROGRESS", "COMMAND"]
    from gpubox.fmt import columns

    return columns(headers, rows)
