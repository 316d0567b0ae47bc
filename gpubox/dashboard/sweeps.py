"""The sweeps screen's data, Textual-free: every sweep this machine knows, and the chosen one's trials with its
best-so-far curve, read through the same use cases `gpubox sweeps` and `gpubox sweep NAME --json` call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpubox.actions import sweep as sweeps
from gpubox.errors import GpuboxError
from gpubox.fmt import format_duration, format_usd

__all__ = ["SweepDetail", "SweepRow", "SweepsView", "TrialRow", "best_so_far", "read_sweeps", "sorted_trials"]


@dataclass(frozen=True)
class SweepRow:
    name: str
    state: str
    metric: str
    direction: str
    ended: int
    planned: int | None
    best: float | None
    best_number: int | None
    cost_usd: float | None
    project_root: str | None = None

    @property
    def progress_text(self) -> str:
        return f"{self.ended}/{self.planned if self.planned is not None else '?'}"


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float | None
    params: Mapping[str, Any]
    host: str | None
    gpu: int | None
    run: str | None
    duration_s: float | None
    cost_usd: float | None
    note: str

    @property
    def params_text(self) -> str:
        return " ".join(f"{key}={_short(value)}" for key, value in sorted(self.params.items()))

    @property
    def where(self) -> str:
        if self.host is None:
            return ""
        return self.host if self.gpu is None else f"{self.host}:{self.gpu}"

    @property
    def duration_text(self) -> str:
        return "" if self.duration_s is None else format_duration(self.duration_s)

    @property
    def cost_text(self) -> str:
        return "" if self.cost_usd is None else format_usd(self.cost_usd)

    @property
    def value_text(self) -> str:
        return "" if self.value is None else _short(self.value)


@dataclass(frozen=True)
class SweepDetail:
    name: str
    metric: str
    direction: str
    state: str
    reason: str | None
    trials: tuple[TrialRow, ...]
    best_number: int | None
    best_curve: tuple[tuple[float, float], ...]
    """(trial number, best value so far) at each trial that ended complete."""


@dataclass(frozen=True)
class SweepsView:
    sweeps: tuple[SweepRow, ...] = ()
    detail: SweepDetail | None = None
    error: str | None = None
    problems: dict[str, str] = field(default_factory=dict)
    """Sweeps that could not be read (their storage did not answer), with why."""


def _short(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def best_so_far(trials: Sequence[TrialRow], direction: str) -> tuple[tuple[float, float], ...]:
    """The best value after each complete trial, in trial order: the curve a sweep should bend toward."""
    best: float | None = None
    points = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state != "complete" or trial.value is None:
            continue
        if best is None or (trial.value > best if direction == "maximize" else trial.value < best):
            best = trial.value
        points.append((float(trial.number), best))
    return tuple(points)


def sorted_trials(detail: SweepDetail, *, best_first: bool) -> list[TrialRow]:
    """By number, or best first (complete ones by value, then pruned, running, failed)."""
    if not best_first:
        return sorted(detail.trials, key=lambda t: t.number)
    rank = {"complete": 0, "pruned": 1, "running": 2, "failed": 3}
    sign = -1.0 if detail.direction == "maximize" else 1.0

    def key(trial: TrialRow) -> tuple[int, float, int]:
        value = sign * trial.value if trial.value is not None else float("inf")
        return rank.get(trial.state, 4), value, trial.number

    return sorted(detail.trials, key=key)


def _detail(document: Mapping[str, Any]) -> SweepDetail:
    trials = tuple(
        TrialRow(
            number=int(t["number"]),
            state=str(t["state"]),
            value=t.get("value"),
            params=dict(t.get("params") or {}),
            host=t.get("host"),
            gpu=t.get("gpu"),
            run=t.get("run"),
            duration_s=t.get("duration_s"),
            cost_usd=t.get("cost_usd"),
            note=" ".join(
                filter(None, [t.get("note"), t.get("last_line") if t["state"] == "failed" else None])
            ),
        )
        for t in document["trials"]
    )
    direction = str(document.get("direction") or "maximize")
    best = document.get("best")
    return SweepDetail(
        name=str(document["name"]),
        metric=str(document.get("metric") or "?"),
        direction=direction,
        state=str(document["state"]),
        reason=document.get("reason"),
        trials=trials,
        best_number=None if not best else int(best["number"]),
        best_curve=best_so_far(trials, direction),
    )


def read_sweeps(selected: str | None, default: str | None = None) -> SweepsView:
    """Every sweep, and the trials of *selected* (else *default*, the project's, when it exists, else the first
    listed). Never raises for a sweep's own trouble: it is said in the view."""
    try:
        rows = sweeps.list_sweeps()
    except GpuboxError as exc:
        return SweepsView(error=str(exc))
    listed = tuple(
        SweepRow(
            name=str(row["name"]),
            state=str(row["state"]),
            metric=str(row.get("metric") or ""),
            direction=str(row.get("direction") or ""),
            ended=int(row.get("ended") or 0),
            planned=row.get("planned"),
            best=(row.get("best") or {}).get("value"),
            best_number=(row.get("best") or {}).get("number"),
            cost_usd=row.get("cost_usd"),
            project_root=row.get("project_root"),
        )
        for row in rows
    )
    problems = {str(row["name"]): str(row["error"]) for row in rows if row.get("error")}
    names = [row.name for row in listed]
    chosen = next((name for name in (selected, default) if name in names), names[0] if names else None)
    if chosen is None:
        return SweepsView(listed, problems=problems)
    try:
        detail = _detail(sweeps.sweep_document(chosen))
    except GpuboxError as exc:
        return SweepsView(listed, None, f"{chosen}: {exc}", problems)
    return SweepsView(listed, detail, None, problems)
