"""The dashboard's data: what is up, what runs where, what it costs, as immutable snapshots. No Textual here.

Two kinds of reads feed one :class:`Dashboard` model:

- :func:`read_state` (the state database only, never the network): configured hosts, which gpubox process holds
  each, the supervisor's monitor report (autostop countdown, budgets, live sync status), tunnels, the billing
  ledger and the last probe (for the GPU compatibility badge).
- :class:`HostPoller`, one per host that is up: one agent round trip per refresh (the ``dash`` op) for the GPUs'
  utilisation and memory, the runs with their progress, and for the selected run its new log bytes and new
  TensorBoard scalar points. It keeps its own SSH session, reconnects with backoff, and when the host stops
  answering says since when.

The model merges both into a :class:`DashboardSnapshot` (nvitop style: a metric nobody reported is ``None``,
shown as N/A, never an exception) and into :class:`Event` notifications (a run ended, a budget threshold, autostop
about to fire, a sync conflict, a host lost). It keeps the short GPU history the sparklines draw, the selected
run's log lines and its curves. The model is used from one thread (the UI's); the readers run anywhere.
"""

from __future__ import annotations

import collections
import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpubox.errors import GpuboxError
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.state import BillingInterval
    from gpubox.train.runs import RunInfo

__all__ = [
    "Curve",
    "Dashboard",
    "DashboardSnapshot",
    "Event",
    "GpuView",
    "HostPoller",
    "HostSample",
    "HostState",
    "HostView",
    "PollRequest",
    "RunView",
    "SelectedRun",
    "StateSample",
    "SyncView",
    "TunnelView",
    "curve_groups",
    "read_state",
]

HISTORY = 120
"""GPU samples kept per GPU for the sparklines (a few minutes at the default refresh)."""
LOG_LINES = 5000
"""Lines of the selected run's log the dashboard keeps."""
RECENT_FINISHED = 10
"""Finished runs shown per host, next to every run still going."""
AUTOSTOP_WARN_SECONDS = 60.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x00-\x08\x0b\x0c\x0e-\x1f]")


# ---------------------------------------------------------------------------------------------- views


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str
    util_percent: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    util_history: tuple[float, ...] = ()
    memory_history: tuple[float, ...] = ()
    """Memory used in % of the total, oldest first."""

    @property
    def memory_percent(self) -> float | None:
        if self.memory_used_mib is None or not self.memory_total_mib:
            return None
        return 100.0 * self.memory_used_mib / self.memory_total_mib


@dataclass(frozen=True)
class SyncView:
    """The supervisor's live sync, as its last monitor report told."""

    watching: bool
    batches: int = 0
    last_files: int | None = None
    last_ms: float | None = None
    last_at: float | None = None
    pending: int = 0
    conflicts: int = 0
    held_back: int = 0
    errors: int = 0
    recent_errors: tuple[str, ...] = ()
    recent_conflicts: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, document: Mapping[str, Any]) -> SyncView:
        last = document.get("last") or {}
        return cls(
            watching=bool(document.get("watching")),
            batches=int(document.get("batches") or 0),
            last_files=_int(last.get("files")),
            last_ms=_float(last.get("ms")),
            last_at=_float(last.get("at")),
            pending=int(document.get("pending") or 0),
            conflicts=int(document.get("conflicts") or 0),
            held_back=int(document.get("held_back") or 0),
            errors=int(document.get("errors") or 0),
            recent_errors=tuple(str(e) for e in document.get("recent_errors") or ()),
            recent_conflicts=tuple(str(c) for c in document.get("recent_conflicts") or ()),
        )

    def text(self) -> str:
        """``watching · last batch 3 files in 12 ms · 0 pending · 0 conflicts · 1 held back · 0 errors``."""
        parts = ["watching" if self.watching else "rescanning (not watching)"]
        if self.last_files is not None and self.last_ms is not None:
            files = f"{self.last_files} file{'' if self.last_files == 1 else 's'}"
            parts.append(f"last batch {files} in {self.last_ms:.0f} ms")
        parts += [
            f"{self.pending} pending",
            f"{self.conflicts} conflict{'' if self.conflicts == 1 else 's'}",
            f"{self.held_back} held back",
            f"{self.errors} error{'' if self.errors == 1 else 's'}",
        ]
        return " · ".join(parts)


@dataclass(frozen=True)
class TunnelView:
    host: str
    service: str
    local_port: int
    url: str
    """Jupyter's token redacted: the open action fetches it."""


