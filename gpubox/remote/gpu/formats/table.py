"""The default ``nvidia-smi`` table, in its old narrow and new wide layouts (and the ``MIG devices`` box)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from gpubox.remote.gpu.snapshot import NA, GpuSnapshot, SmiSnapshot, fault_in, int_or_na

__all__ = ["read"]

# The "| NVIDIA-SMI 550.54.14 …" line that heads every table tells it from the other forms.
_BANNER = re.compile(r"^\s*\|\s*NVIDIA-SMI\s+\S", re.MULTILINE)
_SMI_VERSION = re.compile(r"NVIDIA-SMI\s+(\d+(?:\.\d+)+)")
# Drivers from R610 print "KMD Version" / "CUDA UMD Version" instead (capture 16).
_DRIVER_VERSION = re.compile(r"(?:Driver|KMD) Version:\s*(\d+(?:\.\d+)+)")
_CUDA_VERSION = re.compile(r"CUDA (?:UMD )?Version:\s*(\d+(?:\.\d+)+)")
# "   0  NVIDIA H100 80GB HBM3          On  ": index, name, then Persistence-M (Linux) or Driver-Model (Windows).
_GPU_CELL = re.compile(r"^(\d+)\s+(.+?)\s+(On|Off|WDDM|TCC|WDM|MCDM|N/A)$")
_WINDOWS_DRIVER_MODELS = frozenset({"WDDM", "TCC", "WDM", "MCDM"})
_BUS_ID = re.compile(r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])")
_MEMORY = re.compile(r"(\d+)MiB\s*/\s*(\d+)MiB")
_PERCENT = re.compile(r"^(\d+)%")
# A MIG device row: "  0    2   0   0  " = GPU, GPU instance, compute instance, MIG device.
_MIG_CELL = re.compile(r"^(\d+)\s+(?:\d+|N/A)\s+(?:\d+|N/A)\s+\d+$")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _box_rows(lines: Sequence[str], start: int) -> list[list[str]]:
    """The rows of the box whose ``|===…`` line is at *start*, grouped between ``+---`` borders."""
    groups: list[list[str]] = []
    current: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith(("+", "|-")):
            if current:
                groups.append(current)
            current = []
            continue
        if not line.startswith("|"):
            break
        current.append(line)
    if current:
        groups.append(current)
    return groups


def _box_closed(lines: Sequence[str], start: int) -> bool:
    """Whether the box whose ``|===…`` line is at *start* ends with its ``+---`` border, i.e. was not cut off."""
    last = ""
    for line in lines[start + 1 :]:
        if not line.startswith(("|", "+")):
            break
        last = line
    return last.startswith("+")


def _first_index(lines: Sequence[str], start: int, marker: re.Pattern[str] | str) -> int | None:
    """The first line from *start* on that contains *marker* (a substring or a pattern)."""
    for position in range(start, len(lines)):
        line = lines[position]
        if (marker.search(line) is not None) if isinstance(marker, re.Pattern) else (marker in line):
            return position
    return None


def read(text: str) -> SmiSnapshot | None:
    """The table, or None when *text* has no ``| NVIDIA-SMI`` banner."""
    if not _BANNER.search(text):
        return None
    lines = [line.strip() for line in text.splitlines()]
    smi = _SMI_VERSION.search(text)
    driver = _DRIVER_VERSION.search(text)
    cuda = _CUDA_VERSION.search(text)
    header = _first_index(lines, 0, "Bus-Id")
    ruler = _first_index(lines, header, re.compile(r"^\|=")) if header is not None else None
    mig_counts = _mig_device_counts(lines)
    gpus: list[GpuSnapshot] = []
    for group in _box_rows(lines, ruler) if ruler is not None else []:
        first = _cells(group[0])
        found = _GPU_CELL.match(first[0])
        if not found:
            continue
        index = int(found.group(1))
        bus = _BUS_ID.search(first[1]) if len(first) > 1 else None
        second = _cells(group[1]) if len(group) > 1 else []
        memory = _MEMORY.search(group[1]) if len(group) > 1 else None
        utilization = _PERCENT.match(second[2]) if len(second) > 2 else None
        third = _cells(group[2]) if len(group) > 2 else []
        mig = third[2] if len(third) > 2 and third[2] in ("Enabled", "Disabled") else NA
        mode = found.group(3)
        ecc = first[2] if len(first) > 2 else None
        gpus.append(
            GpuSnapshot(
                index=index,
                name=found.group(2),
                memory_total_mib=int(memory.group(2)) if memory else NA,
                memory_used_mib=int(memory.group(1)) if memory else NA,
                utilization_gpu_percent=int(utilization.group(1)) if utilization else NA,
                bus_id=bus.group(1) if bus else NA,
                mig_mode=mig,
                mig_devices=mig_counts.get(index, 0),
                driver_model=mode if mode in _WINDOWS_DRIVER_MODELS else NA,
                # A GPU in a fault state prints ERR! over its name and figures (capture 57).
                error_state=fault_in(cell for line in group for cell in _cells(line)),
                memory_not_supported=len(second) > 1 and second[1].startswith("Not Supported"),
                ecc_uncorrected=int_or_na(ecc) if ecc and ecc.isdigit() else NA,
            )
        )
    if gpus and ruler is not None and not _box_closed(lines, ruler):
        # Reading on would report fewer GPUs than the machine has, as if that were all of them.
        return SmiSnapshot(
            format="table",
            state="unrecognized",
            message=f"the nvidia-smi table is cut off after GPU {gpus[-1].index} (truncated output)",
        )
    return SmiSnapshot(
        format="table",
        state="gpus" if gpus else "unrecognized",
        gpus=tuple(gpus),
        driver_version=driver.group(1) if driver else NA,
        cuda_driver_max=cuda.group(1) if cuda else NA,
        cuda_driver_max_source="nvidia-smi" if cuda else NA,
        smi_version=smi.group(1) if smi else NA,
        message="" if gpus else "the nvidia-smi table has no GPU row gpubox can read",
    )


def _mig_device_counts(lines: Sequence[str]) -> dict[int, int]:
    title = _first_index(lines, 0, "MIG devices:")
    ruler = _first_index(lines, title, re.compile(r"^\|=")) if title is not None else None
    counts: dict[int, int] = {}
    for group in _box_rows(lines, ruler) if ruler is not None else []:
        found = _MIG_CELL.match(_cells(group[0])[0])
        if found:
            counts[int(found.group(1))] = counts.get(int(found.group(1)), 0) + 1
    return counts
