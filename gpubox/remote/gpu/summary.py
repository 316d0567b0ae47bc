"""A host's GPUs in a few words for people, judged for one framework release: the ``GPU`` line of
``gpubox up``'s host report, the GPU cell of ``gpubox hosts``, the dashboard's badge.

:func:`summarize` is the one summary, of the release the one rule chose
(:func:`~gpubox.remote.gpu.frameworks.choose_framework`: the project's pin, else the newest gpubox knows, for
``up``, ``hosts`` and the dashboard; ``gpubox check`` also asks the project's env), and it says which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gpubox.remote.gpu.health import no_gpu_reason
from gpubox.remote.gpu.rules import CompatRules, FrameworkRelease
from gpubox.remote.gpu.snapshot import SmiSnapshot, no_gpu_cell
from gpubox.remote.gpu.verdict import Verdict, assess, gpu_groups, verdict_summary

__all__ = ["MARKS", "GpuSummary", "describe_gpus", "gpu_line_text", "summarize"]


def describe_gpus(snapshot: SmiSnapshot) -> str:
    """``1× NVIDIA A100-SXM4-40GB  cc 8.0  driver 550.54.14 (CUDA ≤ 12.4)``, as in design.md."""
    parts = []
    for gpu, indexes in gpu_groups(gpu for gpu in snapshot.gpus if gpu.usable):
        cc = f"  cc {gpu.compute_capability}" if gpu.compute_capability else ""
        parts.append(f"{len(indexes)}× {gpu.name}{cc}")
    for word in sorted({gpu.error_state for gpu in snapshot.gpus if not gpu.usable}):
        count = sum(1 for gpu in snapshot.gpus if gpu.error_state == word)
        parts.append(f"{count} in a fault state ({word})")
    text = " + ".join(parts)
    if snapshot.driver_version:
        text += f"  driver {snapshot.driver_version}"
        if snapshot.cuda_driver_max:
            text += f" (CUDA ≤ {snapshot.cuda_driver_max})"
    return text or "nvidia-smi answered"


MARKS: Mapping[str, str] = {"ok": "✓", "warn": "!", "fail": "✗"}


def gpu_line_text(snapshot: SmiSnapshot) -> str:
    """The words after ``GPU`` in the host report: what is there, or why there is no usable GPU."""
    if snapshot.state == "gpus":
        return describe_gpus(snapshot)
    return no_gpu_reason(snapshot)


_SHORT_NAMES = {"tensorflow": "TF"}


@dataclass(frozen=True)
class GpuSummary:
    snapshot: SmiSnapshot
    release: FrameworkRelease
    """The release judged, as the caller chose it; the words below name it."""
    verdict: Verdict
    chosen_by: str = ""
    """Why that release (``pinned in requirements.txt``, ``newest gpubox knows``): said after the judgement."""

    @property
    def mark(self) -> str:
        """``·`` for a CPU host (a fine place to run: information, not an error), ``✗`` without a usable GPU,
        else the verdict's mark."""
        if self.snapshot.state == "no_nvidia_smi":
            return "·"
        if self.snapshot.state != "gpus":
            return "✗"
        return MARKS[self.verdict.level]

    @property
    def judgement(self) -> str:
        """``TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible (pinned in requirements.txt)``."""
        said = verdict_summary(self.snapshot, self.release, self.verdict)
        return f"{said} ({self.chosen_by})" if self.chosen_by else said

    @property
    def line(self) -> str:
        """The words after ``GPU`` in the host report: the GPUs and the judgement, or why there are none."""
        if self.snapshot.state != "gpus":
            return gpu_line_text(self.snapshot)
        return f"{gpu_line_text(self.snapshot)} · {self.judgement}"

    @property
    def cell(self) -> str:
        """A few words for tables: ``1× NVIDIA L4 · TF 2.21 ok``, ``none (CPU)``, ``unusable``."""
        cell = no_gpu_cell(self.snapshot)
        if cell is not None:
            return cell
        usable = [gpu for gpu in self.snapshot.gpus if gpu.usable]
        names = sorted({gpu.name for gpu in usable})
        what = (
            "no usable GPU" if not names else names[0] if len(names) == 1 else f"mixed ({len(names)} models)"
        )
        faulted = len(self.snapshot.gpus) - len(usable)
        gpus = f"{len(usable)}× {what}" + (f" (+{faulted} faulted)" if faulted else "")
        short = _SHORT_NAMES.get(self.release.name, self.release.display_name)
        return f"{gpus} · {short} {self.release.version} {self.verdict.level}"

    @property
    def label(self) -> str:
        """The GPUs alone, for the dashboard's badge: ``8× NVIDIA H100 80GB HBM3``, ``5× mixed``."""
        if self.snapshot.state == "no_nvidia_smi":
            return "none (CPU)"
        names = sorted({gpu.name for gpu in self.snapshot.gpus if gpu.usable})
        if not names:
            return "no usable GPU"
        faulted = sum(1 for gpu in self.snapshot.gpus if not gpu.usable)
        label = f"{len(self.snapshot.gpus) - faulted}× {names[0] if len(names) == 1 else 'mixed'}"
        return label + (f" (+{faulted} faulted)" if faulted else "")


def summarize(
    snapshot: SmiSnapshot, release: FrameworkRelease, rules: CompatRules | None = None, *, chosen_by: str = ""
) -> GpuSummary:
    """*snapshot*'s GPUs judged for *release* (the verdict of :func:`~gpubox.remote.gpu.verdict.assess`,
    without suggestions); *chosen_by* says why that release."""
    return GpuSummary(snapshot, release, assess(snapshot, release, rules), chosen_by)
