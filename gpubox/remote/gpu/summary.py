"""A host's GPUs in a few words for people: the ``GPU`` line of the host report, the verdict marks."""

from __future__ import annotations

from collections.abc import Mapping

from gpubox.remote.gpu.snapshot import SmiSnapshot
from gpubox.remote.gpu.verdict import gpu_groups, no_gpu_reason

__all__ = ["MARKS", "describe_gpus", "gpu_line_text"]


def describe_gpus(snapshot: SmiSnapshot) -> str:
    """``1× NVIDIA A100-SXM4-40GB  cc 8.0  driver 550.54.14 (CUDA ≤ 12.4)``, as in design.md."""
    parts = []
    for gpu, indexes in gpu_groups(snapshot.gpus):
        cc = f"  cc {gpu.compute_capability}" if gpu.compute_capability else ""
        parts.append(f"{len(indexes)}× {gpu.name}{cc}")
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