@dataclass(frozen=True)
class HostView:
    name: str
    provider: str
    state: str
    """``up``, ``connecting``, ``unreachable`` (held, but not answering), ``down`` (nobody holds it)."""
    configured: bool = True
    endpoint: str | None = None
    held_by: int | None = None
    gpus: tuple[GpuView, ...] = ()
    gpu_label: str = "N/A"
    verdict: str = "unknown"
    """``ok``, ``warn``, ``fail``, ``cpu`` (no NVIDIA GPU: runs on CPU) or ``unknown`` (not probed yet)."""
    verdict_text: str = ""
    verdict_reasons: tuple[str, ...] = ()
    price_per_hour: float | None = None
    price_estimate: bool = False
    price_source: str = ""
    up_seconds: float | None = None
    spent_usd: float = 0.0
    budget_usd: float | None = None
    budget_percent: float | None = None
    budget_scope: str | None = None
    autostop_text: str = ""
    autostop_seconds: float | None = None
    """Seconds until autostop fires while it counts down; None otherwise."""
    autostop_state: str | None = None
    unreachable_since: float | None = None
    problem: str | None = None
    sync: SyncView | None = None
    tunnels: tuple[TunnelView, ...] = ()
    sampled_at: float | None = None

    @property
    def is_up(self) -> bool:
        return self.state != "down"

    @property
    def util_percent(self) -> float | None:
        """Mean utilisation over the host's GPUs (None without GPU figures)."""
        values = [g.util_percent for g in self.gpus if g.util_percent is not None]
        return sum(values) / len(values) if values else None

    @property
    def util_history(self) -> tuple[float, ...]:
        return _mean_history([g.util_history for g in self.gpus])

    @property
    def memory_history(self) -> tuple[float, ...]:
        return _mean_history([g.memory_history for g in self.gpus])

    @property
    def memory_used_mib(self) -> float | None:
        values = [g.memory_used_mib for g in self.gpus if g.memory_used_mib is not None]
        return sum(values) if values else None

    @property
    def memory_total_mib(self) -> float | None:
        values = [g.memory_total_mib for g in self.gpus if g.memory_total_mib is not None]
        return sum(values) if values else None


@dataclass(frozen=True)
class RunView:
    host: str
    id: str
    command: str
    state: str
    name: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    elapsed_seconds: float | None = None
    cost_usd: float | None = None
    cost_estimate: bool = False
    epoch: int | None = None
    epochs: int | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    metric: tuple[str, float] | None = None
    """The first metric that is not a loss (accuracy when there is one) and its last value."""
    mine: bool = True
    """False for a run of another project that happens to run on the same host."""

    @property
    def key(self) -> str:
        return f"{self.host}/{self.id}"

    @property
    def finished(self) -> bool:
        return self.state in ("succeeded", "failed", "stopped", "lost")


@dataclass(frozen=True)
class Curve:
    tag: str
    """``train/epoch_loss``, ``validation/epoch_accuracy``, ``custom/val_error_rate``..."""
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class SelectedRun:
    host: str
    run_id: str
    command: str = ""
    state: str = "unknown"
    lines: tuple[str, ...] = ()
    first_line: int = 0
    """How many lines came before ``lines[0]`` (dropped to keep the buffer small, or before the tail)."""
    log_bytes: int = 0
    curves: tuple[Curve, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.host}/{self.run_id}"


@dataclass(frozen=True)
class Event:
    kind: str
    """``run-succeeded``, ``run-failed``, ``run-stopped``, ``budget``, ``autostop``, ``conflict``, ``sync-error``,
    ``unreachable``, ``reconnected``."""
    title: str
    message: str
    severity: str = "information"
    """``information``, ``warning`` or ``error`` (Textual's notification severities)."""


@dataclass(frozen=True)
class DashboardSnapshot:
    at: float
    project: str
    hosts: tuple[HostView, ...] = ()
    runs: tuple[RunView, ...] = ()
    selected: SelectedRun | None = None
    total_budget_usd: float | None = None
    total_spent_usd: float = 0.0
    problems: tuple[str, ...] = ()

    @property
    def tunnels(self) -> tuple[TunnelView, ...]:
        return tuple(t for h in self.hosts for t in h.tunnels)

    @property
    def per_hour(self) -> float:
        return sum(h.price_per_hour or 0.0 for h in self.hosts if h.is_up)

    def host(self, name: str) -> HostView | None:
        return next((h for h in self.hosts if h.name == name), None)

    def run(self, host: str, run_id: str) -> RunView | None:
        return next((r for r in self.runs if r.host == host and r.id == run_id), None)


def curve_groups(curves: Sequence[Curve]) -> list[tuple[str, list[Curve]]]:
    """Curves grouped for plotting, one plot per metric: ``loss`` (train and validation together) first, then
    accuracy, then the rest in name order."""
    groups: dict[str, list[Curve]] = {}
    for curve in curves:
        name = curve.tag.rsplit("/", 1)[-1]
        name = name[len("epoch_") :] if name.startswith("epoch_") else name
        groups.setdefault(name, []).append(curve)

    def order(name: str) -> tuple[int, str]:
        return (0 if name == "loss" else 1 if name == "accuracy" else 2, name)

    return [(name, groups[name]) for name in sorted(groups, key=order)]


