"""``gpubox check --nvidia-smi FILE`` through the real command line, in a subprocess, the way a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpubox.remote.gpu.check import run_check
from gpubox.remote.gpu.parse import parse_nvidia_smi
from tests.support.cli import assert_one_line_error, run_gpubox

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / ".git").mkdir()  # the project root, so no requirements file from further up is read
    return folder


@pytest.mark.parametrize(
    ("capture", "exit_code", "verdict"),
    [
        ("04_a100-sxm4-80gb-x4_555.txt", 0, "ok"),
        ("44_b200-x8_575.txt", 0, "warn"),
        ("22_tesla-t4_515_qx.xml.txt", 1, "fail"),
        ("30_h200_590_query-gpu-full.csv.txt", 0, "ok"),
    ],
)
def test_json_document_and_exit_code(project: Path, capture: str, exit_code: int, verdict: str) -> None:
    result = run_gpubox("check", "--nvidia-smi", str(CAPTURES / capture), "--json", cwd=project)
    assert result.returncode == exit_code, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    expected = run_check(parse_nvidia_smi((CAPTURES / capture).read_text()), host=None).document
    assert document == expected
    assert document["verdict"] == verdict
    assert document["framework"]["chosen_by"] == "newest gpubox knows"


def test_the_people_output(project: Path) -> None:
    result = run_gpubox("check", "--nvidia-smi", str(CAPTURES / "03_l4_550.txt"), cwd=project)
    assert result.returncode == 0
    assert result.stdout.splitlines()[1:3] == [
        "  ✓ GPU    1× NVIDIA L4  cc 8.9  driver 550.90.07 (CUDA ≤ 12.4)",
        "  ✓ TensorFlow 2.21 (CUDA 12.5 via minor-version compatibility): compatible  (newest gpubox knows)",
    ]
    failed = run_gpubox("check", "--nvidia-smi", str(CAPTURES / "40_tesla-k80-x2_390.txt"), cwd=project)
    assert failed.returncode == 1
    assert "  ✗ TensorFlow 2.21 (CUDA 12.5 needs driver ≥ 525.60.13): cannot use the GPU" in failed.stdout
    assert "      → TensorFlow 2.14 works with a driver ≥ 450.80.02" in failed.stdout


def test_the_requirements_pin_decides_the_release(project: Path) -> None:
    (project / "requirements.txt").write_text("numpy\ntensorflow[and-cuda]==2.14.1\n")
    document = _check_json(project, "13_v100-sxm2-16gb-x8_550.txt")
    assert document["framework"] == {
        "name": "tensorflow",
        "version": "2.14",
        "cuda": "11.8",
        "cudnn": "8.7",
        "chosen_by": "pinned in requirements.txt",
    }
    # gpubox.toml may name another file.
    (project / "gpubox.toml").write_text('[env]\nrequirements = "requirements-gpu.txt"\n')
    (project / "requirements-gpu.txt").write_text("tensorflow>=2.16,<2.18\n")
    assert _check_json(project, "13_v100-sxm2-16gb-x8_550.txt")["framework"]["version"] == "2.17"
    # --framework wins over both.
    document = _check_json(project, "12_rtx5090_570.txt", "--framework", "torch==2.10")
    assert (document["framework"]["name"], document["verdict"]) == ("torch", "ok")


def _check_json(project: Path, capture: str, *extra: str) -> dict[str, object]:
    result = run_gpubox("check", "--nvidia-smi", str(CAPTURES / capture), "--json", *extra, cwd=project)
    assert result.returncode in (0, 1), result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def test_standard_input(project: Path) -> None:
    capture = (CAPTURES / "20_rtx-a5000-x2_590_qx.xml.txt").read_text()
    result = run_gpubox("check", "--nvidia-smi", "-", "--json", cwd=project, input=capture)
    assert result.returncode == 0 and json.loads(result.stdout)["nvidia_smi"]["format"] == "xml"


def test_the_failure_messages_exit_1_with_a_verdict(project: Path) -> None:
    saved = project / "smi.txt"
    saved.write_text("No devices were found\n")
    result = run_gpubox("check", "--nvidia-smi", str(saved), "--json", cwd=project)
    assert result.returncode == 1
    (reason,) = json.loads(result.stdout)["reasons"]
    assert reason.startswith(
        "no usable NVIDIA GPU: the driver is loaded but sees no GPU (No devices were found); on a rented machine"
    )


@pytest.mark.parametrize(
    ("content", "argv", "message"),
    [
        (None, ["--nvidia-smi", "missing.txt"], "gpubox: cannot read missing.txt: No such file or directory"),
        (
            "hello\n",
            ["--nvidia-smi", "smi.txt"],
            "gpubox: smi.txt: not an nvidia-smi table, -q text, XML (-q -x) or --query-gpu CSV output",
        ),
        (
            'Field "compute_cap" is not a valid field to query.\n',
            ["--nvidia-smi", "smi.txt"],
            'gpubox: smi.txt: this nvidia-smi refused the query (Field "compute_cap" is not a valid field to '
            "query.); query again without that field (gpubox finds the compute capability from the GPU name)",
        ),
        (
            None,
            ["--nvidia-smi", str(CAPTURES / "03_l4_550.txt"), "--framework", "jax==0.4"],
            "gpubox: --framework jax==0.4: gpubox knows tensorflow and torch (e.g. tensorflow==2.21)",
        ),
        (
            None,
            ["--nvidia-smi", str(CAPTURES / "03_l4_550.txt"), "--framework", "tensorflow==2.3"],
            "gpubox: --framework tensorflow==2.3: gpubox has no rules for that tensorflow version (it knows 2.4–2.21)",
        ),
        (None, ["somehost", "--nvidia-smi", "x.txt"], "gpubox: give a HOST or --nvidia-smi FILE, not both"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    project: Path, content: str | None, argv: list[str], message: str
) -> None:
    if content is not None:
        (project / "smi.txt").write_text(content)
    result = run_gpubox("check", *argv, cwd=project)
    assert assert_one_line_error(result, 2) == message
    assert result.stdout == ""


def test_a_pin_without_rules_is_bad_input(project: Path) -> None:
    (project / "requirements.txt").write_text("tensorflow==1.15.5\n")
    result = run_gpubox("check", "--nvidia-smi", str(CAPTURES / "03_l4_550.txt"), cwd=project)
    assert assert_one_line_error(result, 2) == (
        "gpubox: tensorflow==1.15.5: gpubox has no rules for that TensorFlow version (it knows 2.4–2.21)"
    )


def test_an_offline_check_stays_light(project: Path) -> None:
    """No SSH, TUI or file-watching library is loaded to read a file."""
    result = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "gpubox",
            "check",
            "--nvidia-smi",
            str(CAPTURES / "03_l4_550.txt"),
        ],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    imported = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line
    }
    assert not imported & {"paramiko", "textual", "watchdog", "tensorflow", "fabric", "invoke"}
