"""A host's lane in a sweep: its slots (one per GPU and per_gpu, or one for a host without GPU), and the worker
thread that does all of that host's SSH work in *cycles*: connect and prepare when needed, stop the runs asked
to stop, read the running trials' runs (their rows, new log bytes and scalar points, through the agent's
``run_list`` and ``dash``), start the trials handed to it, and hand back what it saw.

A cycle never touches the study: the scheduler (:mod:`.scheduler`) owns it, in its own thread.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from gpubox.errors import (
    AgentError,
    AuthenticationFailed,
    GpuboxError,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    UsageError,
)
from gpubox.remote.agent import calls
from gpubox.train.runs import RunInfo, start_run, stop_run
from gpubox.train.sweep.metrics import MetricReader

if TYPE_CHECKING:
    from gpubox.actions import Say
    from gpubox.config import HostConfig
    from gpubox.remote.session import HostSession

__all__ = ["LOG_PIECE", "Cycle", "Flight", "Lane", "Observation", "Slot", "StartOrder", "Started"]

LOG_PIECE = 1 << 20
"""The most log bytes one read brings."""
_TRANSIENT = (HostUnreachable, AgentError)
STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL for a pruned or stopped trial's run."""


@dataclass
class Slot:
    host: str
    gpu: int | None
    index: int
    busy: int | None = None
    """The trial number in it."""

    @property
    def label(self) -> str:
        where = self.host if self.gpu is None else f"{self.host} GPU {self.gpu}"
        return where if self.index == 0 else f"{where} #{self.index + 1}"


@dataclass
class Flight:
    """A trial this scheduler is running (or adopted): its Optuna trial, where it runs, what was read."""

    trial: optuna.Trial
    lane: Lane
    slot: Slot | None
    params: dict[str, Any]
    reader: MetricReader
    run_id: str | None = None
    run_name: str = ""
    verified: bool = True
    """False for an adopted trial until its run has been found on its host."""
    started_at: float | None = None
    usd_per_hour: float | None = None
    prune: bool = False
    """Pruned: its run is being stopped, and it is told PRUNED once the run has ended."""
    stop_for_user: bool = False
    stop_sent: bool = False
    attempt: int = 1
    order: StartOrder | None = None
    """How it is started (kept until the start came back: a link lost meanwhile leaves it unknown)."""
    reported: set[int] = field(default_factory=set)
    """The steps already reported to Optuna."""
    want_slot: Any = None
    """An adopted trial's [gpu, index] before the restart."""

    @property
    def number(self) -> int:
        return int(self.trial.number)


@dataclass
class Observation:
    number: int
    row: calls.RunRow | None
    """None: the host has no such run (or none of that name)."""
    log: bytes = b""
    log_from: int | None = None
    """Where *log* starts in the log (not where it was asked from when the log was replaced meanwhile)."""
    scalars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Started:
    number: int
    run: RunInfo | None
    error: str | None = None


@dataclass
class Cycle:
    """What one lane cycle did (filled in the lane's thread, read in the scheduler's)."""

    lane: Lane
    observations: list[Observation] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    orders: list[StartOrder] = field(default_factory=list)
    lost_link: str | None = None
    prepared: bool = False
    fatal: str | None = None
    error: BaseException | None = None
    """What went wrong, when something did (start-up re-raises it when no host could be used)."""


@dataclass
class StartOrder:
    number: int
    shell: str
    env: dict[str, str]
    name: str


