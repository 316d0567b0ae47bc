"""Verdict tables: TensorFlow 2.4–2.21 on the GPUs people rent, on drivers 470/525/535/550/580, and mixed hosts.

Snapshots are built directly (no nvidia-smi text) for GPUs without a capture. Each expected row is worked
out by hand from the reference, one letter per release (o = ok, w = warn, f = fail), in the order

    2.4 2.5 2.6 2.7 2.8 2.9 2.10 2.11 2.12 2.13 2.14 | 2.15 2.16 2.17 | 2.18 2.19 2.20 2.21
    CUDA 11.0 · 11.2 (2.5–2.11) · 11.8 (2.12–2.14)  | 12.2 · 12.3     | 12.5
    sm_35 sm_50 sm_60 sm_70 sm_75 compute_80        | sm_50 sm_60 sm_70 sm_80 compute_90 | sm_60 sm_70 sm_80 sm_89 compute_90

with the rules:
- CUDA 11 needs a driver >= 450.80.02, CUDA 12 >= 525.60.13 (minor-version compatibility): all five drivers
  run 2.4–2.14; 470 fails 2.15 onwards;
- machine code sm_XY runs on X.z for z >= y; ``compute_XY`` adds PTX, which the driver JIT-compiles for
  newer GPUs (a warning), but only when the driver supports the CUDA the PTX came from;
- the last release that runs a GPU before the next one drops it warns.
The drivers are real pairs of driver and the "CUDA Version" nvidia-smi shows for it (captures and
reference §4.2): 470.256.02/11.4, 525.85.12/12.0, 535.54.03/12.2, 550.54.14/12.4, 580.95.05/13.0.
"""

from __future__ import annotations

import pytest

from gpubox.remote.gpu.check import run_check
from gpubox.remote.gpu.frameworks import FrameworkView, choose_framework
from gpubox.remote.gpu.rules import FrameworkRelease, load_rules
from gpubox.remote.gpu.snapshot import GpuSnapshot, SmiSnapshot
from gpubox.remote.gpu.verdict import assess, suggest, with_framework_view

RULES = load_rules()
TF_VERSIONS = [r.version for r in RULES.releases_of("tensorflow")]

GPUS = {
    "K80": ("Tesla K80", "3.7"),
    "GTX 980": ("GeForce GTX 980", "5.2"),
    "P100": ("Tesla P100-PCIE-16GB", "6.0"),
    "V100": ("Tesla V100-SXM2-16GB", "7.0"),
    "T4": ("Tesla T4", "7.5"),
    "A100": ("NVIDIA A100-SXM4-40GB", "8.0"),
    "A10G": ("NVIDIA A10G", "8.6"),
    "L4": ("NVIDIA L4", "8.9"),
    "RTX 4090": ("NVIDIA GeForce RTX 4090", "8.9"),
    "H100": ("NVIDIA H100 80GB HBM3", "9.0"),
    "B200": ("NVIDIA B200", "10.0"),
}
DRIVERS = {
    "470": ("470.256.02", "11.4"),
    "525": ("525.85.12", "12.0"),
    "535": ("535.54.03", "12.2"),
    "550": ("550.54.14", "12.4"),
    "580": ("580.95.05", "13.0"),
}

EVERYWHERE = "oooooooooooooooooo"
CUDA_12_NEEDS_525 = "ooooooooooofffffff"
EXPECTED: dict[str, dict[str, str]] = {
    # sm_35 until 2.14; 2.15 drops Kepler, so 2.14 warns.
    "K80": dict.fromkeys(DRIVERS, "oooooooooowfffffff"),
    # sm_50 until 2.17; 2.18 drops Maxwell, so 2.17 warns.
    "GTX 980": {"470": CUDA_12_NEEDS_525} | dict.fromkeys(("525", "535", "550", "580"), "ooooooooooooowffff"),
    **{
        gpu: {"470": CUDA_12_NEEDS_525} | dict.fromkeys(("525", "535", "550", "580"), EVERYWHERE)
        for gpu in ("P100", "V100", "T4", "A100", "A10G", "L4", "RTX 4090")
    },
    # No sm_9x before 2.15: PTX JIT of compute_80, which a CUDA 11.4 driver cannot do for CUDA 11.8 PTX.
    "H100": {"470": "wwwwwwwwffffffffff"} | dict.fromkeys(("525", "535", "550", "580"), "wwwwwwwwwwwooooooo"),
    # Never any sm_100: always PTX JIT, and only where the driver knows the PTX's CUDA.
    "B200": {
        "470": "wwwwwwwwffffffffff",
        "525": "wwwwwwwwwwwfffffff",
        "535": "wwwwwwwwwwwwffffff",
        "550": "wwwwwwwwwwwwwwffff",
        "580": "wwwwwwwwwwwwwwwwww",
    },
}
LETTERS = {"o": "ok", "w": "warn", "f": "fail"}


