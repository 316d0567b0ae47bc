"""The host report as plain facts and lines, shared by ``gpubox up``, ``hosts`` and ``status``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ReportLine", "gpu_line", "host_report", "short_gpu"]

OK, INFO, BAD = "✓", "·", "✗"


@dataclass(frozen=True)
class ReportLine:
    mark: str
    label: str
    text: str

    def render(self) -> str:
        return f"  {self.mark} {self.label:<7}{self.text}"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) else "N/A"


def gpu_line(probe: dict[str, Any]) -> ReportLine:
    from gpubox.remote.gpu import summarize_nvidia_smi

    smi = probe.get("nvidia_smi") or {}
    if smi.get("available"):
        return ReportLine(OK, "GPU", summarize_nvidia_smi(smi.get("output", "")).describe())
    reason = smi.get("reason") or "nvidia-smi gave no answer"
    if "not found" in reason:
        return ReportLine(INFO, "GPU", f"no NVIDIA GPU: training runs on CPU ({reason})")
    return ReportLine(BAD, "GPU", f"no usable NVIDIA GPU: {reason}")


def short_gpu(probe: dict[str, Any] | None) -> str:
    """A few words for tables: the GPUs, or why there are none."""
    if not probe:
        return "not probed yet"
    smi = probe.get("nvidia_smi") or {}
    if smi.get("available"):
        from gpubox.remote.gpu import summarize_nvidia_smi

        summary = summarize_nvidia_smi(smi.get("output", ""))
        if summary.gpu_names:
            return f"{len(summary.gpu_names)}× {summary.gpu_names[0]}"
        return "NVIDIA (unparsed)"
    return "none (CPU)" if "not found" in (smi.get("reason") or "") else "unusable"


def host_report(probe: dict[str, Any], hello: dict[str, Any] | None = None) -> list[ReportLine]:
    python = probe.get("python") or {}
    memory = probe.get("memory") or {}
    disk = probe.get("disk") or {}
    lines = [
        ReportLine(
            OK,
            "host",
            f"{probe.get('hostname', '?')} · {probe.get('os', '?')} · {probe.get('arch', '?')} · "
            f"{probe.get('cpu_count', '?')} CPUs · {_gib(memory.get('total_bytes'))} RAM",
        ),
        ReportLine(
            OK,
            "python",
            f"{python.get('version', '?')} ({python.get('executable', '?')})"
            + (f" · agent protocol {hello.get('protocol')}" if hello else ""),
        ),
    ]
    if "error" in disk:
        lines.append(ReportLine(BAD, "disk", f"{disk.get('path')}: {disk['error']}"))
    else:
        where = disk.get("path", "?") + ("" if disk.get("exists") else " (created on first sync)")
        lines.append(ReportLine(OK, "disk", f"{_gib(disk.get('free_bytes'))} free for {where}"))
    lines.append(gpu_line(probe))
    return lines
