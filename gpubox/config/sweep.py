"""``[sweep]`` in gpubox.toml: a hyperparameter sweep's command, metric, sampler, search space and limits.

Read here into plain, validated data (no Optuna: the config room stays light); :mod:`gpubox.train.sweep` turns
it into an Optuna study. Every mistake names the line and key, like the rest of gpubox.toml.
"""

from __future__ import annotations

import itertools
import math
import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpubox.config import checks
from gpubox.config.reader import Reader

__all__ = [
    "MAX_GRID",
    "SAMPLERS",
    "Choices",
    "NumberRange",
    "Param",
    "PruneConfig",
    "SweepConfig",
    "read_sweep",
    "render_command",
]

SAMPLERS = ("grid", "random", "tpe")
MAX_GRID = 100_000
"""More grid points than this is a mistake (a float range with a tiny step), not a sweep anyone will run."""

PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
METRIC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$")

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Choices:
    """``units = [32, 64, 128]``: one of these values."""

    values: tuple[Scalar, ...]

    def grid(self) -> tuple[Scalar, ...]:
        return self.values


@dataclass(frozen=True)
class NumberRange:
    """``lr = { low = 1e-4, high = 1e-1, log = true }`` (a float range) or with integer bounds and step an
    integer range; ``step`` makes it discrete."""

    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def grid(self) -> tuple[Scalar, ...]:
        """Every value of a discrete range, low to high (the caller made sure there is a step)."""
        step = self.step if self.step is not None else 1
        count = math.floor((self.high - self.low) / step + 1e-9) + 1
        if self.integer:
            return tuple(int(self.low) + i * int(step) for i in range(count))
        # Decimal steps (0.1) add up with float noise: round each point to the step's own precision.
        places = max(0, -math.floor(math.log10(step)) + 6) if step > 0 else 12
        return tuple(round(self.low + i * step, places) for i in range(count))

    @property
    def discrete(self) -> bool:
        return self.integer or self.step is not None


Param = Choices | NumberRange


@dataclass(frozen=True)
class PruneConfig:
    """Optuna's MedianPruner: a trial is stopped once its value at an epoch is worse than the median of the
    finished trials' values at that epoch, after *startup_trials* trials finished and *warmup_epochs*."""

    startup_trials: int = 5
    warmup_epochs: int = 0


@dataclass(frozen=True)
class SweepConfig:
    command: str | tuple[str, ...]
    """A shell line, or an argv list (each item rendered on its own, then joined with shell quoting)."""
    metric: str
    direction: str
    params: Mapping[str, Param]
    sampler: str = "tpe"
    seed: int | None = None
    trials: int | None = None
    """How many trials in all (random, tpe); for grid, at most this many of its points (default: all)."""
    per_gpu: int = 1
    prune: PruneConfig | None = None
    max_cost_usd: float | None = None
    placeholders: frozenset[str] = field(default_factory=frozenset)

    def grid_size(self) -> int:
        return math.prod(len(param.grid()) for param in self.params.values())

    def planned(self, override: int | None = None) -> int:
        """How many trials the sweep runs in all."""
        wanted = override if override is not None else self.trials
        if self.sampler == "grid":
            size = self.grid_size()
            return size if wanted is None else min(size, wanted)
        return wanted or 0

    def grid_points(self) -> list[dict[str, Scalar]]:
        names = sorted(self.params)
        return [
            dict(zip(names, values, strict=True))
            for values in itertools.product(*(self.params[name].grid() for name in names))
        ]

    def to_json(self) -> dict[str, Any]:
        """What the sweep was started with, as stored beside its study (and shown by `gpubox sweep --json`)."""

        def param(value: Param) -> Any:
            if isinstance(value, Choices):
                return list(value.values)
            found: dict[str, Any] = {"low": value.low, "high": value.high}
            if value.integer:
                found = {"low": int(value.low), "high": int(value.high)}
            if value.log:
                found["log"] = True
            if value.step is not None:
                found["step"] = int(value.step) if value.integer else value.step
            return found

        return {
            "command": self.command if isinstance(self.command, str) else list(self.command),
            "metric": self.metric,
            "direction": self.direction,
            "sampler": self.sampler,
            "seed": self.seed,
            "trials": self.trials,
            "per_gpu": self.per_gpu,
            "prune": None
            if self.prune is None
            else {"startup_trials": self.prune.startup_trials, "warmup_epochs": self.prune.warmup_epochs},
            "max_cost_usd": self.max_cost_usd,
            "params": {name: param(value) for name, value in self.params.items()},
        }