# ---------------------------------------------------------------------------------------- state reads


@dataclass(frozen=True)
class HostState:
    """One host as the state database knows it (no network)."""

    name: str
    provider: str
    configured: bool
    held_by: int | None = None
    held_since: float | None = None
    endpoint: str | None = None
    probed_at: float | None = None
    gpu_label: str = "not probed yet"
    verdict: str = "unknown"
    verdict_text: str = ""
    verdict_reasons: tuple[str, ...] = ()
    price_per_hour: float | None = None
    price_estimate: bool = False
    price_source: str = ""
    intervals: tuple[BillingInterval, ...] = ()
    report: Mapping[str, Any] | None = None
    """The supervisor's last monitor report (autostop, budgets, sync)."""
    report_at: float | None = None
    autostop_minutes: float = 0.0
    budget_usd: float | None = None
    tunnels: tuple[TunnelView, ...] = ()


@dataclass(frozen=True)
class StateSample:
    at: float
    hosts: tuple[HostState, ...]
    alerts: tuple[tuple[str, int, float, float, float], ...] = ()
    total_budget_usd: float | None = None
    problems: tuple[str, ...] = ()


_verdicts: dict[tuple[str, float | None, str], tuple[str, str, str, tuple[str, ...]]] = {}


def _verdict(
    name: str, probe: Mapping[str, Any] | None, probed_at: float | None, requirements: tuple[str, str] | None
) -> tuple[str, str, str, tuple[str, ...]]:
    """(GPU label, badge, one-line summary, reasons) from a probe; cached per probe."""
    key = (name, probed_at, requirements[1] if requirements else "")
    if key in _verdicts:
        return _verdicts[key]
    if not probe:
        found: tuple[str, str, str, tuple[str, ...]] = ("not probed yet", "unknown", "", ())
    else:
        from gpubox.remote import gpu

        snapshot = gpu.snapshot_from_probe(probe.get("nvidia_smi") or {})
        if snapshot.state == "no_nvidia_smi":
            text = gpu.gpu_line_text(snapshot)
            found = ("none (CPU)", "cpu", text, (text,))
        else:
            try:
                result = gpu.run_check(snapshot, host=name, requirements=requirements)
            except GpuboxError as exc:
                found = (gpu.gpu_line_text(snapshot), "unknown", str(exc), (str(exc),))
            else:
                names = sorted({g.name for g in snapshot.gpus})
                label = (
                    f"{len(snapshot.gpus)}× {names[0] if len(names) == 1 else 'mixed'}"
                    if snapshot.gpus
                    else "no usable GPU"
                )
                summary = gpu.verdict_summary(snapshot, result.choice.release, result.verdict)
                found = (label, result.verdict.level, summary, tuple(result.verdict.reasons))
    _verdicts[key] = found
    return found


def read_state(hosts: HostsConfig, project: ProjectConfig, now: float | None = None) -> StateSample:
    """Everything the dashboard shows that the state database knows: never connects."""
    from gpubox.actions import requirements_file, service_url
    from gpubox.cost import hourly_price
    from gpubox.state import live_tunnels, open_state

    now = time.time() if now is None else now
    problems: list[str] = []
    try:
        requirements = requirements_file(project)
    except GpuboxError as exc:
        requirements = None
        problems.append(str(exc))
    found: list[HostState] = []
    with open_state() as state:
        held = {s.host: s for s in state.supervisors()}
        ledger = state.billing()
        by_host: dict[str, list[BillingInterval]] = {}
        for interval in ledger:
            by_host.setdefault(interval.host, []).append(interval)
        tunnels = live_tunnels(state)
        names = list(hosts.hosts) + sorted(name for name in held if name not in hosts.hosts)
        for name in names:
            config = hosts.hosts.get(name)
            record = state.host(name)
            supervisor = held.get(name)
            probe = record.probe if record else None
            label, verdict, summary, reasons = _verdict(
                name, probe, record.probed_at if record else None, requirements
            )
            intervals = tuple(by_host.get(name, ()))
            open_interval = next((i for i in reversed(intervals) if i.open), None)
            amount: float | None
            if open_interval is not None and open_interval.price_per_hour is not None:
                amount, source, estimate = (
                    open_interval.price_per_hour,
                    open_interval.price_source or "",
                    open_interval.estimate,
                )
            elif config is not None:
                price = hourly_price(config, probe)
                amount, source, estimate = price.amount, price.source, price.estimate
            else:
                amount, source, estimate = None, "not in hosts.toml any more", False
            monitor = state.monitor(name) if supervisor is not None else None
            views = tuple(
                TunnelView(
                    host=name,
                    service=str(row["service"]),
                    local_port=int(row["local_port"]),
                    url=service_url(config, None, row, show_secret=False)
                    if config is not None
                    else f"http://127.0.0.1:{row['local_port']}{row['path']}",
                )
                for row in tunnels
                if row["host"] == name
            )
            found.append(
                HostState(
                    name=name,
                    provider=config.provider if config else (record.provider if record else "?"),
                    configured=config is not None,
                    held_by=supervisor.pid if supervisor else None,
                    held_since=supervisor.started_at if supervisor else None,
                    endpoint=record.endpoint if record else None,
                    probed_at=record.probed_at if record else None,
                    gpu_label=label,
                    verdict=verdict,
                    verdict_text=summary,
                    verdict_reasons=reasons,
                    price_per_hour=amount,
                    price_estimate=estimate,
                    price_source=source,
                    intervals=intervals,
                    report=monitor[1] if monitor else None,
                    report_at=monitor[0] if monitor else None,
                    autostop_minutes=config.autostop_minutes if config else 0.0,
                    budget_usd=config.budget_usd if config else None,
                    tunnels=views,
                )
            )
        alerts = tuple(state.budget_alerts())
    return StateSample(
        at=now,
        hosts=tuple(found),
        alerts=alerts,
        total_budget_usd=hosts.total_budget_usd,
        problems=tuple(problems),
    )


