"""The Optuna side of a sweep: its storage, the study, samplers and pruner, and a trial as gpubox shows it.

The study is Optuna's (RDB storage: a SQLite file by default, PostgreSQL or MySQL with ``--storage``). What
gpubox adds lives in Optuna's own user attributes:

- on the study: ``gpubox`` (the ``[sweep]`` it runs, as JSON), ``project_root``, ``planned`` (trials in all),
  ``state`` and ``reason`` (what its scheduler last said: running, finished, stopped, failed, interrupted);
- on each trial: ``owner`` (the machine whose scheduler started it), ``host``, ``slot`` ([GPU index or null,
  which of that GPU's per_gpu places]), ``run`` (the gpubox run id on that host), ``started_at`` and
  ``ended_at`` (the run's), ``usd_per_hour`` (its share of the host's price), ``cost_usd``, ``exit_code``,
  ``last_line``, ``note``; ``attempt`` and ``retry_of`` on a trial that asks a lost one's params again, and
  ``replaced_by`` on the lost one; ``stopped`` when the user stopped the sweep.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gpubox.config.sweep import Choices, SweepConfig
from gpubox.errors import BadInput, GpuboxError, UsageError

__all__ = [
    "SWEEP_STATES",
    "TRIAL_STATES",
    "TrialView",
    "best_of",
    "check_storage_url",
    "counted",
    "create_or_load",
    "distributions",
    "load_existing",
    "open_storage",
    "quiet_optuna",
    "redact_url",
    "study_names",
    "sweep_document",
    "trial_view",
    "trial_views",
    "without_password",
]

SWEEP_STATES = ("running", "finished", "stopped", "failed", "interrupted")
TRIAL_STATES = {
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
}


def quiet_optuna(level: int = logging.WARNING) -> None:
    """Optuna logs each trial at INFO; gpubox says what matters itself."""
    optuna.logging.set_verbosity(level)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ------------------------------------------------------------------------------------------------ storage


def check_storage_url(url: str) -> str:
    """A storage URL Optuna's RDB storage takes (sqlite, postgresql, mysql), or a one-line UsageError."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise UsageError(
            f"--storage {redact_url(url)!r} is not a database URL (sqlite:///path/to/file.db, "
            "postgresql://user@host/db, mysql://user@host/db)"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise UsageError(
            f"--storage: {backend!r} is not a database gpubox sweeps use (sqlite, postgresql or mysql)"
        )
    if backend == "sqlite" and not parsed.database:
        raise UsageError("--storage: a SQLite URL names its file: sqlite:////absolute/path/sweeps.db")
    return url


def without_password(url: str) -> str:
    """*url* with no password in it (gpubox never writes one down)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password is None:
        return url
    # URL.set() leaves a field given None as it was; the URL is a named tuple, and _replace does unset it.
    return str(parsed._replace(password=None).render_as_string(hide_password=False))


def redact_url(url: str) -> str:
    """*url* as it may be shown: a password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:
        return "<not a URL>"
    return parsed.render_as_string(hide_password=True)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at *url* (tables made on first use). A SQLite file waits for the other gpubox
    processes reading it instead of failing at once."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        if url.startswith("sqlite"):
            _write_ahead(storage)
        return storage
    except Exception as exc:  # SQLAlchemy and the drivers raise many kinds; each is one line for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, ImportError | ModuleNotFoundError):
            reason = f"its driver is not installed ({reason}); pip install psycopg2-binary or mysqlclient"
        raise GpuboxError(f"cannot open the sweep storage {redact_url(url)}: {reason}") from None


def _write_ahead(storage: optuna.storages.RDBStorage) -> None:
    """A SQLite study in WAL mode, synced at checkpoints rather than at every commit: a trial writes a dozen
    small attributes, and each full sync would cost the next trial's start tens of milliseconds. (A power cut
    may lose the last few writes, never the file; the hosts' run folders still hold every run.)"""
    from sqlalchemy import event

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # the connection made while opening predates the pragmas


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [study.study_name for study in storage.get_all_studies()]


# --------------------------------------------------------------------------------------------- the study


class _AskTellGridSampler(GridSampler):
    """Optuna's GridSampler for ask-and-tell: gpubox decides when the grid is done (Optuna's would call
    ``Study.stop()``, which only works inside ``optimize()``)."""

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        return None