def host(*models: str, driver: str = "550", gpus: int = 1) -> SmiSnapshot:
    version, cuda = DRIVERS[driver]
    built = [
        GpuSnapshot(
            index=index,
            name=GPUS[model][0],
            compute_capability=GPUS[model][1],
            compute_capability_source="name table",
        )
        for index, model in enumerate(model for model in models for _ in range(gpus))
    ]
    return SmiSnapshot(
        format="table",
        state="gpus",
        gpus=tuple(built),
        driver_version=version,
        cuda_driver_max=cuda,
        cuda_driver_max_source="nvidia-smi",
        smi_version=version,
    )


def test_the_table_covers_every_release_gpubox_knows() -> None:
    assert TF_VERSIONS[0] == "2.4" and TF_VERSIONS[-1] == "2.21" and len(TF_VERSIONS) == 18
    assert all(len(row) == len(TF_VERSIONS) for table in EXPECTED.values() for row in table.values())


@pytest.mark.parametrize("driver", sorted(DRIVERS))
@pytest.mark.parametrize("model", sorted(GPUS))
def test_verdict_table(model: str, driver: str) -> None:
    snapshot = host(model, driver=driver)
    found = "".join(
        next(letter for letter, level in LETTERS.items() if level == assess(snapshot, release).level)
        for release in RULES.releases_of("tensorflow")
    )
    assert found == EXPECTED[model][driver], dict(zip(TF_VERSIONS, found, strict=True))


def test_the_name_table_knows_every_gpu_of_the_verdict_table() -> None:
    for name, capability in GPUS.values():
        assert RULES.capability(name) == (capability, "name table")


def _release(version: str, name: str = "tensorflow") -> FrameworkRelease:
    found = RULES.release(name, version)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("models", "driver", "version", "level", "phrase"),
    [
        # The same model twice is not mixed.
        (("A100", "A100"), "550", "2.21", "ok", "GPUs 0, 1 NVIDIA A100-SXM4-40GB (cc 8.0)"),
        (("A100", "H100"), "550", "2.21", "warn", "mixed GPUs (1× NVIDIA A100-SXM4-40GB, 1× NVIDIA H100"),
        (("T4", "L4"), "535", "2.15", "warn", "mixed GPUs"),
        # TensorFlow ignores the K80 but can use the V100.
        (("K80", "V100"), "580", "2.21", "warn", "GPU 0 Tesla K80 (cc 3.7): below TensorFlow 2.21's minimum"),
        (("K80", "V100"), "580", "2.21", "warn", "TensorFlow will not use it"),
        (("K80", "V100"), "470", "2.14", "warn", "TensorFlow 2.15 drops GPU 0 Tesla K80"),
        (("K80", "V100"), "470", "2.21", "fail", "driver 470.256.02 (CUDA ≤ 11.4) is too old"),
        # Nothing here has kernels in 2.21.
        (("K80", "GTX 980"), "580", "2.21", "fail", "GPU 1 GeForce GTX 980 (cc 5.2): below"),
        (("H100", "B200"), "580", "2.21", "warn", "runs only through PTX JIT of compute_90"),
        (
            ("H100", "B200"),
            "550",
            "2.21",
            "warn",
            "only PTX JIT of compute_90 would run, and that needs a driver",
        ),
    ],
)
def test_mixed_hosts(models: tuple[str, ...], driver: str, version: str, level: str, phrase: str) -> None:
    verdict = assess(host(*models, driver=driver), _release(version))
    assert verdict.level == level
    assert any(phrase in reason for reason in verdict.reasons), verdict.reasons


def test_many_gpus_of_one_model_are_one_reason() -> None:
    verdict = assess(host("H100", gpus=8, driver="580"), _release("2.21"))
    assert verdict.level == "ok"
    assert "8× NVIDIA H100 80GB HBM3 (cc 9.0): runs TensorFlow 2.21's sm_90 kernels" in verdict.reasons


def test_minor_version_compatibility_is_ok_and_said() -> None:
    verdict = assess(host("A100", driver="550"), _release("2.21"))
    assert verdict.level == "ok"
    assert verdict.reasons[0] == (
        "driver 550.54.14 (CUDA ≤ 12.4): TensorFlow 2.21 uses CUDA 12.5 through minor-version compatibility "
        "(CUDA 12.x runs on drivers ≥ 525.60.13)"
    )


def test_an_unconfirmed_release_is_said_to_be_so() -> None:
    verdict = assess(host("V100", driver="550"), _release("2.15"))
    assert verdict.level == "ok"
    assert any(reason.startswith("TensorFlow 2.15's data is unconfirmed") for reason in verdict.reasons)


@pytest.mark.parametrize(
    ("model", "driver", "version", "options"),
    [
        # PTX only on H100 with 2.14; 2.21 has sm_90.
        ("H100", "550", "2.14", [("2.21", None, "ok")]),
        # A CUDA 12.5 driver would let the B200 JIT 2.21's PTX; 550 runs 2.17's.
        ("B200", "550", "2.21", [("2.21", "555.42.02", "warn"), ("2.17", None, "warn")]),
        # Kepler: no release after 2.14 has kernels for it, whatever the driver.
        ("K80", "580", "2.21", [("2.14", None, "ok")]),
        ("V100", "470", "2.21", [("2.21", "525.60.13", "ok"), ("2.14", None, "ok")]),
        # Nothing ever has sm_100: no release fixes the warning.
        ("B200", "580", "2.21", None),
        ("A100", "550", "2.21", None),
    ],
)
def test_what_would_work(
    model: str, driver: str, version: str, options: list[tuple[str, str | None, str]] | None
) -> None:
    snapshot = host(model, driver=driver)
    release = _release(version)
    suggestion = suggest(snapshot, release, assess(snapshot, release))
    found = (
        None if suggestion is None else [(o.release.version, o.driver, o.level) for o in suggestion.options]
    )
    assert found == options


