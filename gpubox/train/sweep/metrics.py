"""A trial's metric, per epoch, from what its run already reports: TensorBoard scalars (the agent reads the event
files and sends their points) and ``name: value`` pairs in its log (Keras's progress lines have them).

No Optuna and no I/O here: the scheduler feeds each poll's new log bytes and scalar points in, and reads out
the values per step (for pruning) and the final one (for the study).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MetricReader", "series_names"]

_EPOCH = re.compile(rb"\bEpoch (\d+)/(\d+)")
_NUMBER = rb"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"


def series_names(key: str) -> set[str]:
    """The names a TensorBoard series answers to: ``validation/epoch_accuracy`` is ``val_accuracy`` (as Keras
    prints it), ``validation/epoch_accuracy`` and ``epoch_accuracy``'s folder-qualified form; a custom
    ``custom/val_error_rate`` is also ``val_error_rate``."""
    folder, _, tag = key.rpartition("/")
    names = {key, tag}
    if tag.startswith("epoch_"):
        bare = tag[len("epoch_") :]
        if folder in ("train", ""):
            names.add(bare)
        else:
            names.add(f"{folder[:3]}_{bare}")
    return names


class MetricReader:
    """The values of one metric of one run, step by step, as its log and event files grow.

    Log lines: a line (the last ``\\r`` segment of it, as a terminal would show) holding ``metric: value`` (or
    ``metric=value``) gives a value. After a Keras ``Epoch i/N`` line, values belong to step ``i - 1``; without
    such lines each value is the next step. TensorBoard points carry their own step. For one step the latest
    value wins; the final value is the last step's, from TensorBoard when it has the metric.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.log_offset = 0
        """How many bytes of the log were read (ask for the rest from here)."""
        self.scalar_counts: dict[str, int] = {}
        """Points held per TensorBoard series (the agent sends only the ones after these)."""
        self._pattern = re.compile(rb"(?<![\w.])" + re.escape(metric.encode()) + rb"\s*[:=]\s*" + _NUMBER)
        self._partial = b""
        self._epoch: int | None = None
        self._log_values: dict[int, float] = {}
        self._log_count = 0
        self._tb_values: dict[int, float] = {}
        self.last_line = ""
        """The log's last line with something on it (said when the run fails)."""

    # -- feeding

    def feed_log(self, data: bytes, *, final: bool = False) -> None:
        """The log's next bytes (from :attr:`log_offset`); *final* when the run has ended (a last line without a
        newline counts then)."""
        self.log_offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        for raw in lines:
            line = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1]
            text = line.decode("utf-8", "replace").strip()
            if text:
                self.last_line = text[:300]
            epoch = _EPOCH.findall(line)
            if epoch:
                self._epoch = int(epoch[-1][0]) - 1
            found = self._pattern.findall(line)
            if not found:
                continue
            value = float(found[-1])
            if self._epoch is not None:
                self._log_values[self._epoch] = value
            else:
                self._log_values[self._log_count] = value
                self._log_count += 1

    def restart_log(self, offset: int) -> None:
        """The log is read from *offset* on now (it was replaced, or only its tail could be had)."""
        self.log_offset = offset
        self._partial = b""

    def feed_scalars(self, scalars: Mapping[str, Any]) -> None:
        """The agent's ``{series: {"from": n, "points": [[step, value], ...]}}`` (the points after the first n)."""
        for key, found in scalars.items():
            if not isinstance(found, Mapping):
                continue
            points = found.get("points")
            start = found.get("from", 0)
            if not isinstance(points, list) or not isinstance(start, int):
                continue
            if start < self.scalar_counts.get(key, 0):
                self.scalar_counts[key] = start  # the series got shorter (its files were replaced): re-read
            self.scalar_counts[key] = start + len(points)
            if self.metric not in series_names(key):
                continue
            for point in points:
                if isinstance(point, Sequence) and len(point) == 2:
                    step, value = point
                    if isinstance(step, int | float) and isinstance(value, int | float):
                        self._tb_values[int(step)] = float(value)

    # -- reading

    def values(self) -> dict[int, float]:
        """Every step's value so far (TensorBoard's where it has the step, else the log's)."""
        merged = dict(self._log_values)
        merged.update(self._tb_values)
        return {step: value for step, value in merged.items() if not math.isnan(value)}

    def final(self) -> float | None:
        """The value of the last step (from TensorBoard when it has the metric), None when none was reported."""
        source = self._tb_values or self._log_values
        finite = {step: value for step, value in source.items() if not math.isnan(value)}
        if not finite:
            return None
        return finite[max(finite)]
