"""The agent's ``framework`` op: what TensorFlow in a python on the host reports, without hanging or crashing.

TensorFlow itself is not installed here; a stand-in package with the same few attributes the op reads
(``__version__``, ``config.list_physical_devices``, ``test.is_built_with_cuda``) is put on PYTHONPATH.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpubox.remote.agent import host as agent
from gpubox.remote.gpu.frameworks import FrameworkView

STAND_IN = """
import sys
__version__ = "2.17.1"

class _Device:
    def __init__(self, name):
        self.name = name

class config:
    @staticmethod
    def list_physical_devices(kind):
        return [_Device("/physical_device:GPU:0"), _Device("/physical_device:GPU:1")] if kind == "GPU" else []

class test:
    @staticmethod
    def is_built_with_cuda():
        return True

print("TensorFlow chatter on stdout")
print("and on stderr", file=sys.stderr)
"""


def _stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    package = tmp_path / "site" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))


def test_tensorflow_not_installed() -> None:
    answer = agent.op_framework({"python": sys.executable})
    assert answer == {
        "python": sys.executable,
        "framework": "tensorflow",
        "installed": False,
        "reason": "tensorflow is not installed",
    }


def test_what_an_installed_tensorflow_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in(tmp_path, monkeypatch, STAND_IN)
    answer = agent.op_framework({"python": sys.executable})
    assert answer == {
        "python": sys.executable,
        "framework": "tensorflow",
        "installed": True,
        "version": "2.17.1",
        "gpus": ["/physical_device:GPU:0", "/physical_device:GPU:1"],
        "built_with_cuda": True,
    }
    view = FrameworkView.from_agent(answer)
    assert (view.installed, view.version, view.gpus) == (
        True,
        "2.17.1",
        ("/physical_device:GPU:0", "/physical_device:GPU:1"),
    )


def test_an_import_that_fails_means_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in(tmp_path, monkeypatch, 'raise ImportError("libcudnn.so.9: cannot open shared object file")')
    answer = agent.op_framework({"python": sys.executable})
    assert answer["installed"] is False
    assert (
        answer["reason"]
        == "import tensorflow failed: ImportError: libcudnn.so.9: cannot open shared object file"
    )


def test_a_hanging_import_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stand_in(tmp_path, monkeypatch, "import time\ntime.sleep(30)\n")
    answer = agent.op_framework({"python": sys.executable, "timeout": 0.5})
    assert answer["installed"] is None and answer["reason"] == f"{sys.executable} did not answer within 0.5 s"


def test_a_python_that_crashes_or_is_missing(tmp_path: Path) -> None:
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'Fatal Python error: init_fs_encoding' >&2\nexit 1\n")
    broken.chmod(0o755)
    answer = agent.op_framework({"python": str(broken)})
    assert answer["installed"] is None
    assert answer["reason"] == f"{broken} exited with status 1: Fatal Python error: init_fs_encoding"
    missing = agent.op_framework({"python": "python9.99"})
    assert (missing["installed"], missing["reason"]) == (False, "python9.99 not found on the host")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "python must be a non-empty string"),
        ({"python": "python3", "name": "jax"}, "only tensorflow can be asked about, not 'jax'"),
        ({"python": "python3", "timeout": "soon"}, "timeout must be a number of seconds"),
        ({"python": "python3", "timeout": 3600}, "timeout must be between 0 and 600 s"),
    ],
)
def test_bad_requests_are_refused(args: dict[str, object], message: str) -> None:
    with pytest.raises(agent.RequestError) as caught:
        agent.op_framework(args)
    assert (caught.value.kind, str(caught.value)) == ("bad-request", message)


def test_the_op_is_served() -> None:
    assert agent.OPS["framework"].__wrapped__ is agent.op_framework