# -------------------------------------------------------------------------------------------- polling


@dataclass(frozen=True)
class PollRequest:
    """What one refresh asks a host for, beyond its GPUs and runs."""

    run: str | None = None
    log_offset: int | None = None
    """Next log byte wanted; None for the first look (the host sends the log's tail)."""
    scalars: Mapping[str, int] = field(default_factory=dict)
    """Points the dashboard already has, per tag."""
    recent: int = RECENT_FINISHED


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    util_percent: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None


@dataclass(frozen=True)
class HostSample:
    """One refresh of one host."""

    host: str
    at: float
    ok: bool
    gpus: tuple[GpuReading, ...] = ()
    gpu_note: str = ""
    runs: tuple[RunInfo, ...] = ()
    others: frozenset[str] = frozenset()
    """Ids of listed runs that belong to other projects (running on the same host)."""
    run: str | None = None
    log_offset: int = 0
    log_size: int = 0
    log: bytes = b""
    scalars: Mapping[str, tuple[int, tuple[tuple[float, float], ...]]] = field(default_factory=dict)
    """tag -> (index of the first point, new points)."""
    error: str | None = None
    unreachable_since: float | None = None
    connecting: bool = False


def parse_gpus(smi: Mapping[str, Any] | None) -> tuple[tuple[GpuReading, ...], str]:
    """The GPUs in the ``dash`` op's nvidia-smi answer, and a few words when there are none."""
    if not smi:
        return (), "not sampled"
    if not smi.get("available"):
        reason = str(smi.get("reason") or "nvidia-smi gave no answer")
        return (), "no GPU" if "not found" in reason else reason
    from gpubox.remote.gpu import parse_nvidia_smi

    snapshot = parse_nvidia_smi(str(smi.get("output") or ""))
    if snapshot.state != "gpus":
        return (), snapshot.message or snapshot.state
    return (
        tuple(
            GpuReading(
                index=g.index,
                name=g.name,
                util_percent=_number(g.utilization_gpu_percent),
                memory_used_mib=_number(g.memory_used_mib),
                memory_total_mib=_number(g.memory_total_mib),
            )
            for g in snapshot.gpus
        ),
        "",
    )


