"""What the dashboard shows, as immutable records: hosts, their GPUs, runs, the selected run's log and curves,
live sync, tunnels, notifications, and the :class:`DashboardSnapshot` that holds them all.

nvitop style: a figure nobody reported is ``None`` (shown as N/A), never an exception. No Textual, no I/O here:
:mod:`gpubox.dashboard.read` and :mod:`gpubox.dashboard.poller` gather the data, :mod:`gpubox.dashboard.model`
merges it into these records, :mod:`gpubox.tui` draws them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "Curve",
    "DashboardSnapshot",
    "Event",
    "GpuView",
    "HostFacts",
    "HostView",
    "RunView",
    "SelectedRun",
    "SyncView",
    "TunnelView",
    "as_float",
    "as_int",
    "curve_groups",
    "curve_metric",
    "curve_name",
]


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
    held_deletions: int = 0
    """Deletions held back because they look like a wipe (the ``x`` key lets them go)."""
    held_reason: str | None = None
    held_paths: tuple[str, ...] = ()
    host_changed: int = 0
    """Tracked files edited on the host since gpubox sent them (left alone)."""
    host_changed_paths: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, document: Mapping[str, Any]) -> SyncView:
        last = document.get("last") or {}
        return cls(
            watching=bool(document.get("watching")),
            batches=int(document.get("batches") or 0),
            last_files=as_int(last.get("files")),
            last_ms=as_float(last.get("ms")),
            last_at=as_float(last.get("at")),
            pending=int(document.get("pending") or 0),
            conflicts=int(document.get("conflicts") or 0),
            held_back=int(document.get("held_back") or 0),
            errors=int(document.get("errors") or 0),
            recent_errors=tuple(str(e) for e in document.get("recent_errors") or ()),
            recent_conflicts=tuple(str(c) for c in document.get("recent_conflicts") or ()),
            held_deletions=int(document.get("held_deletions") or 0),
            held_reason=str(document["held_reason"]) if document.get("held_reason") else None,
            held_paths=tuple(str(p) for p in document.get("held_deletion_paths") or ()),
            host_changed=int(document.get("host_changed") or 0),
            host_changed_paths=tuple(str(p) for p in document.get("host_changed_paths") or ()),
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
        if self.host_changed:
            parts.append(f"{self.host_changed} changed on the host (pull or push)")
        if self.held_deletions:
            parts.append(f"{self.held_deletions} deletions held back (x lets them go)")
        return " · ".join(parts)


@dataclass(frozen=True)
class TunnelView:
    host: str
    service: str
    local_port: int
    url: str
    """Jupyter's token redacted: the open action fetches it."""


@dataclass(frozen=True)
class HostFacts:
    """A host as the state database describes it (no network): what the state read carries
    (:class:`~gpubox.dashboard.read.HostState`) and the view shows as it is (:class:`HostView`)."""

    name: str
    provider: str
    configured: bool
    """In hosts.toml (False: only a gpubox process still holding it knows it)."""
    held_by: int | None = None
    """The pid of the gpubox process holding it up; None while it is down."""
    endpoint: str | None = None
    gpu_label: str = "not probed yet"
    verdict: str = "unknown"
    """``ok``, ``warn``, ``fail``, ``cpu`` (no NVIDIA GPU: runs on CPU) or ``unknown`` (not probed yet)."""
    verdict_text: str = ""
    verdict_reasons: tuple[str, ...] = ()
    price_per_hour: float | None = None
    price_estimate: bool = False
    price_source: str = ""
    tunnels: tuple[TunnelView, ...] = ()
    stopped_instance: str | None = None
    """The id of its rented instance when that is stopped with its disk kept (its guardian's stop with the
    laptop gone): not billing its GPU, started again by `up`, terminated by `down`."""

    def facts(self) -> dict[str, Any]:
        """The fields every record of a host shares, to build another record of the same host from."""
        return {name: getattr(self, name) for name in _FACT_NAMES}


_FACT_NAMES = tuple(f.name for f in fields(HostFacts))


@dataclass(frozen=True, kw_only=True)
class HostView(HostFacts):
    """A host as the dashboard shows it: its facts, then what its poll and the clock add."""

    state: str
    """``up``, ``connecting``, ``unreachable`` (held, but not answering), ``down`` (nobody holds it), ``stopped``
    (nobody holds it, and its rented instance is stopped with its disk kept)."""
    gpus: tuple[GpuView, ...] = ()
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
    outputs_text: str | None = None
    run_money: tuple[str, ...] = ()
    """Each active run of this project's: ``r-7: $0.40 so far · $1.10 to finish (ETA 0:51:00 at $1.29/h)``."""
    """How far the local copy of the outputs is behind the host's (`3 files / 40.0 MB behind, ...`)."""
    sampled_at: float | None = None

    @property
    def is_up(self) -> bool:
        return self.state not in ("down", "stopped")

    @property
    def util_percent(self) -> float | None:
        """Mean utilisation over the host's GPUs (None without GPU figures)."""
        values = [g.util_percent for g in self.gpus if g.util_percent is not None]
        return sum(values) / len(values) if values else None

    @property
    def util_history(self) -> tuple[float, ...]:
        return mean_history([g.util_history for g in self.gpus])

    @property
    def memory_history(self) -> tuple[float, ...]:
        return mean_history([g.memory_history for g in self.gpus])

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
    cost_to_finish_usd: float | None = None
    """An active run's ETA at its host's rate now; None without an ETA or a price."""
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
    ``sync-held``, ``unreachable``, ``reconnected``, ``deadline`` (max_hours)."""
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


_SPLITS = ("train", "training", "test", "val", "valid", "validation", "eval")
"""The last part of a PyTorch-style tag (``Loss/train``) that names the split, not the metric."""


def curve_metric(tag: str) -> str:
    """The metric a series shows: ``loss`` for ``train/epoch_loss``, ``custom/loss`` and ``runs_x/Loss/train``."""
    parts = tag.split("/")
    name = parts[-2] if len(parts) >= 2 and parts[-1].lower() in _SPLITS else parts[-1]
    name = name[len("epoch_") :] if name.startswith("epoch_") else name
    return name.lower() if name.lower() in ("loss", "accuracy") else name


def curve_name(tag: str) -> str:
    """What tells a series from the others of its metric: ``train``, ``custom``, ``Dec04_12-00-00_box/test``."""
    parts = tag.split("/")
    if len(parts) >= 2 and parts[-1].lower() in _SPLITS:
        return "/".join(parts[:-2] + parts[-1:])
    return "/".join(parts[:-1]) or tag


def curve_groups(curves: Sequence[Curve]) -> list[tuple[str, list[Curve]]]:
    """Curves grouped for plotting, one plot per metric: ``loss`` (train and validation together) first, then
    accuracy, then the rest in name order."""
    groups: dict[str, list[Curve]] = {}
    for curve in curves:
        groups.setdefault(curve_metric(curve.tag), []).append(curve)

    def order(name: str) -> tuple[int, str]:
        return (0 if name == "loss" else 1 if name == "accuracy" else 2, name)

    return [(name, groups[name]) for name in sorted(groups, key=order)]


def mean_history(histories: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The mean of several histories, oldest first, as long as the shortest one."""
    histories = [h for h in histories if h]
    if not histories:
        return ()
    length = min(len(h) for h in histories)
    return tuple(sum(h[len(h) - length + i] for h in histories) / len(histories) for i in range(length))


def as_int(value: object) -> int | None:
    """*value* as an int when it is a number (a bool is not), else None."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_float(value: object) -> float | None:
    """*value* as a float when it is a number (a bool is not), else None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
