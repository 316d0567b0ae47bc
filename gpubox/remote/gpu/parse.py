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
from gpubox.remote.gpu.snapshot import NA, GpuSnapshot, SmiSnapshot, unanswered_snapshot

__all__ = ["offer_snapshot", "parse_nvidia_smi", "probe_snapshot", "snapshot_from_probe"]

_NOT_NVIDIA_SMI = "not an nvidia-smi table, -q text, XML (-q -x) or --query-gpu CSV output"


def parse_nvidia_smi(text: str) -> SmiSnapshot:
    """Read whatever nvidia-smi printed; never raises on odd input (see :attr:`SmiSnapshot.state`)."""
    return _complete(_read(text))


def _read(text: str) -> SmiSnapshot:
    cleaned = text.replace("\ufeff", "").strip()  # Windows shells save a BOM in front
    return read_any(cleaned) or SmiSnapshot(format="none", state="unrecognized", message=_NOT_NVIDIA_SMI)


def probe_snapshot(probe: Mapping[str, Any]) -> SmiSnapshot:
    """The snapshot behind a whole ``probe`` answer: nvidia-smi's table, with the names and compute
    capabilities the host itself gave in ``gpu_query`` (absent from agents before it)."""
    return snapshot_from_probe(probe.get("nvidia_smi") or {}, probe.get("gpu_query"))


def snapshot_from_probe(
    nvidia_smi: Mapping[str, Any], gpu_query: Mapping[str, Any] | None = None
) -> SmiSnapshot:
    """The snapshot behind an agent's nvidia-smi answer (``{available, output, reason, exit_code}``), completed
    with *gpu_query*, the answer to ``--query-gpu=index,pci.bus_id,name,compute_cap`` when the host was asked."""
    output = nvidia_smi.get("output") or ""
    if nvidia_smi.get("available"):
        return _complete(_with_query(_read(output), gpu_query))
    if output.strip():
        # nvidia-smi ran and failed; its words say why ("No devices were found", no driver, …).
        parsed = parse_nvidia_smi(output)
        if parsed.state not in ("gpus", "unrecognized"):
            return parsed
    return unanswered_snapshot(nvidia_smi)


def _with_query(snapshot: SmiSnapshot, gpu_query: Mapping[str, Any] | None) -> SmiSnapshot:
    """The host's own word on each GPU's compute capability (drivers from R510), and its full name where the
    table cut it short; matched by PCI bus id, else by index."""
    if not gpu_query or not gpu_query.get("available") or snapshot.state != "gpus":
        return snapshot
    answered = _read(str(gpu_query.get("output") or ""))
    if answered.state != "gpus":
        return snapshot
    by_bus = {_bus_key(gpu.bus_id): gpu for gpu in answered.gpus if gpu.bus_id}
    by_index = {gpu.index: gpu for gpu in answered.gpus}
    gpus = []
    for gpu in snapshot.gpus:
        said = by_bus.get(_bus_key(gpu.bus_id)) if gpu.bus_id else None
        said = said or by_index.get(gpu.index)
        if said is not None:
            if said.compute_capability_source == "nvidia-smi":
                gpu = replace(
                    gpu, compute_capability=said.compute_capability, compute_capability_source="nvidia-smi"
                )
            if gpu.name_truncated and said.name != "unknown" and said.name.startswith(gpu.name[:-3]):
                gpu = replace(gpu, name=said.name)
        gpus.append(gpu)
    return replace(snapshot, gpus=tuple(gpus))


def _bus_key(bus_id: str) -> str:
    """``00000000:18:00.0`` and ``0000:18:00.0`` name one device: compare without the domain's leading zeros."""
    domain, _, rest = bus_id.partition(":")
    return f"{domain.lstrip('0') or '0'}:{rest}".casefold()


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
