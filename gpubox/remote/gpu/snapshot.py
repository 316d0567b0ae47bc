"""The facts nvidia-smi gives about a host's GPUs, as frozen records.

A metric nvidia-smi did not give is :data:`NA` (nvitop's convention: it prints as ``N/A`` and is falsy), never
an exception; :class:`SmiSnapshot` says in :attr:`~SmiSnapshot.state` and :attr:`~SmiSnapshot.message` what
could not be read. The ``*_or_na`` helpers are how every nvidia-smi form turns a cell into a value or NA.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "FAULT_WORDS",
    "NA",
    "GpuSnapshot",
    "NaType",
    "SmiFormat",
    "SmiSnapshot",
    "SmiState",
    "fault_in",
    "int_or_na",
    "no_gpu_cell",
    "unanswered_snapshot",
    "value_or_na",
    "version_or_na",
]


class NaType(str):
    """A metric nvidia-smi did not give: prints as ``N/A`` and is falsy (nvitop's convention)."""

    _instance: NaType | None = None

    def __new__(cls) -> NaType:
        if cls._instance is None:
            cls._instance = super().__new__(cls, "N/A")
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NA"


NA = NaType()

SmiFormat = Literal["table", "xml", "text", "csv", "message", "none"]
SmiState = Literal[
    "gpus",  # nvidia-smi listed GPUs
    "no_nvidia_smi",  # not installed: a CPU-only host
    "no_devices",  # "No devices were found"
    "driver_unreachable",  # "couldn't communicate with the NVIDIA driver"
    "driver_mismatch",  # "Failed to initialize NVML: Driver/library version mismatch"
    "gpu_lost",  # "Unable to determine the device handle for GPU …", "GPU is lost", "fallen off the bus"
    "query_rejected",  # an old nvidia-smi refused a --query-gpu field
    "failed",  # nvidia-smi ran but failed in a way gpubox does not know
    "unrecognized",  # text that is none of the forms above
]


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    name: str
    """As nvidia-smi printed it; the default table cuts long names to ``…...``."""
    memory_total_mib: int | NaType = NA
    memory_used_mib: int | NaType = NA
    utilization_gpu_percent: int | NaType = NA
    bus_id: str | NaType = NA
    uuid: str | NaType = NA
    architecture: str | NaType = NA
    mig_mode: str | NaType = NA
    mig_devices: int = 0
    compute_capability: str | NaType = NA
    compute_capability_source: str = "unknown"
    """``nvidia-smi`` (its compute_cap field), ``name table``, ``name table (truncated name)`` or why unknown."""
    driver_model: str | NaType = NA
    """``WDDM``, ``TCC`` or ``MCDM`` on native Windows (the table's Driver-Model column); NA on Linux and WSL."""
    error_state: str = ""
    """What nvidia-smi printed instead of this GPU's figures when the GPU is in a fault state (``ERR!``,
    ``GPU requires reset``); "" for a healthy GPU."""
    memory_not_supported: bool = False
    """nvidia-smi says memory is ``Not Supported``: a unified-memory GPU (GB10) whose memory is the host's."""
    ecc_uncorrected: int | NaType = NA
    """Uncorrectable ECC errors since the driver loaded (the table's ``Volatile Uncorr. ECC``)."""
    ecc_pending: bool = False
    """A memory row remap or page retirement waits for a GPU reset (``-q``: ``Pending : Yes``)."""

    @property
    def name_truncated(self) -> bool:
        return self.name.endswith("...")

    @property
    def usable(self) -> bool:
        """False when nvidia-smi shows the GPU in a fault state: no framework can use it until it is reset."""
        return not self.error_state


@dataclass(frozen=True)
class SmiSnapshot:
    format: SmiFormat
    state: SmiState
    gpus: tuple[GpuSnapshot, ...] = ()
    driver_version: str | NaType = NA
    """From ``Driver Version:`` (or ``KMD Version:``), never from the ``NVIDIA-SMI`` banner: in a container or
    WSL the nvidia-smi binary can be older or newer than the driver that actually runs."""
    cuda_driver_max: str | NaType = NA
    """The highest CUDA the driver supports (not an installed toolkit)."""
    cuda_driver_max_source: str | NaType = NA
    """``nvidia-smi`` when printed, ``driver table`` when gpubox derived it from the driver version."""
    smi_version: str | NaType = NA
    attached_gpus: int | NaType = NA
    message: str = ""
    """What nvidia-smi (or the probe) said when there is no GPU list, or what could not be read."""


def unanswered_snapshot(nvidia_smi: Mapping[str, Any]) -> SmiSnapshot:
    """The snapshot of an agent's nvidia-smi answer that lists no GPUs and says nothing readable: nvidia-smi is
    not there (a CPU host), or it failed; its *reason* is the message."""
    reason = str(nvidia_smi.get("reason") or "nvidia-smi gave no answer")
    if "exit_code" not in nvidia_smi and "not found" in reason:
        return SmiSnapshot(format="none", state="no_nvidia_smi", message=reason)
    return SmiSnapshot(format="none", state="failed", message=reason)


def no_gpu_cell(snapshot: SmiSnapshot) -> str | None:
    """The GPU cell of tables for a snapshot without GPUs (``none (CPU)``, ``unusable``), whatever release it is
    judged for; None when it lists GPUs (their cell needs the verdict: :attr:`GpuSummary.cell`)."""
    if snapshot.state == "no_nvidia_smi":
        return "none (CPU)"
    if snapshot.state != "gpus":
        return "unusable"
    return None


FAULT_WORDS: tuple[str, ...] = ("GPU requires reset", "ERR!")
"""What nvidia-smi prints in place of a figure it cannot read from a GPU in a fault state: ``[GPU requires
reset]`` in ``--query-gpu`` CSV and ``-q``, ``ERR!`` in the default table."""


def fault_in(values: Iterable[str | None]) -> str:
    """The first fault word among *values* (see :data:`FAULT_WORDS`), "" when there is none."""
    for value in values:
        if value:
            for word in FAULT_WORDS:
                if word.casefold() in value.casefold():
                    return word
    return ""


_NA_WORDS = frozenset({"n/a", "not found", "not supported", "unknown", "unknown error", ""})


def value_or_na(value: str | None) -> str | NaType:
    """A value or NA: ``[N/A]``, ``[Not Supported]``, ``[Requested functionality has been deprecated]``…"""
    if value is None:
        return NA
    text = value.strip()
    if (text.startswith("[") and text.endswith("]")) or text.lower() in _NA_WORDS:
        return NA
    return text


def int_or_na(value: str | None) -> int | NaType:
    """``"81559 MiB"``, ``"81559"``, ``"17 %"`` → the number; anything else → NA."""
    text = value_or_na(value)
    if text is NA:
        return NA
    found = re.match(r"(\d+)", text)
    return int(found.group(1)) if found else NA


def version_or_na(value: str | None) -> str | NaType:
    text = value_or_na(value)
    return text if text and re.fullmatch(r"\d+(?:\.\d+)+", text) else NA
