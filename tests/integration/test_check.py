"""``gpubox check HOST`` end to end: real sshd, the uploaded agent, a test-only ``nvidia-smi`` on the host's
PATH that prints a real capture, and gpubox's parser and rules on the way back."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from gpubox.remote.gpu import FrameworkView, parse_nvidia_smi, run_check
from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
A100_X4 = CAPTURES / "04_a100-sxm4-80gb-x4_555.txt"
V100_X8 = CAPTURES / "13_v100-sxm2-16gb-x8_550.txt"

# Stands in for TensorFlow on the host: a CPU-only build, as `pip install tensorflow-cpu` gives.
CPU_ONLY_TENSORFLOW = """
__version__ = "2.17.1"

class config:
    @staticmethod
    def list_physical_devices(kind):
        return []

class test:
    @staticmethod
    def is_built_with_cuda():
        return False
"""


def _fake_nvidia_smi(folder: Path, script: str) -> Path:
    folder.mkdir(parents=True)
    binary = folder / "nvidia-smi"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    return folder


def _host_python(
    tmp_path: Path, name: str, *, path: Path | None = None, pythonpath: Path | None = None
) -> str:
    """A host 'python3' started with extra PATH / PYTHONPATH, as when nvidia-smi or TensorFlow is installed."""
    wrapper = tmp_path / f"python-{name}"
    exports = "".join(
        [
            f'PATH="{path}:$PATH" ' if path else "",
            f'PYTHONPATH="{pythonpath}" ' if pythonpath else "",
        ]
    )
    wrapper.write_text(f'#!/bin/sh\n{exports}exec {shutil.which("python3")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / ".git").mkdir()
    return folder


def _hosts(project: Path, sshd: SshServer, python: str | None = None) -> None:
    extra: dict[str, object] = {"accept_new": True, "remote_dir": str(project.parent / "remote")}
    if python:
        extra["python"] = python
    (project / "hosts.toml").write_text(host_entry("gpu", sshd, **extra))


def test_check_reads_the_hosts_nvidia_smi(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    bin_dir = _fake_nvidia_smi(tmp_path / "bin", f"cat '{A100_X4}'\n")
    _hosts(project, sshd, _host_python(tmp_path, "gpu", path=bin_dir))

    result = run_gpubox("check", "gpu", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    sees = document["framework_sees"]
    assert (sees["installed"], sees["reason"]) == (False, "tensorflow is not installed")
    view = FrameworkView.from_agent(sees)
    expected = run_check(parse_nvidia_smi(A100_X4.read_text()), host="gpu", framework_view=view).document
    assert document == expected
    assert document["gpus"][3] == {
        "index": 3,
        "name": "NVIDIA A100-SXM4-80GB",
        "compute_capability": "8.0",
        "memory_total_mib": 81920,
        "compute_capability_source": "name table",
    }
    assert (document["driver_version"], document["cuda_driver_max"], document["verdict"]) == (
        "555.42.02",
        "12.5",
        "ok",
    )
    assert document["reasons"][-1] == (
        f"TensorFlow in {sees['python']} on the host: tensorflow is not installed; the verdict rests on "
        "gpubox's rules"
    )

    # The check recorded the probe: `gpubox hosts` shows the GPU and the verdict.
    hosts = json.loads(run_gpubox("hosts", "--json", cwd=project).stdout)
    assert (
        next(h for h in hosts["hosts"] if h["name"] == "gpu")["gpu"]
        == "4× NVIDIA A100-SXM4-80GB · TF 2.21 ok"
    )

    people = run_gpubox("check", "gpu", cwd=project)
    assert people.returncode == 0
    assert people.stdout.splitlines()[:3] == [
        "gpubox check gpu (nvidia-smi table)",
        "  ✓ GPU    4× NVIDIA A100-SXM4-80GB  cc 8.0  driver 555.42.02 (CUDA ≤ 12.5)",
        "  ✓ TensorFlow 2.21 (CUDA 12.5): compatible  (newest gpubox knows)",
    ]


def test_tensorflow_installed_on_the_host_has_the_last_word(
    tmp_path: Path, project: Path, sshd: SshServer
) -> None:
    bin_dir = _fake_nvidia_smi(tmp_path / "bin", f"cat '{V100_X8}'\n")
    site = tmp_path / "site"
    (site / "tensorflow").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text(CPU_ONLY_TENSORFLOW)
    _hosts(project, sshd, _host_python(tmp_path, "tf", path=bin_dir, pythonpath=site))

    result = run_gpubox("check", "gpu", "--json", cwd=project)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    python = document["framework_sees"]["python"]
    assert document["framework"]["version"] == "2.17"
    assert document["framework"]["chosen_by"] == f"installed in {python} on the host"
    assert document["framework_sees"] == {
        "python": python,
        "installed": True,
        "version": "2.17.1",
        "gpus": [],
        "built_with_cuda": False,
        "reason": None,
    }
    assert document["verdict"] == "fail"
    assert document["reasons"][0] == f"TensorFlow 2.17.1 in {python} sees no GPU; it is a CPU-only build"

    # Asked about another release, the installed one is a note, and the rules decide.
    other = json.loads(
        run_gpubox("check", "gpu", "--framework", "tensorflow==2.21", "--json", cwd=project).stdout
    )
    assert other["verdict"] == "ok"
    assert (
        other["reasons"][-1]
        == f"TensorFlow 2.17.1 is installed in {python} on the host (the check is for 2.21)"
    )


def test_a_driver_that_is_not_running_is_a_verdict(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    bin_dir = _fake_nvidia_smi(
        tmp_path / "bin",
        'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n',
    )
    _hosts(project, sshd, _host_python(tmp_path, "broken", path=bin_dir))
    result = run_gpubox("check", "gpu", "--json", cwd=project)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert (document["verdict"], document["gpus"], document["nvidia_smi"]["state"]) == (
        "fail",
        [],
        "driver_unreachable",
    )
    assert document["reasons"] == [
        "no usable NVIDIA GPU: the NVIDIA driver is not running (NVIDIA-SMI has failed because it couldn't "
        "communicate with the NVIDIA driver.)"
    ]


def test_a_cpu_only_host(project: Path, sshd: SshServer) -> None:
    _hosts(project, sshd)
    result = run_gpubox("check", "gpu", cwd=project)
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines()[1:3] == [
        "  · GPU    no NVIDIA GPU: training runs on CPU (nvidia-smi not found on PATH)",
        "  ✗ TensorFlow 2.21: cannot use the GPU  (newest gpubox knows)",
    ]


def test_an_unreachable_host_exits_3(project: Path, sshd: SshServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    (project / "hosts.toml").write_text(
        host_entry("gone", sshd, port=closed_port, accept_new=True, connect_timeout=5)
    )
    result = run_gpubox("check", "gone", "--json", cwd=project)
    assert_one_line_error(result, 3)
    assert result.stdout == ""
