"""Multi-host runs: one worker per host, wired for TensorFlow's own distributed engine (and for torchrun).

``gpubox run --hosts a,b -- python train.py`` syncs the project and builds its env on every host, then starts
one ordinary detached run (``r-N``, see :mod:`gpubox.train.runs`) per host, each with ``TF_CONFIG`` set for
``tf.distribute.MultiWorkerMirroredStrategy``::

    {"cluster": {"worker": ["10.0.0.5:41234", "10.0.0.6:40211"]}, "task": {"type": "worker", "index": 1}}

and ``GPUBOX_NODE_RANK``, ``GPUBOX_NUM_NODES``, ``GPUBOX_NODE_IPS`` (comma-separated), ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK`` (one process per node: torchrun users pass ``--nnodes
$GPUBOX_NUM_NODES --node_rank $GPUBOX_NODE_RANK --master_addr $MASTER_ADDR --master_port $MASTER_PORT``), plus
``GPUBOX_MULTIHOST_RUN``, the id of the whole run.

Where the other workers reach a host: the IP gpubox connects to when hosts.toml (or ``~/.ssh/config``) gives
one that is not a loopback address; otherwise (a DNS name, an alias, the ``local`` host) the address the host
itself sends from toward another worker, which its agent finds with a UDP ``connect`` (no packet is sent).
Each worker listens on a TCP port its agent found free a moment before (``MASTER_PORT`` is a second one on
worker 0): a port taken in between makes the worker fail to start, and the run fails like any other.

The run is one id, ``m-N``. Its record (which ``r-N`` on which host is which worker) is a small JSON file in
gpubox's local state folder, ``multihost/m-N.json``; each part's state, log and exit code stay on its host,
which remains the source of truth. The run's state is derived from its parts: ``failed`` as soon as one part
failed or was lost (its exit code is the run's), else ``running`` while one runs, else ``stopped`` when one
was stopped, else ``succeeded``.

Fail fast: when a worker fails, the others would wait for it in their collectives forever, so gpubox stops
them. Whoever is watching does it: ``run -f`` and ``logs m-N -f`` while they stream, and a small detached
watcher process that ``run --hosts`` leaves behind (it polls the parts every second and exits once they have
all ended, or after ten minutes in which no host of the run answered). A run whose watcher could not do its
job (the laptop was off) is finished by the next ``logs m-N -f`` or ``stop m-N``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from gpubox.errors import GpuboxError, HostError, UsageError
from gpubox.remote.agent import calls
from gpubox.train.runs import TERMINAL, RunInfo

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.session import HostSession

__all__ = [
    "Links",
    "MultiRun",
    "MultiStatus",
    "Part",
    "aggregate",
    "check_multi_id",
    "follow_logs",
    "is_multi_id",
    "load_run",
    "pick_hosts",
    "worker_env",
]

MULTI_ID = re.compile(r"^m-[0-9]{1,9}$")
STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when gpubox stops the other workers of a failed run."""
WATCH_POLL = 1.0
WATCH_GIVE_UP = 600.0
"""The watcher leaves after this many seconds in which no host of the run answered."""
_PARTIAL_LINE_LIMIT = 8192
_ROUTE_PROBE = "192.0.2.1"  # TEST-NET-1: a UDP connect toward it follows the default route, sends nothing


def is_multi_id(text: str) -> bool:
    return bool(MULTI_ID.match(text))


def check_multi_id(text: str) -> str:
    if not is_multi_id(text):
        raise UsageError(
            f"{text!r} is not a multi-host run id (they look like m-3; `gpubox runs` lists them)"
        )
    return text


# ------------------------------------------------------------------------------------------ the record


@dataclass(frozen=True)
class Part:
    """One worker: run ``run_id`` on ``host``, TensorFlow worker ``index``, listening on ``address``."""

    host: str
    run_id: str
    index: int
    address: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "run": self.run_id, "index": self.index, "address": self.address}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Part:
        return cls(str(row["host"]), str(row["run"]), int(row["index"]), str(row["address"]))


