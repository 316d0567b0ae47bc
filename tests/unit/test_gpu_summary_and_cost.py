"""The host report's GPU line from real captured nvidia-smi tables, and the money arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubox.config import HostConfig
from gpubox.cost import hourly_price, spent_usd
from gpubox.fmt import format_duration, format_usd
from gpubox.remote.gpu.frameworks import parse_framework_spec
from gpubox.remote.gpu.parse import parse_nvidia_smi, snapshot_from_probe
from gpubox.remote.gpu.rules import load_rules
from gpubox.remote.gpu.snapshot import NA
from gpubox.remote.gpu.summary import summarize
from gpubox.report import gpu_line, short_gpu

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
NEWEST = load_rules().newest("tensorflow")


@pytest.mark.parametrize(
    ("capture", "driver", "cuda", "count", "first_name"),
    [
        ("01_h100-sxm-x8_565.txt", "565.57.01", "12.7", 8, "NVIDIA H100 80GB HBM3"),
        ("07_a40-x10_550.txt", "550.127.05", "12.4", 10, "NVIDIA A40"),
        ("09_rtx6000ada-x8_550.txt", "550.127.05", "12.4", 8, "NVIDIA RTX 6000 Ada Gene..."),
        ("15_wsl-rtx3070_smi530.47-drv531.68.txt", "531.68", "12.1", 1, "NVIDIA GeForce RTX 3070"),
        ("16_rtx2080super_610-kmd-umd-header.txt", "610.57.04", "13.3", 1, "NVIDIA GeForce RTX 2080 ..."),
        ("18_windows-rtx2080super-wddm_591.txt", "591.86", "13.1", 1, "NVIDIA GeForce RTX 2080 ..."),
        ("19_rtx2070-laptop_440.txt", "440.100", "10.2", 1, "GeForce RTX 207..."),
        ("40_tesla-k80-x2_390.txt", "390.12", NA, 2, "Tesla K80"),
        ("45_mixed-rtx2060-3060x2-3060ti-3070_560.txt", "560.35.03", "12.6", 5, "NVIDIA GeForce RTX 2060"),
    ],
)
def test_summary_from_real_tables(capture: str, driver: str, cuda: str, count: int, first_name: str) -> None:
    snapshot = parse_nvidia_smi((CAPTURES / capture).read_text())
    assert snapshot.driver_version == driver
    assert snapshot.cuda_driver_max == cuda
    assert len(snapshot.gpus) == count
    assert snapshot.gpus[0].name == first_name


def test_report_lines_for_gpu_cpu_and_broken_hosts() -> None:
    table = (CAPTURES / "03_l4_550.txt").read_text()
    with_gpu = {"nvidia_smi": {"available": True, "output": table}}
    assert gpu_line(with_gpu, release=NEWEST).render() == (
        "  ✓ GPU    1× NVIDIA L4  cc 8.9  driver 550.90.07 (CUDA ≤ 12.4) · "
        "TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible"
    )
    assert short_gpu(with_gpu, release=NEWEST) == "1× NVIDIA L4 · TF 2.21 ok"
    blackwell = {"nvidia_smi": {"available": True, "output": (CAPTURES / "44_b200-x8_575.txt").read_text()}}
    assert gpu_line(blackwell, release=NEWEST).mark == "!"
    assert short_gpu(blackwell, release=NEWEST) == "8× NVIDIA B200 · TF 2.21 warn"
    mixed = (CAPTURES / "45_mixed-rtx2060-3060x2-3060ti-3070_560.txt").read_text()
    assert (
        short_gpu({"nvidia_smi": {"available": True, "output": mixed}}, release=NEWEST)
        == "5× mixed (4 models) · TF 2.21 warn"
    )
    cpu = {"nvidia_smi": {"available": False, "reason": "nvidia-smi not found on PATH"}}
    assert (
        gpu_line(cpu, release=NEWEST).text
        == "no NVIDIA GPU: training runs on CPU (nvidia-smi not found on PATH)"
    )
    assert gpu_line(cpu, release=NEWEST).mark == "·"
    assert short_gpu(cpu, release=NEWEST) == "none (CPU)"
    broken = {
        "nvidia_smi": {
            "available": False,
            "exit_code": 9,
            "output": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n",
            "reason": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
        }
    }
    assert gpu_line(broken, release=NEWEST).mark == "✗"
    assert gpu_line(broken, release=NEWEST).text.startswith(
        "no usable NVIDIA GPU: the NVIDIA kernel module is not loaded"
    )
    assert short_gpu(broken, release=NEWEST) == "unusable"
    assert short_gpu(None, release=NEWEST) == "not probed yet"


def test_the_summary_names_the_release_its_caller_chose() -> None:
    l4 = parse_nvidia_smi((CAPTURES / "03_l4_550.txt").read_text())
    pinned = parse_framework_spec("tensorflow==2.15")
    newest, older = summarize(l4, NEWEST), summarize(l4, pinned)
    assert (newest.release, older.release) == (NEWEST, pinned)
    assert newest.cell == f"1× NVIDIA L4 · TF {NEWEST.version} ok"
    assert older.cell.startswith("1× NVIDIA L4 · TF 2.15 ")
    assert older.judgement.startswith("TensorFlow 2.15 (CUDA ")
    torch = summarize(l4, parse_framework_spec("torch"))
    assert torch.cell.startswith("1× NVIDIA L4 · PyTorch ") and torch.judgement.startswith("PyTorch ")


def test_the_dashboards_badge_words() -> None:
    mixed = parse_nvidia_smi((CAPTURES / "45_mixed-rtx2060-3060x2-3060ti-3070_560.txt").read_text())
    assert summarize(mixed, NEWEST).label == "5× mixed"
    assert (
        summarize(parse_nvidia_smi((CAPTURES / "03_l4_550.txt").read_text()), NEWEST).label == "1× NVIDIA L4"
    )
    cpu = snapshot_from_probe({"available": False, "reason": "nvidia-smi not found on PATH"})
    down = snapshot_from_probe(
        {"available": False, "exit_code": 9, "reason": "couldn't communicate with the NVIDIA driver"}
    )
    assert (summarize(cpu, NEWEST).label, summarize(down, NEWEST).label) == ("none (CPU)", "no usable GPU")
    assert summarize(down, NEWEST).judgement == f"{NEWEST.label}: cannot use the GPU"


def test_prices_and_spend() -> None:
    assert hourly_price(HostConfig(name="l", provider="local")).amount == 0.0
    assert (
        hourly_price(HostConfig(name="b", price_per_hour=1.29)).label()
        == "$1.29/h (price_per_hour in hosts.toml)"
    )
    assert hourly_price(HostConfig(name="b")).amount is None
    intervals = [("b", 1.2, 0.0, 3600.0), ("b", 2.0, 7200.0, None)]
    assert spent_usd(intervals, now=7200.0 + 1800.0) == pytest.approx(1.2 + 1.0)
    assert format_usd(1234.5) == "$1,234.50"
    assert format_duration(12) == "0:00:12" and format_duration(90061) == "1d 1:01:01"


def _capture(name: str) -> str:
    return (CAPTURES / name).read_text(encoding="utf-8")


def test_a_faulted_gpu_is_counted_apart_and_a_broken_host_is_said_once() -> None:
    from gpubox.remote.gpu.check import render_check, run_check

    err = parse_nvidia_smi(_capture("57_a40-x8-gpu4-err_525.txt"))
    summary = summarize(err, NEWEST, chosen_by="pinned in requirements.txt")
    assert summary.label == "7× NVIDIA A40 (+1 faulted)"
    assert summary.cell == "7× NVIDIA A40 (+1 faulted) · TF 2.21 warn"
    assert summary.line.startswith("7× NVIDIA A40  cc 8.6 + 1 in a fault state (ERR!)  driver 525.60.13")
    assert summary.line.endswith(": usable, with warnings (pinned in requirements.txt)")

    reset = render_check(
        run_check(parse_nvidia_smi(_capture("58_h100-gpu-requires-reset_query-gpu.csv.txt")), host=None)
    )
    assert reset[0] == "  ✗ GPU    1 in a fault state (GPU requires reset)"

    mismatch = render_check(run_check(parse_nvidia_smi(_capture("51_nvml-mismatch.txt")), host=None))
    assert mismatch[0].startswith("  ✗ GPU    no usable NVIDIA GPU: the NVIDIA driver was upgraded")
    assert mismatch[1:] == ["  ✗ TensorFlow 2.21: cannot use the GPU  (newest gpubox knows)"]


def test_the_host_report_says_which_release_it_judged() -> None:
    probe = {"nvidia_smi": {"available": True, "exit_code": 0, "output": _capture("11_h200_550.txt")}}
    line = gpu_line(probe, release=NEWEST, chosen_by="newest gpubox knows")
    assert line.text.endswith(
        "· TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible (newest gpubox knows)"
    )


def test_the_hosts_own_compute_capability_wins_over_the_name_table() -> None:
    table = {"available": True, "exit_code": 0, "output": _capture("11_h200_550.txt")}
    query = {"available": True, "exit_code": 0, "output": _capture("30_h200_590_query-gpu-full.csv.txt")}
    refused = {"available": False, "exit_code": 2, "output": _capture("63_compute-cap-rejected_470.txt")}
    assert [g.compute_capability_source for g in snapshot_from_probe(table, query).gpus] == ["nvidia-smi"]
    for answer in (None, refused):
        assert [g.compute_capability_source for g in snapshot_from_probe(table, answer).gpus] == [
            "name table"
        ]
