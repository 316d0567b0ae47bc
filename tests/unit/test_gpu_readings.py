"""The one reader of the GPUs' load (idle autostop's figure, the dashboard's panel) and its one "no GPU"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpubox.remote.gpu.parse import snapshot_from_probe
from gpubox.remote.gpu.readings import gpu_readings

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
NOT_INSTALLED = {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
DRIVER_DOWN = {
    "available": False,
    "exit_code": 9,
    "reason": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
}


def test_the_busiest_gpu_for_idle_autostop() -> None:
    capture = (CAPTURES / "30_h200_590_query-gpu-full.csv.txt").read_text()
    assert gpu_readings({"available": True, "output": capture}).busiest() == (0.0, "GPU 0 %")
    shaped = "index, name, utilization.gpu [%]\n0, NVIDIA H200, 90 %\n1, NVIDIA H200, 3 %\n"
    assert gpu_readings({"available": True, "output": shaped}).busiest() == (90.0, "GPU 90 % (busiest of 2)")
    mig = "index, name, utilization.gpu [%]\n0, NVIDIA H100 80GB HBM3, [N/A]\n"
    assert gpu_readings({"available": True, "output": mig}).busiest() == (
        None,
        "1 GPU, utilisation not reported",
    )
    assert gpu_readings(NOT_INSTALLED).busiest() == (None, "no GPU")
    assert gpu_readings(DRIVER_DOWN).busiest() == (None, f"no usable GPU ({DRIVER_DOWN['reason']})")
    assert gpu_readings(None).busiest() == (None, "not sampled")


ANSWERS: list[dict[str, Any]] = [
    NOT_INSTALLED,
    DRIVER_DOWN,
    {
        "available": False,
        "exit_code": 6,
        "output": "No devices were found\n",
        "reason": "No devices were found",
    },
    {"available": False, "reason": "nvidia-smi did not answer within 10 s", "output": ""},
    {"available": True, "exit_code": 0, "output": "garbage"},
    {"available": True, "exit_code": 0, "output": "index, name, utilization.gpu [%]\n0, NVIDIA L4, 5 %\n"},
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_no_gpu_means_what_check_and_the_host_report_mean(answer: dict[str, Any]) -> None:
    assert gpu_readings(answer).no_gpu == (snapshot_from_probe(answer).state == "no_nvidia_smi")