@dataclass
class MultiRun:
    id: str
    hosts: tuple[str, ...]
    command: str
    name: str | None
    created_at: float
    cluster: tuple[str, ...] = ()
    """``host:port`` of every worker, in worker order (TF_CONFIG's cluster)."""
    master: str = ""
    """``MASTER_ADDR:MASTER_PORT``."""
    project: str = ""
    """The project folder the run was started from (the watcher reads its hosts.toml)."""
    parts: list[Part] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hosts": list(self.hosts),
            "command": self.command,
            "name": self.name,
            "created_at": self.created_at,
            "cluster": list(self.cluster),
            "master": self.master,
            "project": self.project,
            "parts": [part.to_json() for part in self.parts],
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> MultiRun:
        return cls(
            id=str(row["id"]),
            hosts=tuple(str(h) for h in row["hosts"]),
            command=str(row.get("command", "")),
            name=row.get("name"),
            created_at=float(row.get("created_at", 0.0)),
            cluster=tuple(str(a) for a in row.get("cluster", ())),
            master=str(row.get("master", "")),
            project=str(row.get("project", "")),
            parts=[Part.from_json(p) for p in row.get("parts", ())],
        )


def records_dir() -> Path:
    from gpubox import paths

    return paths.ensure_private_dir(paths.state_dir() / "multihost")


def _write_json(path: Path, document: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, indent=1))
    os.replace(tmp, path)


def new_run(hosts: Sequence[str], command: str, name: str | None, project: str) -> MultiRun:
    """A new record with a fresh ``m-N`` id (claimed atomically: two gpubox processes never share one)."""
    folder = records_dir()
    numbers = [int(p.stem[2:]) for p in folder.glob("m-*.json") if p.stem[2:].isdigit()]
    number = max(numbers, default=0)
    while True:
        number += 1
        path = folder / f"m-{number}.json"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:
            continue
    run = MultiRun(f"m-{number}", tuple(hosts), command, name, time.time(), project=project)
    save_run(run)
    return run


def save_run(run: MultiRun) -> None:
    _write_json(records_dir() / f"{run.id}.json", run.to_json())


def load_run(run_id: str) -> MultiRun:
    path = records_dir() / f"{check_multi_id(run_id)}.json"
    try:
        return MultiRun.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"no multi-host run {run_id} on this machine (`gpubox runs` lists them)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GpuboxError(f"the record of {run_id} ({path}) is damaged: {exc}") from None