@pytest.mark.parametrize(
    ("model", "driver", "version", "level", "phrase"),
    [
        # PyTorch ships sm_86, the closest machine code for an 8.9 GPU; CUDA 12.8 runs on 550 through MVC.
        ("RTX 4090", "550", "2.10", "ok", "runs PyTorch 2.10's sm_86 kernels"),
        ("RTX 4090", "550", "2.10", "ok", "PyTorch 2.10 uses CUDA 12.8 through minor-version compatibility"),
        ("B200", "580", "2.8", "ok", "runs PyTorch 2.8's sm_100 kernels"),
        # The default 2.11 wheel is CUDA 13 (driver >= 580) and starts at sm_75.
        ("V100", "550", "2.11", "fail", "needs a driver ≥ 580"),
        ("V100", "580", "2.11", "fail", "below PyTorch 2.11's minimum compute capability 7.5"),
        # The CUDA 12.8 wheels of 2.8 dropped Pascal, so 2.7 is the last one for a P100.
        ("P100", "550", "2.7", "warn", "PyTorch 2.8 drops GPU 0 Tesla P100-PCIE-16GB (cc 6.0)"),
        ("P100", "580", "2.8", "fail", "below PyTorch 2.8's minimum compute capability 7.5"),
    ],
)
def test_pytorch_default_wheels(model: str, driver: str, version: str, level: str, phrase: str) -> None:
    verdict = assess(host(model, driver=driver), _release(version, "torch"))
    assert verdict.level == level
    assert any(phrase in reason for reason in verdict.reasons), verdict.reasons


def test_what_tensorflow_itself_sees_has_the_last_word() -> None:
    release = _release("2.17")
    ok = assess(host("V100", driver="550"), release)
    blind = FrameworkView(
        python="/usr/bin/python3", installed=True, version="2.17.1", gpus=(), built_with_cuda=False
    )
    assert with_framework_view(ok, release, blind).level == "fail"
    assert with_framework_view(ok, release, blind).reasons[0] == (
        "TensorFlow 2.17.1 in /usr/bin/python3 on the host sees no GPU; it is a CPU-only build"
    )
    failed = assess(host("V100", driver="470"), release)
    seeing = FrameworkView(python="py", installed=True, version="2.17.0", gpus=("/physical_device:GPU:0",))
    assert with_framework_view(failed, release, seeing).level == "warn"
    other = FrameworkView(python="py", installed=True, version="2.15.0", gpus=())
    assert with_framework_view(ok, release, other).level == "ok"
    assert (
        "TensorFlow 2.15.0 is installed in py on the host"
        in with_framework_view(ok, release, other).reasons[-1]
    )
    absent = FrameworkView(python="py", installed=False, reason="tensorflow is not installed")
    assert with_framework_view(ok, release, absent).level == "ok"


def test_which_release_is_checked() -> None:
    newest = RULES.newest("tensorflow")
    installed = FrameworkView(python="py", installed=True, version="2.16.1", gpus=())
    requirements = ("requirements.txt", "numpy\ntensorflow[and-cuda]==2.15.1\n")
    assert choose_framework(_release("2.10"), installed, requirements).chosen_by == "--framework"
    chosen = choose_framework(None, installed, requirements)
    assert (chosen.release.version, chosen.chosen_by) == ("2.16", "installed in py on the host")
    chosen = choose_framework(None, None, requirements)
    assert (chosen.release.version, chosen.chosen_by) == ("2.15", "pinned in requirements.txt")
    # An installed release gpubox has no rules for does not decide; the pin does.
    too_old = FrameworkView(python="py", installed=True, version="1.15.5", gpus=())
    assert choose_framework(None, too_old, requirements).release.version == "2.15"
    chosen = choose_framework(None, None, None)
    assert (chosen.release, chosen.chosen_by) == (newest, "newest gpubox knows")


def test_the_document_carries_the_suggestion_and_the_framework_view() -> None:
    view = FrameworkView(python="py", installed=False, reason="tensorflow is not installed")
    document = run_check(host("K80", driver="580"), host="k80-box", framework_view=view).document
    assert document["host"] == "k80-box" and document["verdict"] == "fail"
    assert document["suggestion"] == {
        "text": "TensorFlow 2.14 works with this driver",
        "options": [
            {"framework": {"name": "tensorflow", "version": "2.14"}, "driver_at_least": None, "verdict": "ok"}
        ],
    }
    assert document["framework_sees"] == {
        "where": "py on the host",
        "python": "py",
        "installed": False,
        "version": None,
        "gpus": None,
        "built_with_cuda": None,
        "reason": "tensorflow is not installed",
    }
