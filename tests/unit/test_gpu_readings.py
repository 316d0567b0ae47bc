"""The one reader of the GPUs' load (idle autostop's figure, the dashboard's panel) and its one "no GPU"."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpubox.config import HostConfig
from gpubox.dashboard.poller import HostPoller, PollRequest
from gpubox.remote.gpu.parse import snapshot_from_probe
from gpubox.remote.gpu.readings import GpuReading, gpu_readings

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
NOT_INSTALLED = {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
DRIVER_DOWN = {
    "available": False,
    "exit_code": 9,
    "reason": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
}
# An nvidia-smi that runs and fails with "not found" in its words: a wrapper whose driver binary went away.
WRAPPER_LOST = {
    "available": False,
    "exit_code": 127,
    "output": "/usr/bin/nvidia-smi: 3: exec: /usr/lib/nvidia/current/nvidia-smi: not found\n",
    "reason": "/usr/bin/nvidia-smi: 3: exec: /usr/lib/nvidia/current/nvidia-smi: not found",
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


def test_the_dashboards_gpus_and_notes() -> None:
    readings = gpu_readings(
        {
            "available": True,
            "output": "index, name, utilization.gpu [%], memory.used [MiB], "
            "memory.total [MiB]\n0, NVIDIA L4, [N/A], 10 MiB, 23034 MiB\n",
        }
    )
    assert readings.gpus == (GpuReading(0, "NVIDIA L4", None, 10.0, 23034.0),) and readings.note == ""
    assert gpu_readings({"available": False, "reason": "nvidia-smi not found on PATH"}).note == "no GPU"
    assert gpu_readings(DRIVER_DOWN).note == DRIVER_DOWN["reason"]
    assert gpu_readings(None).note == "not sampled"


def test_an_nvidia_smi_that_fails_saying_not_found_is_not_a_cpu_host() -> None:
    """The dashboard used to call any "not found" in the reason "no GPU" and stop asking for good, while the
    monitor and ``gpubox check`` called the same answer an unusable GPU; all three now say the latter."""
    readings = gpu_readings(WRAPPER_LOST)
    assert not readings.no_gpu and readings.note == WRAPPER_LOST["reason"]
    assert readings.busiest() == (None, f"no usable GPU ({WRAPPER_LOST['reason']})")
    assert snapshot_from_probe(WRAPPER_LOST).state == "failed"

    asked: list[bool] = []

    def dash(op: str, args: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        asked.append(args["gpu"])
        return {"nvidia_smi": WRAPPER_LOST if args["gpu"] else None, "runs": []}, b""

    session = SimpleNamespace(agent=SimpleNamespace(request_with_blob=dash), remote_dir="~/gpubox/p")
    poller = HostPoller(HostConfig("box"), "p", connect=lambda: session)
    for _ in range(3):
        sample = poller.poll(PollRequest())
    assert asked == [True, True, True] and sample.gpu_note == WRAPPER_LOST["reason"]


def test_a_cpu_host_is_asked_once() -> None:
    asked: list[bool] = []

    def dash(op: str, args: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        asked.append(args["gpu"])
        return {"nvidia_smi": NOT_INSTALLED if args["gpu"] else None, "runs": []}, b""

    session = SimpleNamespace(agent=SimpleNamespace(request_with_blob=dash), remote_dir="~/gpubox/p")
    poller = HostPoller(HostConfig("box"), "p", connect=lambda: session)
    notes = [poller.poll(PollRequest()).gpu_note for _ in range(3)]
    assert asked == [True, False, False] and notes == ["no GPU", "not sampled", "not sampled"]


ANSWERS: list[dict[str, Any]] = [
    NOT_INSTALLED,
    DRIVER_DOWN,
    WRAPPER_LOST,
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
