"""`gpubox up` asks once, on a terminal, whether a Lambda host's guardian may use the user's API key (Lambda
gives an instance none of its own), and records the answer in hosts.toml with every comment kept; it never asks
again, and without a terminal it asks nothing and records nothing (--yes never agrees for the user)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import run_gpubox
from tests.support.clouds import FakeLambda

pytestmark = pytest.mark.integration

HOSTS = """\
# My hosts: keep this comment.
[providers.lambda]
api_key_env = "GPUBOX_TEST_LAMBDA_KEY"
api_url = "{url}"

[hosts.lam]   # the A100 box
provider = "lambda"
instance_type = "gpu_1x_a100_sxm4"
ssh_key_name = "gpubox-test"
autostop_minutes = 30          # stop it when idle
"""


def _up_on_a_terminal(project: Path, env: dict[str, str], answer: bytes) -> tuple[int, str]:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "lam", "--yes", "--no-tui", "--no-sync"],
        cwd=project,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        os.write(controller, answer + b"\n")
    code = process.wait(timeout=120)
    reader.join(timeout=5)
    os.close(controller)
    return code, seen.decode("utf-8", "replace")


@pytest.mark.parametrize(("answer", "recorded"), [(b"y", "key"), (b"n", "off")])
def test_up_asks_once_and_records_the_answer_with_the_comments_kept(
    tmp_path: Path, answer: bytes, recorded: str
) -> None:
    with FakeLambda(api_key="lambda-account-key") as cloud:
        cloud.capacity_available = False  # nothing to rent: `up` stops after asking, nothing launched
        project = tmp_path / "project"
        project.mkdir()
        hosts = project / "hosts.toml"
        hosts.write_text(HOSTS.format(url=cloud.url))
        env = dict(os.environ, GPUBOX_TEST_LAMBDA_KEY=cloud.api_key)

        code, seen = _up_on_a_terminal(project, env, answer)
        assert "may its guardian use your lambda API key" in seen and "$GPUBOX_TEST_LAMBDA_KEY" in seen, seen
        assert f'recorded self_stop = "{recorded}" for lam' in seen, seen
        assert code != 0 and not cloud.instances  # no capacity: nothing rented
        text = hosts.read_text()
        kept = HOSTS.format(url=cloud.url).splitlines()
        lines = text.splitlines()
        assert [line for line in lines if not line.startswith("self_stop")] == kept
        (line,) = [line for line in lines if line.startswith("self_stop")]
        assert line.startswith(f'self_stop = "{recorded}"  # answered at `gpubox up` on ')
        assert lines.index(line) == lines.index("[hosts.lam]   # the A100 box") + 1

        # Never asked again, on a terminal or not.
        code, seen = _up_on_a_terminal(project, env, b"y")
        assert "may its guardian use" not in seen and hosts.read_text() == text, seen
        assert cloud.api_key not in seen


def test_without_a_terminal_nothing_is_asked_or_recorded(tmp_path: Path) -> None:
    with FakeLambda(api_key="lambda-account-key") as cloud:
        cloud.capacity_available = False
        project = tmp_path / "project"
        project.mkdir()
        (project / "hosts.toml").write_text(HOSTS.format(url=cloud.url))
        env = dict(os.environ, GPUBOX_TEST_LAMBDA_KEY=cloud.api_key)
        done = run_gpubox("up", "lam", "--yes", "--no-tui", "--no-sync", cwd=project, env=env)
        assert "may its guardian use" not in done.stdout + done.stderr
        assert (project / "hosts.toml").read_text() == HOSTS.format(url=cloud.url)