class Lane:
    """One host's worker: its session, its slots, its cycles (one at a time, in its own thread)."""

    def __init__(
        self,
        host: HostConfig,
        *,
        connect: Callable[[HostConfig], HostSession],
        prepare: Callable[[HostSession, HostConfig], str | None],
        per_gpu: int,
        say: Say,
        accepts_new: bool = True,
        outputs: Sequence[str] | None = None,
    ) -> None:
        self.host = host
        self.outputs = outputs
        """The project's output folders, where the agent looks for a trial's metrics."""
        self.name = host.name
        self._connect = connect
        self._prepare = prepare
        self.per_gpu = per_gpu
        self.say = say
        self.accepts_new = accepts_new
        """False for a host only visited to finish trials started there before (not in this sweep's hosts)."""
        self.session: HostSession | None = None
        self.prepared = False
        self.venv: str | None = None
        self.slots: list[Slot] = []
        self.gpus: list[int] = []
        self.fatal: str | None = None
        self.host_usd_per_hour: float | None = None
        self.next_connect = 0.0
        self.delay = 0.5
        self.down_since: float | None = None
        self.last_cycle = 0.0
        self.busy = False
        self.preparing = False
        self.abandoned = False
        self.patience = max(10.0, 2 * host.connect_timeout) + STOP_GRACE + 5
        """How long a cycle that only reads and starts may take before the link is taken for dead (a link that
        drops silently leaves a read waiting for TCP to give up, many minutes)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sweep-{host.name}")

    @property
    def usable(self) -> bool:
        return self.prepared and self.session is not None and self.fatal is None

    def free_slots(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.busy is None] if self.usable and self.accepts_new else []

    def submit(
        self, results: queue.Queue[Cycle], flights: Sequence[Flight], starts: Sequence[StartOrder]
    ) -> None:
        self.busy = True
        self.abandoned = False
        self.last_cycle = time.monotonic()
        self._executor.submit(self._cycle_into, results, list(flights), list(starts))

    def stalled(self, now: float) -> bool:
        """Whether the cycle under way has waited on the host longer than a live link would make it."""
        return (
            self.busy and not self.preparing and not self.abandoned and now - self.last_cycle > self.patience
        )

    def abandon(self) -> None:
        """Close the link under the waiting cycle (from the scheduler's thread): its read fails at once, and the
        lane reconnects as after any dropped link."""
        self.abandoned = True
        session = self.session
        if session is not None:
            with contextlib.suppress(Exception):
                session.connection.close()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.close()
            self.session = None

    # -- in the lane's thread

    def _cycle_into(
        self, results: queue.Queue[Cycle], flights: list[Flight], starts: list[StartOrder]
    ) -> None:
        cycle = Cycle(self, orders=starts)
        try:
            self._cycle(cycle, flights, starts)
        except BaseException as exc:
            cycle.error = exc
            if isinstance(exc, HostKeyChanged | HostKeyUnknown | AuthenticationFailed):
                cycle.fatal = str(exc)  # waiting mends none of these
            elif not self.prepared and isinstance(exc, GpuboxError) and not isinstance(exc, _TRANSIENT):
                cycle.fatal = str(exc)  # the env does not build, the sync refuses: every retry would too
            elif not isinstance(exc, Exception):
                cycle.fatal = f"stopped: {type(exc).__name__}"
            else:  # a dropped link, an agent that died, a host rebooting: away for now, not gone
                self._drop(cycle, exc)
        results.put(cycle)

    def _drop(self, cycle: Cycle, exc: BaseException) -> None:
        cycle.lost_link = str(exc) or type(exc).__name__
        if self.session is not None:
            with contextlib.suppress(Exception):
                self.session.close()
        self.session = None
        self.next_connect = time.monotonic() + self.delay
        self.delay = min(self.delay * 2, 15.0)

    def _cycle(self, cycle: Cycle, flights: list[Flight], starts: list[StartOrder]) -> None:
        if self.session is None or not self.prepared:
            self.preparing = True  # connecting and preparing take their own time (an env build: minutes)
            try:
                if self.session is None:
                    if time.monotonic() < self.next_connect:
                        return
                    self.session = self._connect(self.host)
                if not self.prepared:
                    self._prepare_host()
                    cycle.prepared = True
            finally:
                self.preparing = False
        self.delay = 0.5
        session = self.session
        for flight in flights:
            if (flight.prune or flight.stop_for_user) and not flight.stop_sent and flight.run_id is not None:
                with contextlib.suppress(UsageError):  # gone already: the poll below says so
                    stop_run(session, flight.run_id, grace_seconds=STOP_GRACE)
                cycle.stopped.append(flight.number)
        # A trial whose start is on its way has nothing to read yet.
        watched = [f for f in flights if f.run_id is not None or not f.verified]
        cycle.observations = self._observe(session, watched)
        for order in starts:
            cycle.started.append(self._start(session, order))

    def _prepare_host(self) -> None:
        from gpubox.remote.gpu import snapshot_from_probe
        from gpubox.remote.providers import host_price

        assert self.session is not None
        probe = self.session.refresh_probe()
        snapshot = snapshot_from_probe(probe.get("nvidia_smi") or {})
        self.gpus = [int(gpu.index) for gpu in snapshot.gpus if isinstance(gpu.index, int)]
        if snapshot.state == "gpus" and not self.gpus:
            self.gpus = list(range(len(snapshot.gpus)))
        if self.accepts_new:
            self.venv = self._prepare(self.session, self.host)
        if not self.slots:
            if self.gpus:
                self.slots = [Slot(self.name, gpu, k) for k in range(self.per_gpu) for gpu in self.gpus]
            else:
                self.slots = [Slot(self.name, None, 0)]
        self.host_usd_per_hour = host_price(self.host, probe).amount
        self.prepared = True

    def _observe(self, session: HostSession, flights: list[Flight]) -> list[Observation]:
        found: list[Observation] = []
        by_id = {f.run_id: f for f in flights if f.run_id is not None}
        rows: dict[str, calls.RunRow] = {}
        if by_id:
            try:
                rows = {row["id"]: row for row in calls.run_list(session.agent, ids=list(by_id))["runs"]}
            except UsageError:  # one of them is gone from the host: ask one by one to learn which
                for run_id in by_id:
                    with contextlib.suppress(UsageError):
                        rows.update(
                            {row["id"]: row for row in calls.run_list(session.agent, ids=[run_id])["runs"]}
                        )
        unnamed = [f for f in flights if f.run_id is None]
        if unnamed:
            by_name = {row.get("name"): row for row in calls.run_list(session.agent)["runs"]}
            for flight in unnamed:
                row = by_name.get(flight.run_name)
                if row is not None:
                    rows[row["id"]] = row
                    by_id[row["id"]] = flight
                else:
                    found.append(Observation(flight.number, None))
        for run_id, flight in by_id.items():
            row = rows.get(run_id)
            if row is None:
                found.append(Observation(flight.number, None))
                continue
            observation = Observation(flight.number, row)
            ended = row.get("state") not in ("starting", "running")
            offset = flight.reader.log_offset
            have = dict(flight.reader.scalar_counts)
            while True:
                answer, data = calls.dash(
                    session.agent,
                    gpu=False,
                    recent=0,
                    run=run_id,
                    log_offset=offset + len(observation.log),
                    scalars=have,
                    log_max=LOG_PIECE,
                )
                piece = answer.get("run")
                observation.log += data
                if piece is None:
                    break
                if observation.log_from is None:
                    observation.log_from = int(piece.get("offset", offset))
                    offset = observation.log_from
                for key, series in (piece.get("scalars") or {}).items():
                    merged = observation.scalars.setdefault(key, {"from": series["from"], "points": []})
                    merged["points"].extend(series["points"])
                    have[key] = series["from"] + len(series["points"])
                size = piece.get("size", 0)
                # An ended run's log is complete: read all of it, so its last value and line are never missed.
                if not ended or not data or offset + len(observation.log) >= size:
                    break
            found.append(observation)
        ended_rows = [
            o.row for o in found if o.row is not None and o.row.get("state") not in ("starting", "running")
        ]
        if ended_rows:
            # What `gpubox cost` and `gpubox runs` know without connecting: the trial's run as it ended.
            from gpubox.state import open_state

            with open_state() as state:
                state.cache_runs(self.name, [RunInfo.from_agent(self.name, row) for row in ended_rows])
        return found

    def _start(self, session: HostSession, order: StartOrder) -> Started:
        try:
            run = start_run(
                session,
                [order.shell],
                name=order.name,
                extra_env=order.env,
                venv=self.venv,
                outputs=self.outputs,
            )
        except _TRANSIENT:
            raise  # the link: the start may or may not have happened, the next cycle looks for it by name
        except (
            GpuboxError
        ) as exc:  # the host refused it (no project folder, ...): the trial fails, not the lane
            return Started(order.number, None, str(exc))
        from gpubox.state import open_state

        with open_state() as state:
            state.cache_runs(self.name, [run])
        return Started(order.number, run)
