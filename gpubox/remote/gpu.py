"""What ``nvidia-smi`` says about a host's GPUs.

For now: the header facts (driver, highest CUDA the driver supports) and the GPU rows of the default table,
enough for the host report. The full compatibility verdict builds on this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["GpuSummary", "summarize_nvidia_smi"]

_DRIVER = re.compile(r"(?:Driver|KMD) Version:\s*([0-9][0-9.]*)")
_CUDA = re.compile(r"CUDA (?:UMD )?Version:\s*([0-9][0-9.]*)")
# A GPU row of the default table, narrow (<= R470) or wide (>= R525) layout: "|   0  NVIDIA L4   Off  |".
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(\S.*?)\s+(?:On|Off|WDDM|TCC)\s*\|")


@dataclass(frozen=True)
class GpuSummary:
    driver_version: str | None
    cuda_driver_max: str | None
    gpu_names: tuple[str, ...]

    def describe(self) -> str:
        parts = []
        if self.gpu_names:
            names = sorted(set(self.gpu_names))
            parts.append(f"{len(self.gpu_names)}× " + ", ".join(names))
        if self.driver_version:
            parts.append(f"driver {self.driver_version}")
        if self.cuda_driver_max:
            parts.append(f"CUDA ≤ {self.cuda_driver_max}")
        return " · ".join(parts) or "nvidia-smi answered"


def summarize_nvidia_smi(output: str) -> GpuSummary:
    driver = _DRIVER.search(output)
    cuda = _CUDA.search(output)
    names = tuple(m.group(2) for line in output.splitlines() if (m := _GPU_ROW.match(line)))
    return GpuSummary(driver.group(1) if driver else None, cuda.group(1) if cuda else None, names)