class HostPoller:
    """Polls one host with one agent round trip per refresh, over a session of its own.

    A host that stops answering is retried with backoff (1 s doubling to 30 s) while its last failure is
    reported as ``unreachable since``; :meth:`poll` never raises for a lost link, so one dead host never stops
    the others' refreshes. Not thread-safe: one poll at a time (the dashboard's polls never overlap).
    """

    def __init__(
        self,
        host: HostConfig,
        project_name: str,
        *,
        connect: Callable[[], HostSession] | None = None,
        clock: Callable[[], float] = time.time,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.host = host
        self.project_name = project_name
        self._connect = connect or self._connect_host
        self.clock = clock
        self.session: HostSession | None = None
        self.unreachable_since: float | None = None
        self.error: str | None = None
        self.next_attempt = 0.0
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.delay = initial_backoff
        self.gpu = True

    def _connect_host(self) -> HostSession:
        from gpubox.remote.session import connect_host

        # Never launches anything: the dashboard watches what is up, `up` starts hosts.
        return connect_host(self.host, self.project_name, probe=False, launch=False)

    def poll(self, request: PollRequest) -> HostSample:
        from gpubox.train.runs import RunInfo

        now = self.clock()
        if self.session is None:
            if now < self.next_attempt:
                return self._failed(now, self.error or "reconnecting")
            try:
                self.session = self._connect()
            except Exception as exc:  # any failure to connect is "unreachable", never a crash
                return self._lost(now, exc)
        args: dict[str, Any] = {
            "gpu": self.gpu,
            "recent": request.recent,
            # Finished runs of this project only; running ones of any (they all use the host).
            "project": self.host.remote_project_dir(self.project_name),
        }
        if request.run is not None:
            args.update(
                run=request.run,
                log_offset=request.log_offset,
                scalars=dict(request.scalars),
                log_tail=65536,
                log_max=262144,
            )
        try:
            answer, blob = calls.dash(self.session.agent, **args)
        except GpuboxError as exc:
            if "unknown op" in str(exc):
                raise GpuboxError(
                    f"the agent on {self.host.name} is older than this dashboard: {exc}"
                ) from None
            return self._lost(now, exc)
        except Exception as exc:  # paramiko and socket errors: the link is gone
            return self._lost(now, exc)
        if self.unreachable_since is not None:
            self.unreachable_since = None
            self.error = None
        self.delay = self.initial_backoff
        gpus, note = parse_gpus(answer.get("nvidia_smi"))
        if not gpus and "no GPU" in note:
            self.gpu = False  # a CPU host stays one: stop asking nvidia-smi every refresh
        rows = answer.get("runs") or ()
        runs = tuple(RunInfo.from_agent(self.host.name, row) for row in rows)
        others = frozenset(str(row["id"]) for row in rows if row.get("mine") is False)
        run = answer.get("run") or None
        scalars: dict[str, tuple[int, tuple[tuple[float, float], ...]]] = {}
        if run:
            for tag, part in (run.get("scalars") or {}).items():
                points = tuple((float(p[0]), float(p[1])) for p in part.get("points") or ())
                scalars[str(tag)] = (int(part.get("from") or 0), points)
        return HostSample(
            host=self.host.name,
            at=now,
            ok=True,
            gpus=gpus,
            gpu_note=note,
            runs=runs,
            others=others,
            run=str(run["id"]) if run else None,
            log_offset=int(run.get("offset") or 0) if run else 0,
            log_size=int(run.get("size") or 0) if run else 0,
            log=blob if run else b"",
            scalars=scalars,
        )

    def _lost(self, now: float, exc: BaseException) -> HostSample:
        self.close()
        if self.unreachable_since is None:
            self.unreachable_since = now
        self.error = str(exc) or type(exc).__name__
        self.next_attempt = now + self.delay
        self.delay = min(self.max_backoff, self.delay * 2)
        return self._failed(now, self.error)

    def _failed(self, now: float, error: str) -> HostSample:
        return HostSample(
            host=self.host.name,
            at=now,
            ok=False,
            error=error,
            unreachable_since=self.unreachable_since,
        )

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            with contextlib.suppress(Exception):
                session.close()


# ---------------------------------------------------------------------------------------------- model


class _Log:
    """The selected run's log as lines: complete lines kept (at most :data:`LOG_LINES`), the partial last one
    held back until its newline arrives."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.total = 0
        self.partial = b""
        self.offset: int | None = None
        self.size = 0
        self.first = 0

    def feed(self, offset: int, data: bytes, size: int) -> None:
        if self.offset is None:
            self.first = 0
        elif offset != self.offset:
            # The host sent from elsewhere (the log was replaced or we asked past its end): start over there.
            self.lines.clear()
            self.total = 0
            self.partial = b""
        self.size = size
        text = self.partial + data
        complete = text.rfind(b"\n") + 1
        self.partial = text[complete:]
        for raw in text[:complete].split(b"\n")[:-1]:
            line = raw.decode("utf-8", "replace")
            if "\r" in line:
                line = line.rstrip("\r").rsplit("\r", 1)[
                    -1
                ]  # a progress bar redrawn in place: its last state
            self.lines.append(_ANSI.sub("", line))
            self.total += 1
        self.offset = offset + len(data)

    @property
    def dropped(self) -> int:
        return self.total - len(self.lines)


class Dashboard:
    """The dashboard's model: feed it state reads and host samples, take snapshots and events."""

    def __init__(
        self,
        hosts: HostsConfig,
        project: ProjectConfig,
        *,
        clock: Callable[[], float] = time.time,
        history: int = HISTORY,
    ) -> None:
        self.hosts = hosts
        self.project = project
        self.clock = clock
        self.history = history
        self.state: StateSample | None = None
        self.samples: dict[str, HostSample] = {}
        self._runs: dict[str, tuple[RunInfo, ...]] = {}
        self._others: dict[str, frozenset[str]] = {}
        self._gpu_history: dict[
            tuple[str, int], tuple[collections.deque[float], collections.deque[float]]
        ] = {}
        self.selected: tuple[str, str] | None = None
        self.selection = 0
        """Counts selection changes, so an answer to a poll asked for before the last one is told apart."""
        self.selected_missing = False
        """The selected run's host answered (since it was selected) without listing it: it is gone."""
        self._log = _Log()
        self._scalars: dict[str, list[tuple[float, float]]] = {}
        self._events: list[Event] = []
        self._finished_views: dict[tuple[str, str, str, float | None, int], RunView] = {}
        self._run_states: dict[str, str] = {}
        self._watching_since: dict[str, float] = {}
        """When each host first answered: runs that end after it are told of."""
        self._alerts_seen: set[tuple[str, int, float]] | None = None
        self._autostop_warned: set[str] = set()
        self._conflicts: dict[str, int] = {}
        self._sync_errors: dict[str, int] = {}
        self._unreachable: set[str] = set()

    # -- feeding

    def apply_state(self, sample: StateSample) -> None:
        self.state = sample
        alerts = {(scope, threshold, budget) for scope, threshold, budget, _s, _a in sample.alerts}
        if self._alerts_seen is None:
            self._alerts_seen = alerts  # warnings given before the dashboard opened are old news
        for scope, threshold, budget, spent, _at in sample.alerts:
            if (scope, threshold, budget) in self._alerts_seen:
                continue
            self._alerts_seen.add((scope, threshold, budget))
            from gpubox.cost import format_usd

            whose = "all hosts" if scope == "*" else scope
            self._events.append(
                Event(
                    "budget",
                    f"budget {threshold} %",
                    f"{whose} reached {threshold} % of {format_usd(budget)} ({format_usd(spent)} spent)",
                    "error" if threshold >= 100 else "warning",
                )
            )
        held = {h.name for h in sample.hosts if h.held_by is not None}
        for gone in [name for name in self.samples if name not in held]:
            del self.samples[gone]
            self._runs.pop(gone, None)
            self._unreachable.discard(gone)
        for host in sample.hosts:
            report = host.report or {}
            sync = report.get("sync") or None
            if sync:
                conflicts = int(sync.get("conflicts") or 0)
                before = self._conflicts.get(host.name, conflicts)
                if conflicts > before:
                    recent = sync.get("recent_conflicts") or []
                    self._events.append(
                        Event(
                            "conflict",
                            f"sync conflict on {host.name}",
                            _conflict_text(str(recent[-1]))
                            if recent
                            else f"{conflicts - before} conflict(s): the host's copies were kept",
                            "warning",
                        )
                    )
                self._conflicts[host.name] = conflicts
                errors = int(sync.get("errors") or 0)
                before = self._sync_errors.get(host.name, errors)
                if errors > before:
                    recent = sync.get("recent_errors") or []
                    self._events.append(
                        Event(
                            "sync-error",
                            f"sync problem on {host.name}",
                            str(recent[-1]) if recent else "see the supervisor's log",
                            "warning",
                        )
                    )
                self._sync_errors[host.name] = errors
            autostop = report.get("autostop") or None
            remaining = self._autostop_remaining(autostop, sample.at)
            if remaining is not None and remaining <= AUTOSTOP_WARN_SECONDS:
                if host.name not in self._autostop_warned:
                    self._autostop_warned.add(host.name)
                    self._events.append(
                        Event(
                            "autostop",
                            f"{host.name} stops in {int(remaining)} s",
                            f"idle: autostop will {autostop.get('action', 'stop it') if autostop else 'stop it'}"
                            " (start a run or sync a change to keep it)",
                            "warning",
                        )
                    )
            else:
                self._autostop_warned.discard(host.name)

    def apply_host(self, sample: HostSample, *, selection: int | None = None) -> None:
        """Feed one host's refresh; *selection* is :attr:`selection` when it was asked for (its log and curves
        are dropped if another run was selected since)."""
        self.samples[sample.host] = sample
        if not sample.ok:
            if sample.host not in self._unreachable:
                self._unreachable.add(sample.host)
                self._events.append(
                    Event(
                        "unreachable",
                        f"{sample.host} is not answering",
                        f"{sample.error or 'no answer'}; retrying (the other hosts keep updating)",
                        "error",
                    )
                )
            return
        if sample.host in self._unreachable:
            self._unreachable.discard(sample.host)
            self._events.append(Event("reconnected", f"{sample.host} answers again", "reconnected"))
        for gpu in sample.gpus:
            util, memory = self._gpu_history.setdefault(
                (sample.host, gpu.index),
                (collections.deque(maxlen=self.history), collections.deque(maxlen=self.history)),
            )
            if gpu.util_percent is not None:
                util.append(gpu.util_percent)
            if gpu.memory_used_mib is not None and gpu.memory_total_mib:
                memory.append(100.0 * gpu.memory_used_mib / gpu.memory_total_mib)
        self._runs[sample.host] = sample.runs
        self._others[sample.host] = sample.others
        watching_since = self._watching_since.setdefault(sample.host, sample.at)
        for run in sample.runs:
            key = f"{sample.host}/{run.id}"
            before = self._run_states.get(key)
            self._run_states[key] = run.state
            if not run.finished or before in ("succeeded", "failed", "stopped", "lost"):
                continue
            # It ended: while it was seen running, or unseen but after the dashboard started watching (a run
            # that lasted less than a refresh).
            if before is not None or (run.ended_at is not None and run.ended_at >= watching_since):
                self._events.append(_run_event(run))
        current = selection is None or selection == self.selection
        if current and self.selected is not None and self.selected[0] == sample.host:
            self.selected_missing = not any(run.id == self.selected[1] for run in sample.runs)
        if current and self.selected == (sample.host, sample.run):
            self._log.feed(sample.log_offset, sample.log, sample.log_size)
            for tag, (start, points) in sample.scalars.items():
                have = self._scalars.setdefault(tag, [])
                del have[start:]
                have.extend(points)

    def select_run(self, host: str | None, run_id: str | None) -> bool:
        """Follow another run's log and curves; False when it already was the selected one."""
        wanted = (host, run_id) if host is not None and run_id is not None else None
        if wanted == self.selected:
            return False
        self.selected = wanted
        self.selection += 1
        self.selected_missing = False
        self._log = _Log()
        self._scalars = {}
        return True

    def request_for(self, host: str) -> PollRequest:
        if self.selected is None or self.selected[0] != host:
            return PollRequest()
        return PollRequest(
            run=self.selected[1],
            log_offset=self._log.offset,
            scalars={tag: len(points) for tag, points in self._scalars.items()},
        )

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def polled_hosts(self) -> list[str]:
        """The hosts a poller should watch: those a gpubox process holds up."""
        if self.state is None:
            return []
        return [h.name for h in self.state.hosts if h.held_by is not None]

    # -- snapshots

    @staticmethod
    def _autostop_remaining(autostop: Mapping[str, Any] | None, now: float) -> float | None:
        if not autostop or autostop.get("state") != "counting" or autostop.get("stops_at") is None:
            return None
        return max(0.0, float(autostop["stops_at"]) - now)

    def snapshot(self) -> DashboardSnapshot:
        from gpubox.actions import autostop_text
        from gpubox.cost import budgets_for, host_spend, run_cost

        now = self.clock()
        state = self.state
        if state is None:
            return DashboardSnapshot(at=now, project=self.project.name)
        ledger = [i for h in state.hosts for i in h.intervals]
        hosts: list[HostView] = []
        runs: list[RunView] = []
        total_spent = 0.0
        for host in state.hosts:
            sample = self.samples.get(host.name)
            config = self.hosts.hosts.get(host.name)
            spend = host_spend(host.intervals, now)
            total_spent += spend.spent_usd
            budget = None
            if config is not None:
                found = budgets_for(config, self.hosts, ledger, now)
                budget = found[0] if found else None
            report = host.report or {}
            autostop = dict(report["autostop"]) if report.get("autostop") else None
            remaining = self._autostop_remaining(autostop, now)
            if autostop is not None and autostop.get("stops_at") is not None:
                autostop["remaining_seconds"] = max(0.0, float(autostop["stops_at"]) - now)
            if host.held_by is None:
                phase = "down"
            elif sample is None:
                phase = "connecting"
            elif not sample.ok:
                phase = "unreachable"
            else:
                phase = "up"
            gpus: tuple[GpuView, ...] = ()
            if sample is not None and sample.ok:
                gpus = tuple(self._gpu_view(host.name, g) for g in sample.gpus)
            elif sample is not None:
                gpus = self._last_gpus(host.name)
            hosts.append(
                HostView(
                    name=host.name,
                    provider=host.provider,
                    state=phase,
                    configured=host.configured,
                    endpoint=host.endpoint,
                    held_by=host.held_by,
                    gpus=gpus,
                    gpu_label=host.gpu_label,
                    verdict=host.verdict,
                    verdict_text=host.verdict_text,
                    verdict_reasons=host.verdict_reasons,
                    price_per_hour=host.price_per_hour,
                    price_estimate=host.price_estimate,
                    price_source=host.price_source,
                    up_seconds=None if host.held_since is None else max(0.0, now - host.held_since),
                    spent_usd=spend.spent_usd,
                    budget_usd=budget.budget_usd if budget else None,
                    budget_percent=budget.percent if budget else None,
                    budget_scope=budget.scope if budget else None,
                    autostop_text=autostop_text(autostop, host.autostop_minutes) if host.held_by else "",
                    autostop_seconds=remaining,
                    autostop_state=autostop.get("state") if autostop else None,
                    unreachable_since=sample.unreachable_since if sample is not None else None,
                    problem=sample.error if sample is not None and not sample.ok else None,
                    sync=SyncView.from_report(report["sync"]) if report.get("sync") else None,
                    tunnels=host.tunnels if host.held_by is not None else (),
                    sampled_at=sample.at if sample is not None else None,
                )
            )
            others = self._others.get(host.name, frozenset())
            for run in self._runs.get(host.name, ()):
                mine = run.id not in others
                if run.finished:
                    # An ended run's row never changes: build it once (a host may list hundreds).
                    key = (host.name, run.id, run.state, run.ended_at, len(host.intervals))
                    view = self._finished_views.get(key)
                    if view is None:
                        view = self._run_view(run, host.intervals, now, run_cost, mine)
                        self._finished_views[key] = view
                    runs.append(view)
                else:
                    runs.append(self._run_view(run, host.intervals, now, run_cost, mine))
        selected = None
        if self.selected is not None:
            host_name, run_id = self.selected
            shown = next((r for r in runs if r.host == host_name and r.id == run_id), None)
            selected = SelectedRun(
                host=host_name,
                run_id=run_id,
                command=shown.command if shown else "",
                state=shown.state if shown else "unknown",
                lines=tuple(self._log.lines),
                first_line=self._log.dropped,
                log_bytes=self._log.size,
                curves=tuple(Curve(tag, tuple(points)) for tag, points in sorted(self._scalars.items())),
            )
        return DashboardSnapshot(
            at=now,
            project=self.project.name,
            hosts=tuple(hosts),
            runs=tuple(runs),
            selected=selected,
            total_budget_usd=state.total_budget_usd,
            total_spent_usd=total_spent,
            problems=state.problems,
        )

    def _gpu_view(self, host: str, gpu: GpuReading) -> GpuView:
        util, memory = self._gpu_history.get((host, gpu.index), ((), ()))
        return GpuView(
            index=gpu.index,
            name=gpu.name,
            util_percent=gpu.util_percent,
            memory_used_mib=gpu.memory_used_mib,
            memory_total_mib=gpu.memory_total_mib,
            util_history=tuple(util),
            memory_history=tuple(memory),
        )

    def _last_gpus(self, host: str) -> tuple[GpuView, ...]:
        """While a host does not answer: its GPUs with their history, but no current figure."""
        return tuple(
            GpuView(index, "", None, None, None, tuple(util), tuple(memory))
            for (name, index), (util, memory) in sorted(self._gpu_history.items())
            if name == host
        )

    @staticmethod
    def _run_view(
        run: RunInfo,
        intervals: Sequence[BillingInterval],
        now: float,
        run_cost: Callable[..., Any],
        mine: bool = True,
    ) -> RunView:
        progress = run.progress or {}
        metrics = progress.get("metrics") or {}
        cost = None
        estimate = False
        if run.started_at is not None:
            priced = run_cost(
                run.started_at, run.ended_at if run.ended_at is not None else now, {run.host: intervals}
            )
            cost = priced.total_usd
            estimate = priced.estimate
        return RunView(
            host=run.host,
            id=run.id,
            command=run.command,
            state=run.state,
            name=run.name,
            started_at=run.started_at,
            ended_at=run.ended_at,
            exit_code=run.exit_code,
            elapsed_seconds=run.duration(now),
            cost_usd=cost if intervals else None,
            cost_estimate=estimate,
            epoch=_int(progress.get("epoch")),
            epochs=_int(progress.get("epochs")),
            eta_seconds=_float(progress.get("eta_seconds")),
            loss=_float(metrics.get("loss")),
            metric=_metric(metrics),
            mine=mine,
        )


# --------------------------------------------------------------------------------------------- helpers


def _conflict_text(entry: str) -> str:
    """``notes.txt -> notes.txt.gpubox-conflict-…`` (as sync reports it) in words."""
    path, arrow, kept = entry.partition(" -> ")
    if not arrow:
        return f"the host's copy was kept as {entry}"
    return f"{path} changed on the host and here: the host's copy was kept as {kept}"


def _run_event(run: RunInfo) -> Event:
    from gpubox.cost import format_duration

    took = format_duration(run.duration() or 0)
    if run.state == "succeeded":
        return Event("run-succeeded", f"{run.id} finished", f"{run.command} on {run.host} ({took})")
    if run.state == "stopped":
        return Event("run-stopped", f"{run.id} stopped", f"{run.command} on {run.host} ({took})", "warning")
    code = "" if run.exit_code is None else f" with exit code {run.exit_code}"
    return Event(
        "run-failed", f"{run.id} {run.state}{code}", f"{run.command} on {run.host} ({took})", "error"
    )


def _metric(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    names = [k for k in metrics if "loss" not in k and not k.startswith("val_")]
    if not names:
        return None
    name = "accuracy" if "accuracy" in names else sorted(names)[0]
    value = _float(metrics.get(name))
    return None if value is None else (name, value)


def _mean_history(histories: Sequence[Sequence[float]]) -> tuple[float, ...]:
    histories = [h for h in histories if h]
    if not histories:
        return ()
    length = min(len(h) for h in histories)
    return tuple(sum(h[len(h) - length + i] for h in histories) / len(histories) for i in range(length))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
