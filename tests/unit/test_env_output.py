"""What the quiet env build makes of pip's output: one short step per line that says something new, and on a
failure the lines that say why. The lines are pip 23/24's own, captured from real builds."""

from __future__ import annotations

from gpubox.train.env import lines_that_matter, pip_activity

BUILD = """\
gpubox-env: creating /home/u/.gpubox/envs/4495f0e1eef90696
Looking in indexes: https://pypi.org/simple, file:///opt/pypi/simple, file:///opt/pypi-more/simple
Looking in links: /opt/wheels
WARNING: Location 'file:///opt/pypi-more/simple/tabulate/' is ignored: it is neither a file nor a directory.
Processing /opt/pypi/files/tabulate-0.10.0-py3-none-any.whl (from -r requirements.txt (line 1))
Collecting toolz (from -r requirements.txt (line 2))
  Downloading toolz-1.2.0-py3-none-any.whl (60 kB)
Collecting tensorflow==2.21.0
  Downloading tensorflow-2.21.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl (590.1 MB)
Requirement already satisfied: numpy>=1.26.0 in /usr/lib/python3/dist-packages (from tensorflow==2.21.0) (1.26.4)
Building wheels for collected packages: antlr4-python3-runtime
  Building wheel for antlr4-python3-runtime (pyproject.toml): started
Installing collected packages: toolz, tabulate, tensorflow, keras, h5py
Successfully installed h5py-3.11.0 keras-3.4.1 tabulate-0.10.0 tensorflow-2.21.0 toolz-1.2.0
gpubox-env: setup: python -m spacy download en_core_web_sm
"""


def test_each_line_that_says_something_new_becomes_a_short_step() -> None:
    steps = [step for line in BUILD.splitlines() if (step := pip_activity(line)) is not None]
    assert steps == [
        "creating the venv",
        "collecting tabulate",
        "collecting toolz",
        "downloading toolz (60 kB)",
        "collecting tensorflow",
        "downloading tensorflow (590.1 MB)",
        "building antlr4-python3-runtime",
        "building antlr4-python3-runtime",
        "installing 5 packages: toolz, tabulate, tensorflow and 2 more",
        "installed 5 packages",
        "setup: python -m spacy download en_core_web_sm",
    ]


def test_a_failed_requirement_keeps_only_pips_errors() -> None:
    output = [
        "Collecting tabulate",
        "  Downloading tabulate-0.10.0-py3-none-any.whl (39 kB)",
        "ERROR: Could not find a version that satisfies the requirement nope==9.9 (from versions: none)",
        "ERROR: No matching distribution found for nope==9.9",
    ]
    assert lines_that_matter(output) == output[2:]


def test_a_failed_wheel_build_keeps_pips_explanation_box() -> None:
    output = [
        "Collecting broken-pkg",
        "  Downloading broken-pkg-1.0.tar.gz (2 kB)",
        "  Installing build dependencies: finished with status 'done'",
        "  error: subprocess-exited-with-error",
        "  ",
        "  × Getting requirements to build wheel did not run successfully.",
        "  │ exit code: 1",
        "  ╰─> [1 lines of output]",
        "      ModuleNotFoundError: No module named 'numpy'",
        "      [end of output]",
        "",
        "error: subprocess-exited-with-error",
    ]
    kept = lines_that_matter(output)
    assert kept[0] == "  error: subprocess-exited-with-error"
    assert "      ModuleNotFoundError: No module named 'numpy'" in kept
    assert "Collecting broken-pkg" not in kept and kept[-1] == "error: subprocess-exited-with-error"


def test_without_an_error_line_the_last_lines_are_kept() -> None:
    output = [f"line {n}" for n in range(20)]
    assert lines_that_matter(output) == output[-8:]