def render_command(config: SweepConfig, params: Mapping[str, Any]) -> str:
    """The trial's shell line: each ``{name}`` replaced by its value (a string value shell-quoted)."""

    def word(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return format(value, ".12g")
        if isinstance(value, int):
            return str(value)
        return str(value)

    values = {name: word(value) for name, value in params.items()}
    if isinstance(config.command, str):
        quoted = {
            name: shlex.quote(text) if isinstance(params[name], str) else text
            for name, text in values.items()
        }
        return config.command.format_map(quoted)
    return shlex.join(part.format_map(values) for part in config.command)


# -------------------------------------------------------------------------------------------------- reading

FIELDS = (
    "command",
    "metric",
    "direction",
    "sampler",
    "seed",
    "trials",
    "per_gpu",
    "prune",
    "max_cost_usd",
    "params",
)


def _command(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    if isinstance(value, str) and value.strip():
        return value
    raise checks.Invalid("expected a command: a non-empty string or a list of strings")


def _metric(value: Any) -> str:
    if not isinstance(value, str) or not METRIC_NAME.fullmatch(value):
        raise checks.Invalid(
            'expected the name of a scalar the run reports, such as "val_accuracy" (letters, digits, _ . / -)'
        )
    return value


def _placeholders(reader: Reader, where: tuple[str, ...], command: str | tuple[str, ...]) -> frozenset[str]:
    found: set[str] = set()
    for part in (command,) if isinstance(command, str) else command:
        try:
            for _text, name, spec, conversion in string.Formatter().parse(part):
                if name is None:
                    continue
                if not PARAM_NAME.fullmatch(name) or spec or conversion:
                    raise reader.error(
                        where,
                        f"{{{name}}} is not a parameter placeholder: write {{name}} for a parameter in "
                        "[sweep.params], {{ and }} for literal braces",
                    )
                found.add(name)
        except ValueError as exc:
            raise reader.error(where, f"{exc} (write {{{{ and }}}} for literal braces)") from None
    return frozenset(found)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _param(reader: Reader, where: tuple[str, ...], value: Any, sampler: str) -> Param:
    if isinstance(value, list):
        if not value:
            raise reader.error(where, "expected at least one value to choose from")
        for item in value:
            if isinstance(item, dict | list) or (isinstance(item, float) and not math.isfinite(item)):
                raise reader.error(
                    where, f"choices must be strings, numbers or booleans, got {checks.show(item)}"
                )
        if len({(type(item).__name__, item) for item in value}) != len(value):
            raise reader.error(where, "a choice is listed twice")
        return Choices(tuple(value))
    if not isinstance(value, dict):
        raise reader.error(
            where,
            "expected a list of choices ([32, 64]) or a range ({ low = 1e-4, high = 0.1, log = true }), "
            f"got {checks.show(value)}",
        )
    reader.check_keys(where, value, ("low", "high", "log", "step"))
    for key in ("low", "high"):
        if key not in value:
            raise reader.error(where, f'a range needs "{key}"')
        if not _number(value[key]):
            raise reader.error((*where, key), f"expected a number, got {checks.show(value[key])}")
    low, high = value["low"], value["high"]
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise reader.error((*where, "log"), f"expected true or false, got {checks.show(log)}")
    step = value.get("step")
    if step is not None and (not _number(step) or step <= 0):
        raise reader.error((*where, "step"), f"expected a number > 0, got {checks.show(step)}")
    if not low < high:
        raise reader.error(where, f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise reader.error((*where, "low"), "a log range needs low > 0")
    if log and step is not None:
        raise reader.error(
            where, "a range is either log or stepped, not both (Optuna samples one or the other)"
        )
    integer = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    found = NumberRange(float(low), float(high), log, None if step is None else float(step), integer)
    if sampler == "grid" and not found.discrete:
        raise reader.error(
            where, 'a grid needs every value: give this float range a "step", or list the choices'
        )
    return found


def read_sweep(reader: Reader, raw: Any) -> SweepConfig:
    """``[sweep]`` and ``[sweep.params]`` of the gpubox.toml *reader* read, checked as a whole."""
    where = ("sweep",)
    table = reader.table(where, raw)
    reader.check_keys(where, table, FIELDS)
    for required in ("command", "metric", "direction", "params"):
        if required not in table:
            raise reader.error(where, f'[sweep] needs "{required}"')

    def value(key: str, check: checks.Check, default: Any = None) -> Any:
        if key not in table:
            return default
        try:
            return check(table[key])
        except checks.Invalid as exc:
            raise reader.error((*where, key), f"{exc}, got {checks.show(table[key])}") from None

    command = value("command", _command)
    metric = value("metric", _metric)
    direction = value("direction", checks.choice("maximize", "minimize"))
    sampler = value("sampler", checks.choice(*SAMPLERS), "tpe")
    seed = value("seed", checks.integer(0, 2**32 - 1))
    trials = value("trials", checks.integer(1, 100_000))
    per_gpu = value("per_gpu", checks.integer(1, 64), 1)
    max_cost = value("max_cost_usd", checks.number(0, above=True))
    prune: PruneConfig | None = None
    if "prune" in table:
        raw_prune = table["prune"]
        if isinstance(raw_prune, bool):
            prune = PruneConfig() if raw_prune else None
        elif isinstance(raw_prune, dict):
            got = reader.values(
                (*where, "prune"),
                raw_prune,
                {"startup_trials": checks.integer(0, 100_000), "warmup_epochs": checks.integer(0, 1_000_000)},
            )
            prune = PruneConfig(**got)
        else:
            raise reader.error(
                (*where, "prune"),
                "expected true, false or a table { startup_trials = 5, warmup_epochs = 0 }, "
                f"got {checks.show(raw_prune)}",
            )
    raw_params = reader.table((*where, "params"), table["params"])
    if not raw_params:
        raise reader.error((*where, "params"), "expected at least one parameter to search")
    params: dict[str, Param] = {}
    for name, spec in raw_params.items():
        at: tuple[str, ...] = (*where, "params", name)
        if not PARAM_NAME.fullmatch(name):
            raise reader.error(at, "a parameter name is letters, digits and _, not starting with a digit")
        params[name] = _param(reader, at, spec, sampler)
    placeholders = _placeholders(reader, (*where, "command"), command)
    unknown = sorted(placeholders - set(params))
    if unknown:
        raise reader.error(
            (*where, "command"),
            f"{{{unknown[0]}}} is not a parameter: [sweep.params] has {', '.join(sorted(params))}",
        )
    if sampler != "grid" and trials is None:
        raise reader.error(where, f'a {sampler} sweep needs "trials" (how many trials to run in all)')
    config = SweepConfig(
        command=command,
        metric=metric,
        direction=direction,
        params=params,
        sampler=sampler,
        seed=seed,
        trials=trials,
        per_gpu=per_gpu,
        prune=prune,
        max_cost_usd=max_cost,
        placeholders=placeholders,
    )
    if sampler == "grid" and config.grid_size() > MAX_GRID:
        raise reader.error(
            (*where, "params"), f"the grid has {config.grid_size():,} points; at most {MAX_GRID:,}"
        )
    return config
