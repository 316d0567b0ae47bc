"""The host report as plain facts and lines, shared by ``gpubox up``, ``hosts`` and ``status``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.remote.gpu import FrameworkRelease, GpuSummary

__all__ = ["ReportLine", "gpu_line", "host_report", "short_gpu"]

OK, BAD = "✓", "✗"


@record
class ReportLine:
    mark: str
    label: str
    text: str

    def render(self) -> str:
        return f"  {self.mark} {self.label:<7}{self.text}"


def _gib(value: Any) -> str:
    return f"{value / 2**30:.1f} GiB" if isinstance(value, int | float) else "N/A"


def _summary(probe: Mapping[str, Any], release: FrameworkRelease, chosen_by: str = "") -> GpuSummary:
    from gpubox.remote.gpu import probe_snapshot, summarize

    return summarize(probe_snapshot(probe), release, chosen_by=chosen_by)


def gpu_line(probe: Mapping[str, Any], *, release: FrameworkRelease, chosen_by: str = "") -> ReportLine:
    """What the GPUs are and whether *release* can use them, and why that release (`gpubox check` has the
    details, and asks the project's env)."""
    summary = _summary(probe, release, chosen_by)
    return ReportLine(summary.mark, "GPU", summary.line)


def short_gpu(probe: Mapping[str, Any] | None, *, release: FrameworkRelease) -> str:
    """A few words for tables: the GPUs and *release*'s verdict, or why there are none."""
    if not probe:
        return "not probed yet"
    nvidia_smi = probe.get("nvidia_smi") or {}
    if not nvidia_smi.get("available") and not str(nvidia_smi.get("output") or "").strip():
        # No GPU listed and nothing to read: the cell says so whatever the release, so the GPU rules, the
        # parsers and the verdicts stay unloaded (a CPU host's row in `gpubox status`).
        from gpubox.remote.gpu.snapshot import no_gpu_cell, unanswered_snapshot

        cell = no_gpu_cell(unanswered_snapshot(nvidia_smi))
        assert cell is not None  # a snapshot without GPUs always has one
        return cell
    return _summary(probe, release).cell


def host_report(
    probe: dict[str, Any],
    hello: dict[str, Any] | None = None,
    *,
    release: FrameworkRelease,
    chosen_by: str = "",
) -> list[ReportLine]:
    """The host, python, disk and GPU lines; the GPUs judged for *release* (*chosen_by* says why that one)."""
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
    lines.append(gpu_line(probe, release=release, chosen_by=chosen_by))
    return lines
