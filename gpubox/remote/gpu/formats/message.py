"""nvidia-smi's failure messages: a driver/library mismatch, a lost GPU, no devices, no driver, a refused
``--query-gpu`` field."""

from __future__ import annotations

import re

from gpubox.remote.gpu.snapshot import SmiSnapshot, SmiState

__all__ = ["read"]

# The messages are nvidia-smi's own words (reference §4.1, captures 50-56); they arrive alone, or in the
# probe's output. A GPU that fell off the bus is named by nvidia-smi ("GPU is lost", or "Unable to determine
# the device handle … Unknown Error") and by the kernel log people paste with it ("fallen off the bus").
_STATE_MESSAGES: tuple[tuple[SmiState, re.Pattern[str]], ...] = (
    (
        "driver_mismatch",
        re.compile(r"Failed to initialize NVML: Driver/library version mismatch", re.IGNORECASE),
    ),
    (
        "gpu_lost",
        re.compile(r"Unable to determine the device handle for GPU|GPU is lost|fallen off the bus", re.I),
    ),
    ("no_devices", re.compile(r"No devices were found", re.IGNORECASE)),
    ("driver_unreachable", re.compile(r"couldn't communicate with the NVIDIA driver", re.IGNORECASE)),
    ("query_rejected", re.compile(r"is not a valid field to query", re.IGNORECASE)),
)


def read(text: str) -> SmiSnapshot | None:
    """The state one of the messages names, with the line that says it; None when *text* has none of them."""
    for state, pattern in _STATE_MESSAGES:
        if pattern.search(text):
            return SmiSnapshot(format="message", state=state, message=_said(text, pattern))
    return None


def _said(text: str, pattern: re.Pattern[str]) -> str:
    """The line that says it, with the line nvidia-smi adds to it (``NVML library version: 570.124``); a kernel
    log's message is joined from its continuation lines and said without its timestamp and ``NVRM:`` tags."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    at = next(position for position, line in enumerate(lines) if pattern.search(line))
    if "NVRM:" in lines[at]:
        start = at
        while start > 0 and not lines[start].startswith("[") and "NVRM:" in lines[start - 1]:
            start -= 1
        return " ".join(_KERNEL_TAGS.sub("", line) for line in lines[start : at + 1])
    said = lines[at]
    if at + 1 < len(lines) and lines[at + 1].startswith("NVML library version"):
        said += f" ({lines[at + 1]})"
    return said


_KERNEL_TAGS = re.compile(r"^(?:\[[^\]]*\]\s*)?NVRM:\s*")
