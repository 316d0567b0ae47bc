"""nvidia-smi's one-line failure messages: no devices, no driver, a refused ``--query-gpu`` field."""

from __future__ import annotations

import re

from gpubox.remote.gpu.snapshot import SmiSnapshot, SmiState

__all__ = ["read"]

# The messages are nvidia-smi's own words (reference §4.1); they arrive alone, or in the probe's output.
_STATE_MESSAGES: tuple[tuple[SmiState, re.Pattern[str]], ...] = (
    ("no_devices", re.compile(r"No devices were found", re.IGNORECASE)),
    ("driver_unreachable", re.compile(r"couldn't communicate with the NVIDIA driver", re.IGNORECASE)),
    ("query_rejected", re.compile(r"is not a valid field to query", re.IGNORECASE)),
)


def read(text: str) -> SmiSnapshot | None:
    """The state one of the messages names, with the line that says it; None when *text* has none of them."""
    for state, pattern in _STATE_MESSAGES:
        if pattern.search(text):
            first = next((line.strip() for line in text.splitlines() if pattern.search(line)), text)
            return SmiSnapshot(format="message", state=state, message=first)
    return None
