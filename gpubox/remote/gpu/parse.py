"""Reading nvidia-smi: whichever form it printed (see :mod:`gpubox.remote.gpu.formats`), the agent's answers
that carry it, and what a cloud offer says instead; with what the rules know filled in.

The parser never raises on odd input: text that is no form nvidia-smi prints is a snapshot in state
``unrecognized`` with a message saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gpubox.remote.gpu.formats import read_any
from gpubox.remote.gpu.rules import load_rules
from gpubox.remote.gpu.snapshot import NA, GpuSnapshot, SmiSnapshot

__all__ = ["offer_snapshot", "parse_nvidia_smi", "snapshot_from_probe"]

_NOT_NVIDIA_SMI = "not an nvidia-smi table, XML (-q -x) or --query-gpu CSV output"


def parse_nvidia_smi(text: str) -> SmiSnapshot:
    """Read whatever nvidia-smi printed; never raises on odd input (see :attr:`SmiSnapshot.state`)."""
    cleaned = text.replace("\ufeff", "").strip()  # Windows shells save a BOM in front
    snapshot = read_any(cleaned) or SmiSnapshot(format="none", state="unrecognized", message=_NOT_NVIDIA_SMI)
    return _complete(snapshot)


def snapshot_from_probe(nvidia_smi: Mapping[str, Any]) -> SmiSnapshot:
    """The snapshot behind the agent's ``probe`` answer: ``{available, output, reason, exit_code}``."""
    output = nvidia_smi.get("output") or ""
    if nvidia_smi.get("available"):
        return parse_nvidia_smi(output)
    reason = str(nvidia_smi.get("reason") or "nvidia-smi gave no answer")
    if output.strip():
        # nvidia-smi ran and failed; its words say why ("No devices were found", no driver, …).
        parsed = parse_nvidia_smi(output)
        if parsed.state not in ("gpus", "unrecognized"):
            return parsed
    if "exit_code" not in nvidia_smi and "not found" in reason:
        return SmiSnapshot(format="none", state="no_nvidia_smi", message=reason)
    return SmiSnapshot(format="none", state="failed", message=reason)


def _complete(snapshot: SmiSnapshot) -> SmiSnapshot:
    """Add what the rules know and nvidia-smi did not say: compute capabilities, the driver's CUDA."""
    rules = load_rules()
    gpus = []
    for gpu in snapshot.gpus:
        if not gpu.compute_capability:
            capability, how = rules.capability(gpu.name)
            gpu = replace(gpu, compute_capability=capability, compute_capability_source=how)
        gpus.append(gpu)
    cuda, source = snapshot.cuda_driver_max, snapshot.cuda_driver_max_source
    if not cuda and snapshot.driver_version:
        derived = rules.cuda_for_driver(snapshot.driver_version)
        if derived:
            cuda, source = derived, "driver table"
    return replace(snapshot, gpus=tuple(gpus), cuda_driver_max=cuda, cuda_driver_max_source=source)


def offer_snapshot(
    gpu_name: str,
    count: int,
    *,
    memory_gb: float | None = None,
    compute_capability: str | None = None,
    driver_version: str | None = None,
    cuda_max: str | None = None,
) -> SmiSnapshot:
    """What nvidia-smi would say about a machine a cloud provider offers, from what the offer tells: the GPU
    name always, its compute capability, driver and highest CUDA where the provider says (vast.ai does)."""
    gpus = tuple(
        GpuSnapshot(
            index=index,
            name=gpu_name,
            memory_total_mib=int(memory_gb * 1024) if memory_gb else NA,
            compute_capability=compute_capability or NA,
            compute_capability_source="the provider" if compute_capability else "unknown",
        )
        for index in range(max(1, count))
    )
    snapshot = SmiSnapshot(
        format="none",
        state="gpus",
        gpus=gpus,
        driver_version=driver_version or NA,
        cuda_driver_max=cuda_max or NA,
        cuda_driver_max_source="the provider" if cuda_max else NA,
        attached_gpus=len(gpus),
    )
    return _complete(snapshot)
