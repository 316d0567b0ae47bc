"""``gpubox check HOST`` end to end: real sshd, the uploaded agent, a test-only ``nvidia-smi`` on the host's
PATH that prints a real capture, and gpubox's parser and rules on the way back."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from gpubox.config import load_project
from gpubox.remote.gpu import FrameworkView, parse_nvidia_smi, run_check
from gpubox.train.env import env_spec
from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.hosthome import host_home
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
        "where": f"{python} on the host",
        "python": python,
        "installed": True,
        "version": "2.17.1",
        "gpus": [],
        "built_with_cuda": False,
        "reason": None,
    }
    assert document["verdict"] == "fail"
    assert (
        document["reasons"][0]
        == f"TensorFlow 2.17.1 in {python} on the host sees no GPU; it is a CPU-only build"
    )

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
        "no usable NVIDIA GPU: the NVIDIA kernel module is not loaded (NVIDIA-SMI has failed because it couldn't "
        "communicate with the NVIDIA driver.); after a kernel or driver update, reboot the host, or reinstall the "
        "driver for the running kernel"
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


# ---------------------------------------------------------------------------------------------- round 2
# Every failure state, unified memory and the -q text, each a real capture: through the agent on this host
# (a stand-in nvidia-smi that prints the capture, exiting as nvidia-smi does in that state) and offline
# (`--nvidia-smi FILE`), which must agree.

# Exit statuses from nvidia-smi's man page (RETURN VALUE): 6 not found, 9 driver not loaded, 15 GPU fallen off
# the bus; 18 is NVML's driver/library mismatch code.
STATES = [
    ("50_nvml-mismatch_570.txt", 18, "fail", "reboot the host, or reload the nvidia kernel modules"),
    ("52_no-devices.txt", 6, "fail", "the driver is loaded but sees no GPU"),
    ("53_driver-unreachable.txt", 9, "fail", "the NVIDIA kernel module is not loaded"),
    ("54_device-handle-unknown-error.txt", 15, "fail", "a GPU has fallen off the bus"),
    ("55_gpu-lost.txt", 15, "fail", "GPU is lost"),
    ("57_a40-x8-gpu4-err_525.txt", 0, "warn", "GPU 4 is in a fault state (nvidia-smi shows 'ERR!'"),
    ("58_h100-gpu-requires-reset_query-gpu.csv.txt", 0, "fail", "shows 'GPU requires reset'"),
    ("59_gb10-dgx-spark_580_not-supported.txt", 0, "warn", "memory as 'Not Supported'"),
    ("62_h200_610_q.txt", 0, "ok", "GPU 0 NVIDIA H200 (cc 9.0): runs TensorFlow 2.21's sm_90 kernels"),
    ("65_a100-x8-remapped-rows-pending_510_q-trimmed.txt", 0, "fail", "remap or page retirement is pending"),
    ("18_windows-rtx2080super-wddm_591.txt", 0, "fail", "no native Windows GPU support after 2.10"),
]


@pytest.mark.parametrize(("capture", "status", "verdict", "says"), STATES)
def test_each_state_through_the_agent_and_offline(
    tmp_path: Path, project: Path, sshd: SshServer, capture: str, status: int, verdict: str, says: str
) -> None:
    saved = CAPTURES / capture
    bin_dir = _fake_nvidia_smi(tmp_path / "bin", f"cat '{saved}'\nexit {status}\n")
    _hosts(project, sshd, _host_python(tmp_path, "state", path=bin_dir))

    live = run_gpubox("check", "gpu", "--json", cwd=project)
    offline = run_gpubox("check", "--nvidia-smi", str(saved), "--json", cwd=project)
    assert live.returncode == offline.returncode == (1 if verdict == "fail" else 0), (
        live.stderr + offline.stderr
    )
    on_host, from_file = json.loads(live.stdout), json.loads(offline.stdout)
    assert on_host["verdict"] == from_file["verdict"] == verdict
    assert any(says in reason for reason in on_host["reasons"]), on_host["reasons"]
    # The same text gives the same verdict: the host adds only what its TensorFlow said.
    assert on_host["reasons"][: len(from_file["reasons"])] == from_file["reasons"]
    assert [
        r for r in on_host["reasons"][len(from_file["reasons"]) :] if not r.startswith("TensorFlow in ")
    ] == []
    assert (on_host["gpus"], on_host["nvidia_smi"]["state"]) == (
        from_file["gpus"],
        from_file["nvidia_smi"]["state"],
    )


# The probe asks nvidia-smi itself for compute_cap (the table never shows it): a stand-in that answers the table
# with one real capture and `--query-gpu=…` with another (an H200 both, on drivers 550 and 590).
H200_TABLE = CAPTURES / "11_h200_550.txt"
H200_QUERY = CAPTURES / "30_h200_590_query-gpu-full.csv.txt"
REFUSED = CAPTURES / "63_compute-cap-rejected_470.txt"
K80_TABLE = CAPTURES / "40_tesla-k80-x2_390.txt"


def test_the_compute_capability_comes_from_the_host(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    script = f"case \"$*\" in\n  *--query-gpu*) cat '{H200_QUERY}' ;;\n  *) cat '{H200_TABLE}' ;;\nesac\n"
    _hosts(project, sshd, _host_python(tmp_path, "h200", path=_fake_nvidia_smi(tmp_path / "bin", script)))
    document = json.loads(run_gpubox("check", "gpu", "--json", cwd=project).stdout)
    assert [
        (g["name"], g["compute_capability"], g["compute_capability_source"]) for g in document["gpus"]
    ] == [("NVIDIA H200", "9.0", "nvidia-smi")]
    offline = json.loads(run_gpubox("check", "--nvidia-smi", str(H200_TABLE), "--json", cwd=project).stdout)
    assert offline["gpus"][0]["compute_capability_source"] == "name table"


def test_an_nvidia_smi_without_compute_cap_falls_back_to_the_name_table(
    tmp_path: Path, project: Path, sshd: SshServer
) -> None:
    # A driver before R510 refuses the field (capture 63); the agent asks again without it, which this
    # stand-in refuses too, and the name table answers.
    script = f"case \"$*\" in\n  *--query-gpu*) cat '{REFUSED}'; exit 2 ;;\n  *) cat '{K80_TABLE}' ;;\nesac\n"
    _hosts(project, sshd, _host_python(tmp_path, "k80", path=_fake_nvidia_smi(tmp_path / "bin", script)))
    result = run_gpubox("check", "gpu", "--json", cwd=project)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert {(g["compute_capability"], g["compute_capability_source"]) for g in document["gpus"]} == {
        ("3.7", "name table")
    }


def _host_python_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_the_projects_env_is_what_is_judged(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    bin_dir = _fake_nvidia_smi(tmp_path / "bin", f"cat '{V100_X8}'\n")
    python = _host_python(tmp_path, "gpu", path=bin_dir)
    _hosts(project, sshd, python)
    # A comment unique to this run keeps its env apart from every other test's on the shared host home.
    (project / "requirements.txt").write_text(f"# {tmp_path}\ntensorflow==2.17.*\n")
    spec = env_spec(load_project(project), _host_python_version(python))
    assert spec is not None
    # The test hosts' home, not this test's (`~` here is a per-test client home); its envs folder is a link
    # into a cache shared across sessions, and gpubox names an env by its real path.
    env = (host_home() / ".gpubox" / "envs").resolve() / spec.key
    try:
        # Not built yet: the pin decides, and the env is not asked (the host's own python is not asked either).
        document = json.loads(run_gpubox("check", "gpu", "--json", cwd=project).stdout)
        assert (document["framework"]["version"], document["framework"]["chosen_by"]) == (
            "2.17",
            "pinned in requirements.txt",
        )
        sees = document["framework_sees"]
        assert (sees["where"], sees["installed"], sees["python"]) == (
            "the project's env",
            None,
            f"{env}/bin/python",
        )
        assert sees["reason"] == "not built on gpu yet (`gpubox up` builds it from requirements.txt)"
        people = run_gpubox("check", "gpu", cwd=project).stdout.splitlines()
        assert people[2].endswith("(pinned in requirements.txt)")
        hosts = json.loads(run_gpubox("hosts", "--json", cwd=project).stdout)
        row = next(h for h in hosts["hosts"] if h["name"] == "gpu")
        assert (row["gpu"], row["gpu_judged_for"]) == (
            "8× Tesla V100-SXM2-16GB · TF 2.17 ok",
            "TensorFlow 2.17 (pinned in requirements.txt)",
        )

        # Built (as `gpubox up` leaves it: a python, and the marker written last), with a CPU-only TensorFlow.
        site = tmp_path / "env-site"
        (site / "tensorflow").mkdir(parents=True)
        (site / "tensorflow" / "__init__.py").write_text(CPU_ONLY_TENSORFLOW)
        (env / "bin").mkdir(parents=True)
        (env / "bin" / "python").write_text(
            f'#!/bin/sh\nPYTHONPATH="{site}" exec {shutil.which("python3")} "$@"\n'
        )
        (env / "bin" / "python").chmod(0o755)
        (env / ".gpubox-ready").touch()
        result = run_gpubox("check", "gpu", "--json", cwd=project)
        assert result.returncode == 1, result.stderr
        document = json.loads(result.stdout)
        assert document["framework"]["chosen_by"] == "installed in the project's env"
        assert document["framework_sees"]["where"] == "the project's env"
        assert (
            document["reasons"][0]
            == "TensorFlow 2.17.1 in the project's env sees no GPU; it is a CPU-only build"
        )
    finally:
        shutil.rmtree(env, ignore_errors=True)
