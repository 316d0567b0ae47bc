"""Every real nvidia-smi capture in tests/data/nvidia-smi into the exact ``check --json`` document.

The expected values are worked out by hand from the reference (shared/reference/gpu-compat-and-pricing.md)
for TensorFlow 2.21 (CUDA 12.5, wheels with sm_60, sm_70, sm_80, sm_89, compute_90; CUDA 12 needs a driver
>= 525.60.13 through minor-version compatibility; PTX from CUDA 12.5 needs a driver for CUDA >= 12.5):

- drivers below 525.60.13 fail whatever the GPU;
- cc 6.0 and up runs native kernels (7.5 on sm_70, 8.6 on sm_80, 8.9 on sm_89, 9.0 on sm_90);
- Blackwell (10.0, 12.0) runs only through PTX JIT of compute_90: warn;
- several GPU models on one host: warn;
- compute capability comes from the name table (truncated names resolve when every model they could be
  shares one capability) unless the CSV carries compute_cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gpubox.remote.gpu.check import run_check
from gpubox.remote.gpu.parse import parse_nvidia_smi
from gpubox.remote.gpu.rules import load_rules

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
TF_221 = {"name": "tensorflow", "version": "2.21", "cuda": "12.5", "cudnn": "9.3"}
DOCUMENT_KEYS = [
    # design.md's fields, in its order, then gpubox's additions.
    "host",
    "driver_version",
    "cuda_driver_max",
    "gpus",
    "framework",
    "verdict",
    "reasons",
    "suggestion",
    "nvidia_smi",
]


@dataclass(frozen=True)
class Expected:
    format: str
    driver: str | None
    cuda: str | None
    gpus: list[tuple[str, str | None, int]]
    """(name as printed, compute capability, memory.total MiB) per GPU, in index order."""
    verdict: str
    says: tuple[str, ...] = ()
    """Phrases the reasons must contain."""
    suggests: bool = True
    """A failing verdict says what would work (not when no release gpubox knows runs the GPU)."""


def _times(count: int, gpu: tuple[str, str | None, int]) -> list[tuple[str, str | None, int]]:
    return [gpu] * count


MVC = "through minor-version compatibility"
OLD_DRIVER = "needs a driver ≥ 525.60.13"
PTX = "runs only through PTX JIT of compute_90"
WINDOWS = "TensorFlow has no native Windows GPU support after 2.10"
RELOAD = "reboot the host, or reload the nvidia kernel modules"
OFF_THE_BUS = "a GPU has fallen off the bus"

EXPECTED: dict[str, Expected] = {
    "01_h100-sxm-x8_565.txt": Expected(
        "table", "565.57.01", "12.7", _times(8, ("NVIDIA H100 80GB HBM3", "9.0", 81559)), "ok", ("sm_90",)
    ),
    "02_rtx4090-x8_550.txt": Expected(
        "table", "550.127.05", "12.4", _times(8, ("NVIDIA GeForce RTX 4090", "8.9", 24564)), "ok", (MVC,)
    ),
    "03_l4_550.txt": Expected("table", "550.90.07", "12.4", [("NVIDIA L4", "8.9", 23034)], "ok", (MVC,)),
    "04_a100-sxm4-80gb-x4_555.txt": Expected(
        "table", "555.42.02", "12.5", _times(4, ("NVIDIA A100-SXM4-80GB", "8.0", 81920)), "ok", ("natively",)
    ),
    "05_l40s_550.txt": Expected("table", "550.127.05", "12.4", [("NVIDIA L40S", "8.9", 46068)], "ok"),
    "06_rtx3090-x2_560.txt": Expected(
        "table", "560.35.03", "12.6", _times(2, ("NVIDIA GeForce RTX 3090", "8.6", 24576)), "ok", ("sm_80",)
    ),
    "07_a40-x10_550.txt": Expected(
        "table", "550.127.05", "12.4", _times(10, ("NVIDIA A40", "8.6", 46068)), "ok"
    ),
    "08_h100-nvl-x2_550.txt": Expected(
        "table", "550.54.14", "12.4", _times(2, ("NVIDIA H100 NVL", "9.0", 95830)), "ok"
    ),
    # "NVIDIA RTX 6000 Ada Gene..." can only be the RTX 6000 Ada Generation: cc 8.9.
    "09_rtx6000ada-x8_550.txt": Expected(
        "table", "550.127.05", "12.4", _times(8, ("NVIDIA RTX 6000 Ada Gene...", "8.9", 49140)), "ok"
    ),
    # "NVIDIA GeForce ..." could be any GeForce: the capability stays unknown.
    "10_gtx680-truncated-name_470.txt": Expected(
        "table", "470.256.02", "11.4", [("NVIDIA GeForce ...", None, 2000)], "fail", (OLD_DRIVER,)
    ),
    "11_h200_550.txt": Expected("table", "550.90.12", "12.4", [("NVIDIA H200", "9.0", 143771)], "ok"),
    "12_rtx5090_570.txt": Expected(
        "table", "570.124.06", "12.8", [("NVIDIA GeForce RTX 5090", "12.0", 32607)], "warn", (PTX,)
    ),
    "13_v100-sxm2-16gb-x8_550.txt": Expected(
        "table", "550.127.05", "12.4", _times(8, ("Tesla V100-SXM2-16GB", "7.0", 16384)), "ok", ("sm_70",)
    ),
    "14_titan-v_515.txt": Expected(
        "table", "515.65.01", "11.7", [("NVIDIA TITAN V", "7.0", 12288)], "fail", (OLD_DRIVER,)
    ),
    # WSL: the Linux nvidia-smi is 530.47, the Windows driver 531.68; the driver is what counts.
    "15_wsl-rtx3070_smi530.47-drv531.68.txt": Expected(
        "table",
        "531.68",
        "12.1",
        [("NVIDIA GeForce RTX 3070", "8.6", 8192)],
        "ok",
        (MVC, "nvidia-smi 530.47 differs from driver 531.68"),
    ),
    # KMD Version / CUDA UMD Version header; "RTX 2080 ..." is a 2080 Ti or SUPER: cc 7.5 either way.
    "16_rtx2080super_610-kmd-umd-header.txt": Expected(
        "table", "610.57.04", "13.3", [("NVIDIA GeForce RTX 2080 ...", "7.5", 8192)], "ok"
    ),
    # MIG: a process sees only its slices.
    "17_h100-80gb-mig_590.txt": Expected(
        "table", "590.48.01", "13.1", [("NVIDIA H100 80GB HBM3", "9.0", 81559)], "warn", ("4 MIG devices",)
    ),
    # Native Windows (WDDM): TensorFlow after 2.10 has no GPU there.
    "18_windows-rtx2080super-wddm_591.txt": Expected(
        "table", "591.86", "13.1", [("NVIDIA GeForce RTX 2080 ...", "7.5", 8192)], "fail", (WINDOWS,)
    ),
    "19_rtx2070-laptop_440.txt": Expected(
        "table", "440.100", "10.2", [("GeForce RTX 207...", "7.5", 7973)], "fail", (OLD_DRIVER,)
    ),
    "20_rtx-a5000-x2_590_qx.xml.txt": Expected(
        "xml", "590.44.01", "13.1", _times(2, ("NVIDIA RTX A5000", "8.6", 24564)), "ok"
    ),
    "21_rtx-pro-6000-blackwell-maxq_590_qx.xml.txt": Expected(
        "xml",
        "590.44.01",
        "13.1",
        [("NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition", "12.0", 97887)],
        "warn",
        (PTX,),
    ),
    "22_tesla-t4_515_qx.xml.txt": Expected(
        "xml", "515.105.01", "11.7", [("Tesla T4", "7.5", 15360)], "fail", (OLD_DRIVER,)
    ),
    "23_gtx1660ti-graphics-device_418_qx.xml.txt": Expected(
        "xml", "418.43", "10.1", [("Graphics Device", None, 5912)], "fail", (OLD_DRIVER,)
    ),
    # Trimmed in its source: 4 attached GPUs, 1 described (with MIG on).
    "24_a100-sxm4-80gb_535_qx-trimmed.xml.txt": Expected(
        "xml",
        "535.54.03",
        "12.2",
        [("NVIDIA A100-SXM4-80GB", "8.0", 81920)],
        "warn",
        (MVC, "counts 4 attached GPUs but describes 1", "4 MIG devices"),
    ),
    # No <cuda_version> in this old schema, and 384.66 predates every CUDA 11 toolkit driver.
    "25_gtx1070-2of6_384_qx-trimmed.xml.txt": Expected(
        "xml",
        "384.66",
        None,
        [("GeForce GTX 1070", "6.1", 8112), ("GeForce GTX 1070", "6.1", 8114)],
        "fail",
        (OLD_DRIVER,),
    ),
    "26_tesla-k80-x4-azure_430_cuda-notfound_qx.xml.txt": Expected(
        "xml",
        "430.26",
        None,
        _times(4, ("Tesla K80", "3.7", 11441)),
        "fail",
        (OLD_DRIVER, "below TensorFlow 2.21's minimum compute capability 6.0"),
    ),
    # compute_cap comes from the CSV itself; the CSV has no CUDA field, so the driver table gives 13.1.
    "30_h200_590_query-gpu-full.csv.txt": Expected(
        "csv", "590.48.01", "13.1", [("NVIDIA H200", "9.0", 143771)], "ok"
    ),
    "40_tesla-k80-x2_390.txt": Expected(
        "table", "390.12", None, _times(2, ("Tesla K80", "3.7", 12206)), "fail", (OLD_DRIVER,)
    ),
    "42_windows-rtx5060-wddm_576.txt": Expected(
        "table", "576.88", "12.9", [("NVIDIA GeForce RTX 5060", "12.0", 8151)], "fail", (WINDOWS, PTX)
    ),
    "44_b200-x8_575.txt": Expected(
        "table", "575.57.08", "12.9", _times(8, ("NVIDIA B200", "10.0", 183359)), "warn", (PTX,)
    ),
    "45_mixed-rtx2060-3060x2-3060ti-3070_560.txt": Expected(
        "table",
        "560.35.03",
        "12.6",
        [
            ("NVIDIA GeForce RTX 2060", "7.5", 6144),
            ("NVIDIA GeForce RTX 3060", "8.6", 12288),
            ("NVIDIA GeForce RTX 3060", "8.6", 12288),
            ("NVIDIA GeForce RTX 3060 Ti", "8.6", 8192),
            ("NVIDIA GeForce RTX 3070", "8.6", 8192),
        ],
        "warn",
        ("mixed GPUs",),
    ),
    "46_gtx-titan-kepler_367_no-procs.txt": Expected(
        "table", "367.57", None, [("GeForce GTX TITAN", "3.5", 6078)], "fail", (OLD_DRIVER,)
    ),
    # nvidia-smi's failure states: each a fail that says what it means and what to do.
    "50_nvml-mismatch_570.txt": Expected(
        "message", None, None, [], "fail", (RELOAD, "(NVML library version: 570.124)")
    ),
    "51_nvml-mismatch.txt": Expected("message", None, None, [], "fail", (RELOAD,)),
    "52_no-devices.txt": Expected("message", None, None, [], "fail", ("loaded but sees no GPU", "lspci")),
    "53_driver-unreachable.txt": Expected(
        "message", None, None, [], "fail", ("kernel module is not loaded", "reboot the host")
    ),
    "54_device-handle-unknown-error.txt": Expected(
        "message", None, None, [], "fail", (OFF_THE_BUS, "0000:0B:00.0: Unknown Error")
    ),
    "55_gpu-lost.txt": Expected("message", None, None, [], "fail", (OFF_THE_BUS, "GPU is lost")),
    "56_dmesg-fallen-off-the-bus.txt": Expected(
        "message", None, None, [], "fail", (OFF_THE_BUS, "The NVIDIA GPU 0000:b3:00.0 (PCI ID: 10de:26b5)")
    ),
    # One GPU of eight in a fault state: the others still work.
    "57_a40-x8-gpu4-err_525.txt": Expected(
        "table",
        "525.60.13",
        "12.0",
        [
            *_times(4, ("NVIDIA A40", "8.6", 46068)),
            ("ERR!", None, 46068),
            *_times(3, ("NVIDIA A40", "8.6", 46068)),
        ],
        "warn",
        (
            "GPU 4 is in a fault state (nvidia-smi shows 'ERR!'",
            "nvidia-smi -r -i 4",
            "7× NVIDIA A40 (cc 8.6)",
        ),
    ),
    "58_h100-gpu-requires-reset_query-gpu.csv.txt": Expected(
        "csv", None, None, [("unknown", None, None)], "fail", ("'GPU requires reset'", "nvidia-smi -r -i 0")
    ),
    # Unified memory: nvidia-smi has no memory figure for the GB10.
    "59_gb10-dgx-spark_580_not-supported.txt": Expected(
        "table", "580.126.09", "13.0", [("NVIDIA GB10", "12.1", None)], "warn", ("'Not Supported'", PTX)
    ),
    "60_gb10-dgx-spark_580_query-gpu-noheader.csv.txt": Expected(
        "csv", None, None, [("NVIDIA GB10", "12.1", None)], "warn", (PTX,)
    ),
    # nvidia-smi -q plain text, old and new (KMD Version, "[Deprecated …]" after the driver version).
    "61_gtx680_470_q.txt": Expected(
        "text",
        "470.256.02",
        "11.4",
        [("NVIDIA GeForce GTX 680", "3.0", 2000)],
        "fail",
        (OLD_DRIVER, "below TensorFlow 2.21's minimum compute capability 6.0"),
        suggests=False,  # Kepler 3.0: below every release gpubox knows
    ),
    "62_h200_610_q.txt": Expected("text", "610.43.02", "13.3", [("NVIDIA H200", "9.0", 143771)], "ok"),
    "63_compute-cap-rejected_470.txt": Expected("message", None, None, [], "fail", ("refused the query",)),
    # compute_cap from the host: the CSV has no CUDA field, so the driver table gives 12.8.
    "64_titanv-rtx5880ada_570_query-gpu-compute-cap.csv.txt": Expected(
        "csv",
        "570.86.15",
        "12.8",
        [("NVIDIA TITAN V", "7.0", None), ("NVIDIA RTX 5880 Ada Generation", "8.9", None)],
        "warn",
        ("mixed GPUs",),
    ),
    # Trimmed in its source: one of 8 GPUs, a row remap pending.
    "65_a100-x8-remapped-rows-pending_510_q-trimmed.txt": Expected(
        "text",
        "510.73.08",
        "11.6",
        [("NVIDIA A100-SXM4-80GB", "8.0", None)],
        "fail",
        (OLD_DRIVER, "remap or page retirement is pending", "counts 8 attached GPUs but describes 1"),
    ),
}


def test_every_capture_has_an_expectation() -> None:
    captures = {path.name for path in CAPTURES.iterdir() if path.name != "SOURCES.md"}
    assert captures == set(EXPECTED)


@pytest.mark.parametrize("capture", sorted(EXPECTED))
def test_capture_into_the_check_document(capture: str) -> None:
    expected = EXPECTED[capture]
    snapshot = parse_nvidia_smi((CAPTURES / capture).read_text(encoding="utf-8"))
    document = run_check(snapshot, host=None, requested=load_rules().release("tensorflow", "2.21")).document

    assert list(document) == DOCUMENT_KEYS
    assert document["host"] is None
    assert document["driver_version"] == expected.driver
    assert document["cuda_driver_max"] == expected.cuda
    assert [
        (gpu["index"], gpu["name"], gpu["compute_capability"], gpu["memory_total_mib"])
        for gpu in document["gpus"]
    ] == [(index, *gpu) for index, gpu in enumerate(expected.gpus)]
    assert document["framework"] == {**TF_221, "chosen_by": "--framework"}
    assert document["verdict"] == expected.verdict
    assert document["nvidia_smi"]["format"] == expected.format
    reasons = " | ".join(document["reasons"])
    for phrase in expected.says:
        assert phrase in reasons
    # A failing verdict on GPUs that work says what would work; a broken host or GPU has no release that would.
    working = document["nvidia_smi"]["state"] == "gpus" and "fault state" not in reasons
    if expected.verdict == "fail" and working and expected.suggests:
        assert document["suggestion"] is not None and document["suggestion"]["options"]


def test_the_container_case_trusts_the_driver_not_the_nvidia_smi_banner() -> None:
    snapshot = parse_nvidia_smi((CAPTURES / "15_wsl-rtx3070_smi530.47-drv531.68.txt").read_text())
    assert (snapshot.smi_version, snapshot.driver_version) == ("530.47", "531.68")


def test_old_drivers_get_a_release_and_the_driver_it_needs() -> None:
    rules = load_rules()
    k80 = parse_nvidia_smi((CAPTURES / "26_tesla-k80-x4-azure_430_cuda-notfound_qx.xml.txt").read_text())
    suggestion = run_check(k80, host=None).verdict.suggestion
    assert suggestion is not None
    # Kepler left the wheels with 2.15; CUDA 11.8 (TF 2.14) needs 450.80.02 through MVC.
    (option,) = suggestion.options
    assert (option.release, option.driver, option.level) == (
        rules.release("tensorflow", "2.14"),
        "450.80.02",
        "ok",
    )

    titan_v = parse_nvidia_smi((CAPTURES / "14_titan-v_515.txt").read_text())
    options = run_check(titan_v, host=None).verdict.suggestion
    assert options is not None
    assert [(o.release.version, o.driver, o.level) for o in options.options] == [
        ("2.21", "525.60.13", "ok"),  # the release asked for, with a CUDA 12 driver
        ("2.14", None, "ok"),  # or the newest release this driver runs
    ]