def all_runs() -> list[MultiRun]:
    runs = []
    for path in records_dir().glob("m-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            runs.append(MultiRun.from_json(json.loads(path.read_text())))
    return sorted(runs, key=lambda r: int(r.id[2:]))


def _stop_requested_at(run: MultiRun) -> float | None:
    try:
        return float((records_dir() / f"{run.id}.stop").read_text())
    except (OSError, ValueError):
        return None


def _first_failure(run: MultiRun) -> tuple[str, str] | None:
    """(host, part run id) of the failure gpubox saw first, once one was seen."""
    try:
        row = json.loads((records_dir() / f"{run.id}.failure").read_text())
        return str(row["host"]), str(row["run"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mark_failure(run: MultiRun, part: Part) -> None:
    """Remember which failure gpubox saw first (the first to record one wins), so every view agrees on it.

    The hosts' clocks may disagree, so their end times alone cannot order failures on different hosts.
    """
    path = records_dir() / f"{run.id}.failure"
    with contextlib.suppress(FileExistsError):
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(handle, json.dumps({"host": part.host, "run": part.run_id}).encode())
        finally:
            os.close(handle)


def status_of(run: MultiRun, infos: Sequence[RunInfo | None]) -> MultiStatus:
    """:func:`aggregate` with what the run's record adds: a stop the user asked for, the first failure seen."""
    status = aggregate(run, infos, _stop_requested_at(run), _first_failure(run))
    if status.failed is not None:
        _mark_failure(run, status.failed)
        if _first_failure(run) != (status.failed.host, status.failed.run_id):
            status = aggregate(run, infos, _stop_requested_at(run), _first_failure(run))
    return status


# ---------------------------------------------------------------------------------------- bad input


def pick_hosts(spec: str, hosts: HostsConfig, *, single: str | None = None) -> list[HostConfig]:
    """The hosts named by ``--hosts a,b`` in worker order; one-line usage errors for anything else."""
    if single is not None:
        raise UsageError("--host and --hosts do not go together: --hosts a,b names every host of the run")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(names) < 2:
        raise UsageError(
            f"--hosts needs two or more hosts, comma-separated (got {spec!r}); for one host use --host"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--hosts names {', '.join(repeated)} more than once: one worker per host")
    return [hosts.get(name) for name in names]


# ------------------------------------------------------------------------------------- worker wiring


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def worker_env(
    index: int, cluster: Sequence[str], master_addr: str, master_port: int, run_id: str
) -> dict[str, str]:
    """The environment of worker *index* of *cluster* (``host:port`` per worker)."""
    ips = [address.rsplit(":", 1)[0].strip("[]") for address in cluster]
    tf_config = {"cluster": {"worker": list(cluster)}, "task": {"type": "worker", "index": index}}
    return {
        "TF_CONFIG": json.dumps(tf_config, separators=(",", ":")),
        "GPUBOX_MULTIHOST_RUN": run_id,
        "GPUBOX_NODE_RANK": str(index),
        "GPUBOX_NUM_NODES": str(len(cluster)),
        "GPUBOX_NODE_IPS": ",".join(ips),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(len(cluster)),
        "RANK": str(index),
    }


def _routable_ip(text: str) -> str | None:
    """*text* when it is an IP address other workers could use (not loopback, not 0.0.0.0)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:
        return None
    return str(address)


def _seen_from_here(hostname: str) -> str | None:
    """An address of *hostname* as this machine resolves it, to aim the other host's route lookup at."""
    direct = _routable_ip(hostname)
    if direct is not None:
        return direct
    try:
        found = socket.getaddrinfo(hostname, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for _family, _type, _proto, _name, sockaddr in found:
        candidate = _routable_ip(str(sockaddr[0]))
        if candidate is not None:
            return candidate
    return None


def _wire(sessions: Sequence[HostSession]) -> tuple[list[str], str, int]:
    """Each worker's ``address:port``, and MASTER_ADDR/MASTER_PORT (a second free port on worker 0)."""
    endpoints = [session.spec.endpoint.hostname for session in sessions]
    seen = [_seen_from_here(name) for name in endpoints]
    cluster: list[str] = []
    master_port = 0
    for index, session in enumerate(sessions):
        toward = next((seen[j] for j in range(len(sessions)) if j != index and seen[j]), None)
        info = calls.node_info(session.agent, toward=toward, ports=2 if index == 0 else 1)
        address = _routable_ip(endpoints[index]) or info.get("address")
        if not address:
            raise GpuboxError(
                f"cannot tell which address the other workers can reach {session.host.name} on: give it "
                "by IP in hosts.toml (hostname = ...)"
            )
        ports = [int(p) for p in info.get("ports", [])]
        cluster.append(host_port(str(address), ports[0]))
        if index == 0:
            master_port = ports[1]
    master_addr = cluster[0].rsplit(":", 1)[0].strip("[]")
    return cluster, master_addr, master_port


# ----------------------------------------------------------------------------------------- connections


class Links:
    """One live session per host, opened on first use and reopened after the link dropped; thread-safe.

    A session's agent serialises its requests, so the threads that stream logs and the one that stops
    workers can share it.
    """

    def __init__(
        self,
        hosts: Iterable[HostConfig],
        project_name: str,
        *,
        sessions: dict[str, HostSession] | None = None,
        deadline: float | None = 30.0,
        accept_new: bool = False,
        ask: AskToPin | None = None,
    ) -> None:
        self.hosts = {host.name: host for host in hosts}
        self.project_name = project_name
        self.deadline = deadline
        self.accept_new = accept_new
        self.ask = ask
        self._sessions: dict[str, HostSession] = dict(sessions or {})
        self._locks = {name: threading.Lock() for name in self.hosts}

    def get(self, name: str) -> HostSession:
        from gpubox.remote.connection import Backoff, with_backoff
        from gpubox.remote.session import connect_host

        with self._locks[name]:
            session = self._sessions.get(name)
            if session is not None and session.connection.is_alive():
                return session
            if session is not None:
                session.close()
                del self._sessions[name]
            host = self.hosts[name]
            session = with_backoff(
                lambda: connect_host(
                    host,
                    self.project_name,
                    accept_new=self.accept_new,
                    ask=self.ask,
                    probe=False,
                    launch=False,
                ),
                Backoff(initial=0.5, maximum=5.0, deadline=self.deadline),
            )
            self._sessions[name] = session
            return session

    def close(self) -> None:
        for name in list(self._sessions):
            with contextlib.suppress(Exception):
                self._sessions.pop(name).close()


# ------------------------------------------------------------------------------------------- the state


@dataclass(frozen=True)
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


def _list_part(links: Links, part: Part) -> RunInfo | None:
    from gpubox.train.runs import list_runs

    try:
        found = list_runs(links.get(part.host), [part.run_id])
    except HostError:
        return None
    return found[0] if found else None


def fetch_status(
    run: MultiRun,
    links: Links,
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
            infos[index] = _list_part(links, part)
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


def _remember(parts: Iterable[tuple[str, RunInfo]]) -> None:
    """Cache what the hosts said, so `gpubox cost` and later listings need not ask again."""
    from gpubox.state import cache_runs, open_state

    by_host: dict[str, list[RunInfo]] = {}
    for host, info in parts:
        by_host.setdefault(host, []).append(info)
    if not by_host:
        return
    with open_state() as state:
        for host, infos in by_host.items():
            cache_runs(state, host, infos)


def _cached_infos() -> dict[tuple[str, str], RunInfo]:
    from gpubox.state import cached_runs, open_state

    with open_state() as state:
        rows = cached_runs(state)
    return {
        (str(row["host"]), str(row["id"])): RunInfo(
            id=str(row["id"]),
            host=str(row["host"]),
            command=str(row["command"]),
            state=str(row["state"]),
            started_at=row["started_at"],
            ended_at=row["ended_at"],
            exit_code=row["exit_code"],
            name=row["name"],
        )
        for row in rows
    }


def stop_parts(
    links: Links, parts: Sequence[Part], *, grace: float = STOP_GRACE
) -> dict[Part, RunInfo | BaseException]:
    """Stop *parts* on their hosts at the same time (SIGTERM, SIGKILL after *grace*)."""
    from gpubox.train.runs import stop_run

    results: dict[Part, RunInfo | BaseException] = {}

    def stop(part: Part) -> None:
        try:
            results[part] = stop_run(links.get(part.host), part.run_id, grace_seconds=grace)
        except BaseException as exc:
            results[part] = exc

    threads = [threading.Thread(target=stop, args=(part,), daemon=True) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _remember((p.host, r) for p, r in results.items() if isinstance(r, RunInfo))
    return results


def failure_line(status: MultiStatus) -> str:
    failed = status.failed
    assert failed is not None
    info = status.parts[status.run.parts.index(failed)]
    how = "was lost" if info is not None and info.state == "lost" else f"failed (exit {status.exit_code})"
    return f"{status.run.id}: worker {failed.index} on {failed.host} ({failed.run_id}) {how}"


def enforce(status: MultiStatus, links: Links, *, say: Callable[[str], None] | None = None) -> bool:
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
    stop_parts(links, alive)
    return True


def stop_multi(run: MultiRun, links: Links, *, grace: float) -> MultiStatus:
    """The user's `gpubox stop m-N`: every part still running is stopped."""
    _write_json_text(records_dir() / f"{run.id}.stop", repr(time.time()))
    status = fetch_status(run, links)
    stop_parts(links, status.alive_parts(), grace=grace)
    return fetch_status(run, links)


def _write_json_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- logs


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


def tail_offsets(run: MultiRun, links: Links, lines: int, out: IO[bytes]) -> dict[str, int]:
    """Print the last *lines* lines of each part (prefixed); return where each part's log was read to."""
    window = 1 << 20
    prefixes = _prefixes(run)
    offsets: dict[str, int] = {}
    for part in run.parts:
        agent = links.get(part.host).agent
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
    links: Links,
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
                args=(part, links, start.get(part.host, 0), events, quit_event, follow, poll_seconds),
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
                            stopper = threading.Thread(target=stop_parts, args=(links, alive), daemon=True)
                            stopper.start()
        finally:
            quit_event.set()
        if stopper is not None:
            stopper.join()
    finally:
        for opened in caches.values():
            opened.close()
    final = [infos.get(part.host) for part in run.parts]
    _remember((p.host, i) for p, i in zip(run.parts, final, strict=True) if i is not None)
    return status_of(run, final)


def _pump(
    part: Part,
    links: Links,
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
            session = links.get(part.host)
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


# ---------------------------------------------------------------------------------------------- start


def launch(
    links: Links,
    hosts: Sequence[HostConfig],
    argv: Sequence[str],
    *,
    name: str | None,
    venvs: Sequence[str | None],
    project_root: str,
) -> MultiRun:
    """Start one worker per host (sync and env already done); return the run's record."""
    from gpubox.train.runs import start_run

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    sessions = [links.get(host.name) for host in hosts]
    cluster, master_addr, master_port = _wire(sessions)
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    run = new_run([h.name for h in hosts], command, name, project_root)
    run.cluster = tuple(cluster)
    run.master = host_port(master_addr, master_port)
    try:
        for index, session in enumerate(sessions):
            env = worker_env(index, cluster, master_addr, master_port, run.id)
            info = start_run(session, argv, name=name, extra_env=env, venv=venvs[index])
            run.parts.append(Part(session.host.name, info.id, index, cluster[index]))
            save_run(run)
            _remember([(session.host.name, info)])
    except BaseException:
        # Half a cluster waits for the rest forever: take down what started, and forget the run.
        with contextlib.suppress(Exception):
            stop_parts(links, run.parts, grace=1.0)
        with contextlib.suppress(OSError):
            (records_dir() / f"{run.id}.json").unlink()
        raise
    return run


def run_on_hosts(
    hosts: Sequence[HostConfig],
    argv: Sequence[str],
    *,
    project_name: str,
    project_root: str,
    name: str | None,
    follow: bool,
    accept_new: bool,
    ask: AskToPin | None,
    prepare: Callable[[HostSession, HostConfig], str | None],
    out: Callable[[str], None],
    err: Callable[[str], None],
    stream: IO[bytes],
) -> int:
    """`gpubox run --hosts`: prepare every host (sync, env) in parallel, start the workers, maybe follow."""
    links = Links(hosts, project_name, deadline=None if follow else 30.0, accept_new=accept_new, ask=ask)
    try:
        venvs: list[str | None] = [None] * len(hosts)
        failures: list[BaseException] = []

        def prepare_one(index: int, host: HostConfig) -> None:
            try:
                venvs[index] = prepare(links.get(host.name), host)
            except BaseException as exc:
                failures.append(exc)

        # Connect one by one, so that a host key to accept is asked about one at a time.
        for host in hosts:
            links.get(host.name)
        # Create (or migrate) the state database before the threads below use it: two connections switching
        # a new database to WAL at once can fail with "database is locked".
        from gpubox.state import open_state

        with open_state():
            pass
        threads = [
            threading.Thread(target=prepare_one, args=(i, h), daemon=True) for i, h in enumerate(hosts)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        run = launch(links, hosts, argv, name=name, venvs=venvs, project_root=project_root)
        try:
            spawn_watcher(run)
        except OSError as exc:
            err(
                f"gpubox: could not leave a watcher for {run.id} ({exc}): if a worker fails, "
                f"`gpubox logs {run.id} -f` or `gpubox stop {run.id}` stops the others"
            )
        out(f"started {run.id} on {', '.join(run.hosts)}: {run.command}")
        for part in run.parts:
            out(f"  worker {part.index}: {part.host} {part.run_id} ({part.address})")
        if not follow:
            out(f"  follow it: gpubox logs {run.id} -f    stop it: gpubox stop {run.id}")
            return 0
        status = follow_logs(run, links, stream, follow=True, say=err)
        return exit_code(status, err)
    finally:
        links.close()


def exit_code(status: MultiStatus, err: Callable[[str], None]) -> int:
    """What `run -f` and `logs -f` exit with: the failing worker's exit code, else the run's."""
    if status.state == "failed":
        err(f"gpubox: {failure_line(status)}")
        return status.exit_code if status.exit_code else 1
    if status.state == "succeeded":
        return 0
    return status.exit_code if status.exit_code is not None else 1


# -------------------------------------------------------------------------------------------- listings


def split_listing(host: str, runs: Sequence[RunInfo]) -> tuple[list[RunInfo], list[MultiRun]]:
    """The host's single-host runs, and the multi-host runs that have a part on it (parts taken out).

    Hosts that share a home folder (NFS on a cluster) list each other's runs too: a part of another host
    is recognised by its id and start time.
    """
    records = [run for run in all_runs() if host in run.hosts]
    if not records:
        return list(runs), []
    known = _cached_infos()
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
    records: Sequence[MultiRun], host: str, runs: Sequence[RunInfo], hosts: HostsConfig, project_name: str
) -> list[MultiStatus]:
    """The state of each of *records*, from what *host* just said (*runs*), the cache, and the other hosts."""
    known = _cached_infos()
    known.update({(host, r.id): r for r in runs})
    needed = {
        p.host
        for run in records
        for p in run.parts
        if p.host != host and not _finished(known.get((p.host, p.run_id)))
    }
    links = Links([hosts.get(name) for name in needed if name in hosts.hosts], project_name, deadline=5.0)
    try:
        found = []
        for run in records:
            asked = {p.host for p in run.parts if p.host != host and p.host in links.hosts}
            if not asked:
                infos = [known.get((p.host, p.run_id)) for p in run.parts]
                found.append(status_of(run, infos))
                continue
            trusted = [name for name in run.hosts if name not in asked]
            found.append(fetch_status(run, links, known=known, fresh=trusted))
    finally:
        links.close()
    _remember((p.host, i) for s in found for p, i in zip(s.run.parts, s.parts, strict=True) if i is not None)
    return found


def _finished(info: RunInfo | None) -> bool:
    return info is not None and info.finished


def table_lines(found: Sequence[MultiStatus], now: float) -> list[str]:
    """`gpubox runs`' table of multi-host runs: one row per run, then one per part."""
    from gpubox.cost import format_duration

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
    from gpubox.report import columns

    return columns(headers, rows)


# ------------------------------------------------------------------------------------------- watcher


def _watcher_file(run_id: str) -> Path:
    return records_dir() / f"{run_id}.watcher"


def spawn_watcher(run: MultiRun) -> int | None:
    """Leave a detached process that stops the other workers when one fails (see the module docstring)."""
    if os.environ.get("GPUBOX_MULTIHOST_WATCHER") == "0":  # tests of the foreground follower
        return None
    log = open(records_dir() / f"{run.id}.watch.log", "ab")  # noqa: SIM115 (handed to the child)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "gpubox.train.multihost", "watch", run.id],
            cwd=run.project or None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()
    _write_json_text(_watcher_file(run.id), str(child.pid))
    return child.pid


def watch(run_id: str) -> int:
    """The watcher's loop: poll every part; when one failed, stop the rest; leave when all have ended."""
    from gpubox.config import load_hosts

    run = load_run(run_id)
    hosts = load_hosts(Path(run.project) if run.project else None)
    links = Links([hosts.get(name) for name in run.hosts], "", deadline=5.0)
    heard = time.monotonic()
    try:
        while True:
            known = _cached_infos()
            if all(_finished(known.get((p.host, p.run_id))) for p in run.parts):
                return 0
            status = fetch_status(run, links, known=known)
            if any(info is not None for info in status.parts):
                heard = time.monotonic()
            _remember(
                (p.host, i)
                for p, i in zip(run.parts, status.parts, strict=True)
                if i is not None and i.finished
            )
            if status.finished:
                return 0
            if enforce(status, links, say=lambda line: print(time.strftime("%F %T"), line, flush=True)):
                continue
            if time.monotonic() - heard > WATCH_GIVE_UP:
                print(
                    time.strftime("%F %T"), f"no host of {run.id} answered for {WATCH_GIVE_UP:g} s: leaving"
                )
                return 1
            time.sleep(WATCH_POLL)
    finally:
        links.close()
        with contextlib.suppress(OSError):
            _watcher_file(run_id).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 2 or arguments[0] != "watch":
        print("usage: python -m gpubox.train.multihost watch m-N", file=sys.stderr)
        return 2
    try:
        return watch(arguments[1])
    except GpuboxError as exc:
        print(time.strftime("%F %T"), f"gpubox: {exc}", flush=True)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
