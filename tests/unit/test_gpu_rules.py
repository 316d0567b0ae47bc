"""The rules as data (gpubox/data/gpu_compat.toml), and reading a framework version from the user."""

from __future__ import annotations

import tomllib
from importlib.resources import files

import pytest

from gpubox.errors import BadInput, UsageError
from gpubox.remote.gpu.frameworks import framework_from_requirements, parse_framework_spec
from gpubox.remote.gpu.rules import load_rules

RULES = load_rules()
DATA = tomllib.loads(files("gpubox.data").joinpath("gpu_compat.toml").read_text(encoding="utf-8"))


def test_every_row_names_its_source_and_confidence() -> None:
    for table in ("cuda_major", "cuda_toolkit", "framework", "gpu"):
        assert DATA[table], table
        for row in DATA[table]:
            assert row["source"].strip(), row
    for row in (*DATA["cuda_major"], *DATA["cuda_toolkit"], *DATA["framework"]):
        assert row["confidence"] in ("V", "D", "U"), row
    # What is not read verbatim says why gpubox believes it.
    for row in DATA["framework"]:
        assert row["confidence"] == "V" or row.get("note"), row


def test_tensorflow_releases_2_4_to_2_21_each_with_its_cuda_rules() -> None:
    versions = [r.version for r in RULES.releases_of("tensorflow")]
    assert versions == [f"2.{minor}" for minor in range(4, 22)]
    for release in RULES.releases:
        major = int(release.cuda.split(".")[0])
        assert major in RULES.mvc_floor, release
        assert RULES.toolkit_driver(release.cuda) is not None, release
        assert release.archs and any(arch.ptx for arch in release.archs) == ("compute_" in release.arch_list)


def test_the_reference_minimums() -> None:
    minimum = {r.version: r.minimum_cc for r in RULES.releases_of("tensorflow")}
    assert minimum["2.14"] == (3, 5) and minimum["2.16"] == (5, 0) and minimum["2.18"] == (6, 0)
    assert RULES.mvc_floor == {11: "450.80.02", 12: "525.60.13", 13: "580"}


def test_a_model_has_one_compute_capability() -> None:
    seen: dict[str, str] = {}
    for cc, model in RULES.capability_rows:
        assert seen.setdefault(model, cc) == cc, model


@pytest.mark.parametrize(
    ("driver", "cuda"),
    [
        # nvidia-smi's own "CUDA Version" for these drivers (reference §4.2, captures) where the toolkit
        # table has that release; 565 printed 12.7, a CUDA that never shipped, so the table says 12.6.
        ("550.54.14", "12.4"),
        ("470.256.02", "11.4"),
        ("555.42.02", "12.5"),
        ("565.57.01", "12.6"),
        ("580.95.05", "13.0"),
        ("590.48.01", "13.1"),
        ("440.100", None),
    ],
)
def test_the_cuda_a_driver_supports(driver: str, cuda: str | None) -> None:
    assert RULES.cuda_for_driver(driver) == cuda


@pytest.mark.parametrize(
    ("spec", "release"),
    [
        ("tensorflow==2.21", ("tensorflow", "2.21")),
        ("tensorflow==2.21.0", ("tensorflow", "2.21")),
        ("tensorflow[and-cuda]==2.18.1", ("tensorflow", "2.18")),
        ("TensorFlow>=2.12,<2.16", ("tensorflow", "2.15")),
        ("tensorflow", ("tensorflow", "2.21")),
        ("torch==2.10", ("torch", "2.10")),
        ("torch", ("torch", "2.14")),
    ],
)
def test_framework_option(spec: str, release: tuple[str, str]) -> None:
    found = parse_framework_spec(spec)
    assert (found.name, found.version) == release


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("jax==0.4", "--framework jax==0.4: gpubox knows tensorflow and torch (e.g. tensorflow==2.21)"),
        (
            "tensorflow==2.3",
            "--framework tensorflow==2.3: gpubox has no rules for that tensorflow version (it knows 2.4–2.21)",
        ),
        (
            "torch==2.5",
            "--framework torch==2.5: gpubox has no rules for that torch version (it knows 2.7–2.14)",
        ),
        ("tensorflow==latest", "cannot read the version specifier '==latest'"),
        ("", "--framework : gpubox knows tensorflow and torch (e.g. tensorflow==2.21)"),
    ],
)
def test_framework_option_errors_are_bad_input(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_framework_spec(spec)
    assert str(caught.value) == message and caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("tensorflow==2.15.1\n", "2.15"),
        ("numpy>=1.26\ntensorflow[and-cuda]==2.16.*\n", "2.16"),
        ("tensorflow>=2.12,<2.16\n", "2.15"),
        ("tensorflow<2.16.1\n", "2.16"),
        ("tensorflow<=2.13\n", "2.13"),
        ("tensorflow~=2.14.0\n", "2.14"),
        ("tensorflow~=2.14\n", "2.21"),
        ("tensorflow-gpu==2.10.0\n", "2.10"),
        ("TensorFlow == 2.13 ; python_version >= '3.9'\n", "2.13"),
        ("-r base.txt\n--index-url https://example.invalid/simple\ntensorflow==2.17  # pinned\n", "2.17"),
        ("tensorflow\n", None),  # unpinned: the newest release is used
        ("tensorflow-cpu==2.15\nnumpy\n", None),  # not the GPU package
        ("# tensorflow==2.10\n", None),
        ("", None),
    ],
)
def test_requirements_pin(text: str, version: str | None) -> None:
    found = framework_from_requirements(text)
    assert (found.version if found else None) == version


def test_a_pin_gpubox_has_no_rules_for_is_bad_input() -> None:
    with pytest.raises(
        BadInput, match=r"tensorflow==1\.15\.5: gpubox has no rules for that TensorFlow version"
    ):
        framework_from_requirements("tensorflow==1.15.5\n")
