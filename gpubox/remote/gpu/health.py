"""What state the host's GPUs are in, apart from which framework runs on them: a driver stack nvidia-smi cannot
use, a GPU in a fault state, memory errors waiting for a reset, unified memory, MIG, native Windows. Each is
one line saying what it means and what to do; :func:`~gpubox.remote.gpu.verdict.assess` decides how much it
weighs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpubox.remote.gpu.rules import CompatRules, FrameworkRelease, version_numbers
from gpubox.remote.gpu.snapshot import GpuSnapshot, SmiSnapshot

__all__ = ["GpuFindings", "gpu_findings", "no_gpu_reason", "windows_failure"]

_NO_GPU_REASONS: Mapping[str, str] = {
    "no_nvidia_smi": "no NVIDIA GPU: training runs on CPU ({message})",
    "no_devices": (
        "no usable NVIDIA GPU: the driver is loaded but sees no GPU ({message}); on a rented machine the GPU was "
        "not attached (ask the provider or take another machine), else check `lspci | grep -i nvidia` and the "
        "kernel log for NVRM errors"
    ),
    "driver_unreachable": (
        "no usable NVIDIA GPU: the NVIDIA kernel module is not loaded ({message}); after a kernel or driver "
        "update, reboot the host, or reinstall the driver for the running kernel"
    ),
    "driver_mismatch": (
        "no usable NVIDIA GPU: the NVIDIA driver was upgraded but the old kernel module still runs ({message}); "
        "reboot the host, or reload the nvidia kernel modules (stop everything using the GPU, then "
        "`rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && modprobe nvidia`)"
    ),
    "gpu_lost": (
        "no usable NVIDIA GPU: a GPU has fallen off the bus and nvidia-smi cannot reach it ({message}); reboot "
        "the host (a power cycle if a reboot is not enough); if it happens again the GPU, its power or its slot "
        "is failing: on a rented machine, take another one"
    ),
    "query_rejected": "nvidia-smi refused the query ({message})",
    "failed": "no usable NVIDIA GPU: {message}",
    "unrecognized": "gpubox could not read the nvidia-smi output ({message})",
}


def no_gpu_reason(snapshot: SmiSnapshot) -> str:
    """Why a snapshot without GPUs has none, and what to do, in words (its state and what nvidia-smi said)."""
    return _NO_GPU_REASONS[snapshot.state].format(message=snapshot.message)


def _which(gpus: Sequence[GpuSnapshot]) -> str:
    indexes = [str(gpu.index) for gpu in gpus]
    return f"GPU {indexes[0]}" if len(indexes) == 1 else f"GPUs {', '.join(indexes)}"


@dataclass(frozen=True)
class GpuFindings:
    faulted: tuple[GpuSnapshot, ...]
    """GPUs in a fault state: no framework can use them until they are reset."""
    lines: tuple[str, ...]
    """One line per finding (faults first), each saying what it means and what to do."""


def gpu_findings(snapshot: SmiSnapshot) -> GpuFindings:
    """The GPUs' own state: faults, pending memory repairs, uncorrectable ECC errors, unified memory, MIG."""
    gpus = snapshot.gpus
    faulted = tuple(gpu for gpu in gpus if not gpu.usable)
    lines: list[str] = []
    healthy = ",".join(str(gpu.index) for gpu in gpus if gpu.usable)
    # A framework opens every GPU it can see: a faulted one must be hidden from runs until it is reset.
    meanwhile = f"; until then start runs with CUDA_VISIBLE_DEVICES={healthy}" if healthy else ""
    for word in sorted({gpu.error_state for gpu in faulted}):
        which = [gpu for gpu in faulted if gpu.error_state == word]
        reset = " ".join(f"`nvidia-smi -r -i {gpu.index}`" for gpu in which)
        lines.append(
            f"{_which(which)} {'is' if len(which) == 1 else 'are'} in a fault state (nvidia-smi shows "
            f"{word!r} instead of its figures, typically after an Xid error): no framework can use it; stop what "
            f"runs on it and reset it ({reset}) or reboot the host{meanwhile}"
        )
    pending = [gpu for gpu in gpus if gpu.usable and gpu.ecc_pending]
    if pending:
        lines.append(
            f"{_which(pending)}: a memory row remap or page retirement is pending after ECC errors; it takes effect "
            "only after a GPU reset (`nvidia-smi -r`) or a reboot; do that before a long run"
        )
    errors = [
        gpu for gpu in gpus if gpu.usable and isinstance(gpu.ecc_uncorrected, int) and gpu.ecc_uncorrected
    ]
    if errors:
        counts = ", ".join(f"{gpu.ecc_uncorrected} on GPU {gpu.index}" for gpu in errors)
        lines.append(
            f"uncorrectable ECC memory errors since the driver loaded ({counts}): a run on that GPU may crash or "
            "compute on corrupted memory; reset it or reboot, and on a rented machine report it"
        )
    unified = [gpu for gpu in gpus if gpu.usable and gpu.memory_not_supported]
    if unified:
        lines.append(
            f"{_which(unified)} {unified[0].name}: nvidia-smi reports its memory as 'Not Supported' (unified memory "
            "shared with the CPU, as on DGX Spark): its memory is the host's RAM, so size batches by the free RAM"
        )
    for gpu in gpus:
        if gpu.usable and gpu.mig_mode == "Enabled":
            if gpu.mig_devices:
                lines.append(
                    f"GPU {gpu.index} is split into {gpu.mig_devices} MIG devices: a process sees only the slices in "
                    "its CUDA_VISIBLE_DEVICES (by MIG UUID, `nvidia-smi -L`), never the whole GPU"
                )
            else:
                lines.append(
                    f"GPU {gpu.index} is in MIG mode: a process sees only the MIG slices in its "
                    "CUDA_VISIBLE_DEVICES (by MIG UUID, `nvidia-smi -L`), never the whole GPU"
                )
    return GpuFindings(faulted, tuple(lines))


def windows_failure(snapshot: SmiSnapshot, release: FrameworkRelease, rules: CompatRules) -> str | None:
    """Why *release* cannot use the GPUs of a native Windows host (a Driver-Model column: WDDM, TCC), if so.
    WSL2 shows the Linux table (Persistence-M), and frameworks without a Windows limit in the rules (PyTorch)
    are judged on driver and compute capability alone."""
    models = sorted({str(gpu.driver_model) for gpu in snapshot.gpus if gpu.driver_model})
    last = rules.windows_last_gpu_release.get(release.name)
    if not models or last is None or version_numbers(release.version)[:2] <= version_numbers(last)[:2]:
        return None
    return (
        f"native Windows (driver model {', '.join(models)}): {release.display_name} has no native Windows GPU "
        f"support after {last}, so {release.label} runs on the CPU there: run it under WSL2 (the Linux wheels "
        f"there use this GPU), or pin {release.name}=={last} on native Windows"
    )
