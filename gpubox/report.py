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
    """What the GPUs are and whether the newest TensorFlow gpubox knows can use them (`gpubox check` has
    the details, for the release the project actually uses)."""
    from gpubox.remote.gpu import (
        MARKS,
        assess,
        gpu_line_text,
        load_rules,
        snapshot_from_probe,
        verdict_summary,
    )

    snapshot = snapshot_from_probe(probe.get("nvidia_smi") or {})
    if snapshot.state == "no_nvidia_smi":
        # A CPU-only host (the built-in local one) is a fine place to run; this is information, not an error.
        return ReportLine(INFO, "GPU", gpu_line_text(snapshot))
    if snapshot.state != "gpus":
        return ReportLine(BAD, "GPU", gpu_line_text(snapshot))
    release = load_rules().newest("tensorflow")
    verdict = assess(snapshot, release)
    summary = verdict_summary(snapshot, release, verdict)
    return ReportLine(MARKS[verdict.level], "GPU", f"{gpu_line_text(snapshot)} · {summary}")


def short_gpu(probe: dict[str, Any] | None) -> str:
    """A few words for tables: the GPUs and the newest TensorFlow's verdict, or why there are none."""
    if not probe:
        return "not probed yet"
    from gpubox.remote.gpu import assess, load_rules, snapshot_from_probe

    snapshot = snapshot_from_probe(probe.get("nvidia_smi") or {})
    if snapshot.state == "no_nvidia_smi":
        return "none (CPU)"
    if snapshot.state != "gpus":
        return "unusable"
    names = sorted({gpu.name for gpu in snapshot.gpus})
    what = names[0] if len(names) == 1 else f"mixed ({len(names)} models)"
    release = load_rules().newest("tensorflow")
    return f"{len(snapshot.gpus)}× {what} · TF {release.version} {assess(snapshot, release).level}"


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
