"""`gpubox up` on a real terminal (tmux): the plain report, then the dashboard on the host it holds from the
background; `q` leaves it up and says how to stop it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpubox.state import open_state
from tests.support.cli import run_gpubox
from tests.support.hosthome import ENV_VARIABLE

pytestmark = pytest.mark.integration

TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is missing (scripts/setup.sh installs it when run as root)")
def test_up_on_a_terminal_opens_the_dashboard_and_q_leaves_the_host_up(tmp_path: Path) -> None:
    assert TMUX is not None
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    socket = str(tmp_path / "tmux.sock")
    # The test host's home too: without it the `local` host would be the developer's real home.
    env = {key: os.environ[key] for key in ("PATH", "HOME", "GPUBOX_HOME", ENV_VARIABLE)}
    env |= {"TERM": "xterm-256color", "LANG": "C.UTF-8"}
    script = (
        f"cd {shlex.quote(str(project))} && {shlex.quote(sys.executable)} -m gpubox up --no-services; "
        "echo EXIT=$?; sleep 60"
    )
    tmux = [TMUX, "-S", socket]

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "up"], capture_output=True, text=True, env=env
        ).stdout

    def wait(condition: Callable[[str], bool], what: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        text = screen()
        while not condition(text):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.2)
            text = screen()
        return text

    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "up", "-x", "120", "-y", "36", "sh", "-c", script],
        env=env,
        check=True,
    )
    try:
        shown = wait(lambda text: "▣ gpubox · proj" in text and "● up" in text, "the dashboard on local")
        assert "Hosts · 1 up of 1" in shown
        subprocess.run([*tmux, "send-keys", "-t", "up", "q"], env=env, check=True)
        left = wait(lambda text: "EXIT=" in text, "gpubox up to end")
        assert "EXIT=0" in left, left
        assert "gpubox up local" in left and "✓ connected" in left  # the plain report came first
        assert "left the dashboard: local and its runs keep going; `gpubox down local` stops it" in left
        with open_state() as state:
            holder = state.supervisor("local")
        assert holder is not None and holder.detached
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True)
        run_gpubox("down", "local", cwd=project)
