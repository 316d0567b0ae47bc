"""nvidia-smi forms beyond the plain captures: CSV with and without header or units, the failure messages,
what the agent's probe hands over, N/A values, and names cut short by the table.

Inputs are published nvidia-smi output only. Where a case needs a variant, it is built from a real capture
by removing lines, and the test says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubox.remote.gpu.check import run_check
from gpubox.remote.gpu.parse import parse_nvidia_smi, snapshot_from_probe
from gpubox.remote.gpu.rules import load_rules
from gpubox.remote.gpu.snapshot import NA, GpuSnapshot

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
H200_CSV = CAPTURES / "30_h200_590_query-gpu-full.csv.txt"

# Published samples quoted in shared/reference/gpu-compat-and-pricing.md §4.1 (real output, [V] there).
# tensorlakeai/indexify indexify/src/indexify/executor/host_resources/nvidia_gpu.py:
# --query-gpu=index,name,uuid --format=csv,noheader (no header, no units).
INDEXIFY_NOHEADER = """\
0, NVIDIA A100-SXM4-80GB, GPU-89fdc1e1-18b2-f499-c12b-82bcb9bfb3fa
1, NVIDIA A100-PCIE-40GB, GPU-e9c9aa65-bff3-405a-ab7c-dc879cc88169
2, NVIDIA H100 80GB HBM3, GPU-8c35f4c9-4dff-c9a2-866f-afb5d82e1dd7
3, Tesla T4, GPU-2a7fadae-a692-1c44-2c57-6645a0d117e4
4, NVIDIA RTX A6000, GPU-efe4927a-743f-e4cc-28bb-da604f545b6d
5, NVIDIA A10, GPU-12463b8c-40bb-7322-6c7a-ef48bd7bd39b
"""
# triton-inference-server/server PR #8070: --query-gpu=compute_cap,compute_mode,driver_version,name,index
# --format=csv (a header, and no field here carries a unit).
TRITON_WITH_HEADER = """\
compute_cap, compute_mode, driver_version, name, index
7.0, Default, 570.86.15, NVIDIA TITAN V, 0
8.9, Default, 570.86.15, NVIDIA RTX 5880 Ada Generation, 1
"""
# huggingface/candle#733, NVIDIA/TensorRT-LLM PR #735 (nvidia-smi 470.x).
COMPUTE_CAP_REJECTED = 'Field "compute_cap" is not a valid field to query.\n'
# The two messages as nvidia-smi prints them (reference §4.1).
NO_DEVICES = "No devices were found\n"
NO_DRIVER = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"


def test_csv_with_header_and_units() -> None:
    snapshot = parse_nvidia_smi(H200_CSV.read_text())
    (gpu,) = snapshot.gpus
    assert (snapshot.format, snapshot.driver_version, snapshot.attached_gpus) == ("csv", "590.48.01", 1)
    assert (gpu.index, gpu.name, gpu.memory_total_mib, gpu.memory_used_mib) == (0, "NVIDIA H200", 143771, 0)
    assert (gpu.utilization_gpu_percent, gpu.mig_mode) == (0, "Disabled")
    assert (gpu.compute_capability, gpu.compute_capability_source) == ("9.0", "nvidia-smi")
    # The CSV has no CUDA field: the driver's CUDA comes from the toolkit table (590.44.01 shipped with 13.1).
    assert (snapshot.cuda_driver_max, snapshot.cuda_driver_max_source) == ("13.1", "driver table")


def test_csv_without_header_is_told_apart_by_its_values() -> None:
    # The real 212-column capture with its header line removed, as --format=csv,noheader prints it.
    body = H200_CSV.read_text().splitlines()[1]
    snapshot = parse_nvidia_smi(body + "\n")
    (gpu,) = snapshot.gpus
    assert (snapshot.format, snapshot.driver_version) == ("csv", "590.48.01")
    assert (gpu.index, gpu.name, gpu.memory_total_mib) == (0, "NVIDIA H200", 143771)
    assert (gpu.uuid, gpu.bus_id) == ("GPU-00000000-0000-0000-0000-000000000000", "00000000:83:00.0")
    assert (gpu.compute_capability, gpu.compute_capability_source) == ("9.0", "nvidia-smi")


def test_csv_without_header_or_units_and_without_compute_cap() -> None:
    snapshot = parse_nvidia_smi(INDEXIFY_NOHEADER)
    assert [(g.index, g.name, g.compute_capability) for g in snapshot.gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", "8.0"),
        (1, "NVIDIA A100-PCIE-40GB", "8.0"),
        (2, "NVIDIA H100 80GB HBM3", "9.0"),
        (3, "Tesla T4", "7.5"),
        (4, "NVIDIA RTX A6000", "8.6"),
        (5, "NVIDIA A10", "8.6"),
    ]
    assert {g.compute_capability_source for g in snapshot.gpus} == {"name table"}
    assert snapshot.gpus[3].uuid == "GPU-2a7fadae-a692-1c44-2c57-6645a0d117e4"
    assert snapshot.driver_version is NA and snapshot.gpus[0].memory_total_mib is NA
    verdict = run_check(snapshot, host=None).verdict
    # No driver version to check, and six models on one host: usable, with warnings.
    assert verdict.level == "warn"
    assert any("gave no driver version" in r for r in verdict.reasons)
    assert any(r.startswith("mixed GPUs") for r in verdict.reasons)


def test_csv_with_header_and_no_units() -> None:
    snapshot = parse_nvidia_smi(TRITON_WITH_HEADER)
    assert [(g.index, g.name, g.compute_capability, g.compute_capability_source) for g in snapshot.gpus] == [
        (0, "NVIDIA TITAN V", "7.0", "nvidia-smi"),
        (1, "NVIDIA RTX 5880 Ada Generation", "8.9", "nvidia-smi"),
    ]
    assert snapshot.driver_version == "570.86.15"


@pytest.mark.parametrize(
    ("output", "state", "says"),
    [
        (
            NO_DEVICES,
            "no_devices",
            "no usable NVIDIA GPU: the driver is loaded but sees no GPU (No devices were found); on a rented machine",
        ),
        (NO_DRIVER, "driver_unreachable", "no usable NVIDIA GPU: the NVIDIA kernel module is not loaded"),
    ],
)
def test_the_failure_messages_are_a_verdict_not_a_crash(output: str, state: str, says: str) -> None:
    snapshot = parse_nvidia_smi(output)
    assert (snapshot.format, snapshot.state, snapshot.gpus) == ("message", state, ())
    result = run_check(snapshot, host=None)
    assert result.verdict.level == "fail"
    assert result.verdict.reasons[0].startswith(says)
    assert result.document["gpus"] == [] and result.document["driver_version"] is None


def test_a_rejected_query_field_is_recognised() -> None:
    snapshot = parse_nvidia_smi(COMPUTE_CAP_REJECTED)
    assert (snapshot.state, snapshot.message) == ("query_rejected", COMPUTE_CAP_REJECTED.strip())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        "a, b\n1, 2\n",
        "<html><body>502</body></html>",
        "<nvidia_smi_log><driver_version>5",
    ],
)
def test_anything_else_is_unrecognized_and_says_so(text: str) -> None:
    snapshot = parse_nvidia_smi(text)
    assert snapshot.state == "unrecognized" and snapshot.message and snapshot.gpus == ()


def test_truncated_xml_is_unrecognized_not_an_exception() -> None:
    # A real capture cut off mid-document (as when a transfer is interrupted).
    text = (CAPTURES / "22_tesla-t4_515_qx.xml.txt").read_text()
    snapshot = parse_nvidia_smi(text[: len(text) // 2])
    assert (snapshot.format, snapshot.state) == ("xml", "unrecognized")
    assert snapshot.message.startswith("not readable as XML")


def test_a_table_cut_after_its_header_has_no_gpus() -> None:
    # The first 7 lines of a real capture: banner and column headers, no GPU row.
    head = "\n".join((CAPTURES / "03_l4_550.txt").read_text().splitlines()[:7])
    snapshot = parse_nvidia_smi(head)
    assert (snapshot.format, snapshot.state, snapshot.driver_version) == (
        "table",
        "unrecognized",
        "550.90.07",
    )


def test_indentation_and_a_byte_order_mark_do_not_matter() -> None:
    capture = (CAPTURES / "42_windows-rtx5060-wddm_576.txt").read_text(encoding="utf-8")
    assert capture.startswith("\ufeff")
    # Several sources published their capture with a uniform indent (SOURCES.md: "a uniform list indent"
    # was removed); put one back.
    indented = "\n".join("    " + line for line in capture.splitlines())
    for text in (capture, indented):
        (gpu,) = parse_nvidia_smi(text).gpus
        assert (gpu.name, gpu.memory_total_mib, gpu.memory_used_mib) == (
            "NVIDIA GeForce RTX 5060",
            8151,
            2590,
        )


def test_table_metrics_and_mig() -> None:
    (rtx,) = parse_nvidia_smi((CAPTURES / "15_wsl-rtx3070_smi530.47-drv531.68.txt").read_text()).gpus
    assert (rtx.memory_used_mib, rtx.utilization_gpu_percent, rtx.bus_id) == (1029, 18, "00000000:2B:00.0")
    (h100,) = parse_nvidia_smi((CAPTURES / "17_h100-80gb-mig_590.txt").read_text()).gpus
    # Under MIG the table prints N/A for GPU-Util.
    assert (h100.mig_mode, h100.mig_devices, h100.utilization_gpu_percent) == ("Enabled", 4, NA)
    (kepler,) = parse_nvidia_smi((CAPTURES / "10_gtx680-truncated-name_470.txt").read_text()).gpus
    assert kepler.utilization_gpu_percent is NA and kepler.name_truncated


def test_xml_gpus_are_indexed_in_document_order() -> None:
    # Capture 26 lists minor numbers 1, 2, 3, 0: nvidia-smi's index is the order, not the minor number.
    snapshot = parse_nvidia_smi((CAPTURES / "26_tesla-k80-x4-azure_430_cuda-notfound_qx.xml.txt").read_text())
    assert [g.bus_id for g in snapshot.gpus] == [
        "00001580:00:00.0",
        "00002DF7:00:00.0",
        "00004968:00:00.0",
        "0000F8D6:00:00.0",
    ]
    assert [g.index for g in snapshot.gpus] == [0, 1, 2, 3]
    assert snapshot.cuda_driver_max is NA  # <cuda_version>Not Found</cuda_version>
    xml = parse_nvidia_smi((CAPTURES / "20_rtx-a5000-x2_590_qx.xml.txt").read_text())
    assert {g.architecture for g in xml.gpus} == {"Ampere"}


def test_not_available_is_a_value_not_an_exception() -> None:
    assert str(NA) == "N/A" and not NA and NA == "N/A"
    gpu = GpuSnapshot(index=0, name="Graphics Device")
    assert gpu.memory_total_mib is NA and gpu.compute_capability is NA
    snapshot = parse_nvidia_smi(INDEXIFY_NOHEADER)
    document = run_check(snapshot, host=None).document
    assert document["driver_version"] is None and document["gpus"][0]["memory_total_mib"] is None


@pytest.mark.parametrize(
    ("name", "capability", "how"),
    [
        ("NVIDIA A100-SXM4-80GB", "8.0", "name table"),
        ("NVIDIA A100 80GB PCIe", "8.0", "name table"),
        ("Tesla T4", "7.5", "name table"),
        ("NVIDIA T4", "7.5", "name table"),
        ("NVIDIA L4", "8.9", "name table"),
        ("NVIDIA L40S", "8.9", "name table"),
        ("NVIDIA A10G", "8.6", "name table"),
        ("NVIDIA GeForce RTX 3060 Ti", "8.6", "name table"),
        ("GeForce GTX TITAN", "3.5", "name table"),
        ("GeForce GTX TITAN X", "5.2", "name table"),  # the longest matching model wins
        ("NVIDIA RTX 6000 Ada Generation", "8.9", "name table"),
        ("NVIDIA RTX 6000 Ada Gene...", "8.9", "name table (truncated name)"),
        ("NVIDIA GeForce RTX 2080 ...", "7.5", "name table (truncated name)"),
        ("GeForce RTX 207...", "7.5", "name table (truncated name)"),
        ("NVIDIA GeForce ...", NA, "unknown (truncated name fits models of different compute capabilities)"),
        ("NVIDIA T400", "7.5", "name table"),  # a T400, not a T4
        ("NVIDIA A1000", NA, "unknown (not in gpubox's name table)"),  # not an A10
        ("Graphics Device", NA, "unknown (not in gpubox's name table)"),
    ],
)
def test_compute_capability_from_the_name(name: str, capability: str, how: str) -> None:
    assert load_rules().capability(name) == (capability, how)


@pytest.mark.parametrize(
    ("probe", "state"),
    [
        ({"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}, "no_nvidia_smi"),
        (
            {"available": False, "exit_code": 9, "reason": NO_DRIVER.strip(), "output": NO_DRIVER},
            "driver_unreachable",
        ),
        (
            {"available": False, "exit_code": 6, "reason": NO_DEVICES.strip(), "output": NO_DEVICES},
            "no_devices",
        ),
        ({"available": False, "reason": "nvidia-smi did not answer within 20 s", "output": ""}, "failed"),
        ({"available": True, "exit_code": 0, "output": (CAPTURES / "03_l4_550.txt").read_text()}, "gpus"),
        ({}, "failed"),
    ],
)
def test_snapshot_from_the_agent_probe(probe: dict[str, object], state: str) -> None:
    assert snapshot_from_probe(probe).state == state


def test_a_cpu_only_host_fails_the_check_with_the_friendly_words() -> None:
    snapshot = snapshot_from_probe(
        {"available": False, "reason": "nvidia-smi not found on PATH", "output": ""}
    )
    result = run_check(snapshot, host="local")
    assert result.document["verdict"] == "fail"
    assert result.document["reasons"] == [
        "no NVIDIA GPU: training runs on CPU (nvidia-smi not found on PATH)"
    ]
    assert result.document["suggestion"] is None
