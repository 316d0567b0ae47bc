"""The GPUs' load right now, from the agent's nvidia-smi answer: the one reader behind idle autostop's GPU
figure and the dashboard's GPU panel.

One definition of "no GPU", the one :func:`~gpubox.remote.gpu.parse.snapshot_from_probe` uses for ``gpubox
check`` and the host report: nvidia-smi is not installed (the agent found none on PATH, so there is no exit
status). An nvidia-smi that runs and fails (no devices, a driver that is not running, even one whose words say
"not found") is a GPU that cannot be used right now, not a CPU host: it is said in its own words and asked
again next time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gpubox.remote.gpu.parse import snapshot_from_probe
from gpubox.remote.gpu.snapshot import NaType

__all__ = ["GpuReading", "GpuReadings", "gpu_readings"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU's figures; a figure nvidia-smi did not give is None (shown as N/A)."""

    index: int
    name: str
    util_percent: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None


@dataclass(frozen=True)
class GpuReadings:
    gpus: tuple[GpuReading, ...] = ()
    sampled: bool = True
    """False when the answer carried no nvidia-smi part (the host was not asked)."""
    no_gpu: bool = False
    """nvidia-smi is not installed: a CPU host, and it stays one."""
    why: str = ""
    """Why there are no readings: what the agent or nvidia-smi said."""

    @property
    def note(self) -> str:
        """A few words when there are no readings, "" when there are."""
        if not self.sampled:
            return "not sampled"
        if self.no_gpu:
            return "no GPU"
        return "" if self.gpus else self.why

    def busiest(self) -> tuple[float | None, str]:
        """(The busiest GPU's utilisation in %, or None without a GPU or a figure; a few words for people)."""
        if not self.sampled or self.no_gpu:
            return None, self.note
        if not self.gpus:
            return None, f"no usable GPU ({self.why})"
        values = [gpu.util_percent for gpu in self.gpus if gpu.util_percent is not None]
        count = len(self.gpus)
        if not values:
            return None, f"{count} GPU{'s' if count > 1 else ''}, utilisation not reported"
        busiest = max(values)
        return busiest, f"GPU {busiest:g} %" + (f" (busiest of {count})" if count > 1 else "")


def _figure(value: int | NaType) -> float | None:
    return float(value) if isinstance(value, int) else None


def gpu_readings(nvidia_smi: Mapping[str, Any] | None) -> GpuReadings:
    """The readings in an agent answer's ``nvidia_smi`` part (``{available, output, reason, exit_code}``,
    any form nvidia-smi prints); None or empty when the host was not asked."""
    if not nvidia_smi:
        return GpuReadings(sampled=False)
    snapshot = snapshot_from_probe(nvidia_smi)
    if snapshot.state != "gpus":
        return GpuReadings(no_gpu=snapshot.state == "no_nvidia_smi", why=snapshot.message or snapshot.state)
    return GpuReadings(
        tuple(
            GpuReading(
                index=gpu.index,
                name=gpu.name,
                util_percent=_figure(gpu.utilization_gpu_percent),
                memory_used_mib=_figure(gpu.memory_used_mib),
                memory_total_mib=_figure(gpu.memory_total_mib),
            )
            for gpu in snapshot.gpus
        )
    )