def distributions(config: SweepConfig) -> dict[str, BaseDistribution]:
    """Each parameter's Optuna distribution (for a grid, the grid's values as choices)."""
    found: dict[str, BaseDistribution] = {}
    for name, param in config.params.items():
        if config.sampler == "grid" or isinstance(param, Choices):
            found[name] = CategoricalDistribution(list(param.grid()))
        elif param.integer:
            step = int(param.step) if param.step is not None else 1
            found[name] = IntDistribution(int(param.low), int(param.high), log=param.log, step=step)
        else:
            found[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    return found


def _sampler(config: SweepConfig, seed_offset: int) -> BaseSampler:
    # A resumed sweep must not draw its first points again: the seed moves on by the trials already asked.
    seed = None if config.seed is None else config.seed + seed_offset
    if config.sampler == "grid":
        space = {name: list(param.grid()) for name, param in config.params.items()}
        return _AskTellGridSampler(space, seed=config.seed)
    if config.sampler == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed)


def _pruner(config: SweepConfig) -> optuna.pruners.BasePruner:
    if config.prune is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=config.prune.startup_trials, n_warmup_steps=config.prune.warmup_epochs
    )


def load_existing(storage: optuna.storages.BaseStorage, name: str) -> Study | None:
    """The study *name* for reading (no sampler of gpubox's), None when the storage has none."""
    if name not in study_names(storage):
        return None
    return optuna.load_study(study_name=name, storage=storage)


def create_or_load(
    storage: optuna.storages.BaseStorage, name: str, config: SweepConfig, project_root: str
) -> tuple[Study, bool]:
    """The study for sweep *name*, made now or loaded to resume (and whether it was made); a sweep of that name
    that measures something else is bad input."""
    existing = load_existing(storage, name)
    direction = StudyDirection.MAXIMIZE if config.direction == "maximize" else StudyDirection.MINIMIZE
    if existing is None:
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction=direction,
            sampler=_sampler(config, 0),
            pruner=_pruner(config),
        )
        study.set_user_attr("created_at", time.time())
        made = True
    else:
        before = existing.user_attrs.get("gpubox") or {}
        if existing.direction != direction or before.get("metric", config.metric) != config.metric:
            was = f"{before.get('direction', existing.direction.name.lower())} {before.get('metric', '?')}"
            raise BadInput(
                f"sweep {name} already exists and measures {was}; [sweep] now says {config.direction} "
                f"{config.metric}: give the new sweep another name (`gpubox sweep NEWNAME`)"
            )
        offset = len(existing.get_trials(deepcopy=False))
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=_sampler(config, offset), pruner=_pruner(config)
        )
        made = False
    study.set_user_attr("gpubox", config.to_json())
    study.set_user_attr("project_root", project_root)  # it may have moved since (a renamed folder)
    return study, made


# ---------------------------------------------------------------------------------------------- a trial


@dataclass(frozen=True)
class TrialView:
    number: int
    params: dict[str, Any]
    state: str
    """running, complete, pruned or failed (waiting: enqueued, about to be asked)."""
    value: float | None
    host: str | None
    gpu: int | None
    run: str | None
    started_at: float | None
    ended_at: float | None
    cost_usd: float | None
    exit_code: int | None
    last_line: str | None
    note: str | None
    owner: str | None
    replaced_by: int | None
    stopped: bool
    steps: dict[int, float]

    def duration_s(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else (now if self.state == "running" else None)
        return None if end is None else max(0.0, end - self.started_at)

    @property
    def ended(self) -> bool:
        return self.state in ("complete", "pruned", "failed")

    @property
    def counts(self) -> bool:
        """Whether it counts toward the sweep's trials: not when it was re-asked as another or stopped by the
        user (the sweep runs those params again when it resumes)."""
        return self.replaced_by is None and not self.stopped and self.state != "waiting"

    def to_json(self, now: float) -> dict[str, Any]:
        duration = self.duration_s(now)
        return {
            "number": self.number,
            "params": self.params,
            "state": self.state,
            "value": self.value,
            "host": self.host,
            "gpu": self.gpu,
            "run": self.run,
            "duration_s": None if duration is None else round(duration, 3),
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6),
            "exit_code": self.exit_code,
            "last_line": self.last_line,
            "note": self.note,
            "replaced_by": self.replaced_by,
            "stopped": self.stopped,
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def trial_view(trial: FrozenTrial, now: float | None = None) -> TrialView:
    attrs = trial.user_attrs
    now = time.time() if now is None else now
    started = _number(attrs.get("started_at"))
    ended = _number(attrs.get("ended_at"))
    state = TRIAL_STATES.get(trial.state, "failed")
    cost = _number(attrs.get("cost_usd"))
    rate = _number(attrs.get("usd_per_hour"))
    if cost is None and rate is not None and started is not None and state == "running":
        cost = rate * max(0.0, now - started) / 3600.0
    slot = attrs.get("slot")
    gpu = slot[0] if isinstance(slot, list) and len(slot) == 2 else None
    exit_code = attrs.get("exit_code")
    replaced = attrs.get("replaced_by")
    return TrialView(
        number=trial.number,
        params=dict(trial.params),
        state=state,
        value=_number(trial.value) if trial.values else None,
        host=attrs.get("host") if isinstance(attrs.get("host"), str) else None,
        gpu=gpu if isinstance(gpu, int) and not isinstance(gpu, bool) else None,
        run=attrs.get("run") if isinstance(attrs.get("run"), str) else None,
        started_at=started,
        ended_at=ended,
        cost_usd=cost,
        exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
        last_line=attrs.get("last_line") if isinstance(attrs.get("last_line"), str) else None,
        note=attrs.get("note") if isinstance(attrs.get("note"), str) else None,
        owner=attrs.get("owner") if isinstance(attrs.get("owner"), str) else None,
        replaced_by=replaced if isinstance(replaced, int) and not isinstance(replaced, bool) else None,
        stopped=attrs.get("stopped") is True,
        steps={int(step): float(value) for step, value in trial.intermediate_values.items()},
    )


def trial_views(trials: Sequence[FrozenTrial], now: float | None = None) -> list[TrialView]:
    """Every trial of a study as gpubox shows it, each lost or stopped one linked to the trial that asked its
    params again (``retry_of`` on that one: a finished trial can take no new attribute)."""
    now = time.time() if now is None else now
    again: dict[int, int] = {}
    for trial in trials:
        retry_of = trial.user_attrs.get("retry_of")
        if isinstance(retry_of, int) and not isinstance(retry_of, bool):
            again.setdefault(retry_of, trial.number)
    views = []
    for trial in trials:
        view = trial_view(trial, now)
        if view.replaced_by is None and trial.number in again:
            view = replace(view, replaced_by=again[trial.number])
        views.append(view)
    return views


def counted(views: Sequence[TrialView]) -> list[TrialView]:
    """The trials that count toward the sweep's number (running ones included)."""
    return [view for view in views if view.counts]


def best_of(views: Sequence[TrialView], direction: str) -> TrialView | None:
    complete = [view for view in views if view.state == "complete" and view.value is not None]
    if not complete:
        return None
    pick = max if direction == "maximize" else min
    return pick(complete, key=lambda view: (view.value, -view.number))


# -------------------------------------------------------------------------------------------- the document


def sweep_document(
    study: Study,
    *,
    scheduler_alive: bool | None,
    storage_url: str,
    now: float | None = None,
) -> dict[str, Any]:
    """`gpubox sweep NAME --json`: the sweep, its trials in number order, the best one. *scheduler_alive* is
    whether this machine's scheduler runs (None: this machine has none, so the study's own word stands)."""
    now = time.time() if now is None else now
    attrs = study.user_attrs
    config: Mapping[str, Any] = attrs.get("gpubox") or {}
    views = trial_views(study.get_trials(deepcopy=False), now)
    state = str(attrs.get("state") or "interrupted")
    if state not in SWEEP_STATES:
        state = "interrupted"
    if scheduler_alive:
        state = "running"
    elif scheduler_alive is False and state == "running":
        state = "interrupted"
    direction = str(config.get("direction") or study.direction.name.lower())
    best = best_of(views, direction)
    planned = attrs.get("planned")
    shown = [view for view in views if view.state != "waiting"]
    spent = sum(view.cost_usd or 0.0 for view in shown)
    priced = any(view.cost_usd is not None for view in shown)
    return {
        "name": study.study_name,
        "metric": config.get("metric"),
        "direction": direction,
        "state": state,
        "reason": attrs.get("reason"),
        "sampler": config.get("sampler"),
        "planned": planned if isinstance(planned, int) else None,
        "storage": redact_url(storage_url),
        "project_root": attrs.get("project_root"),
        "cost_usd": round(spent, 6) if priced else None,
        "max_cost_usd": config.get("max_cost_usd"),
        "trials": [view.to_json(now) for view in shown],
        "best": None
        if best is None
        else {"number": best.number, "params": best.params, "value": best.value, "run": best.run},
    }
