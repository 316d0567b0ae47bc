"""Run the real ``gpubox`` command line in a subprocess, the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.sshd import SshServer


def run_gpubox(
    *args: str, cwd: Path, input: str | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpubox", *args],
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ.copy(),
    )


def host_entry(name: str, server: SshServer, **extra: object) -> str:
    """A [hosts.NAME] block for hosts.toml pointing at a test sshd."""
    values: dict[str, object] = {
        "hostname": server.host,
        "port": server.port,
        "user": server.user,
        "identity_file": str(server.client_key),
        **extra,
    }
    lines = [f"[hosts.{name}]"]
    for key, value in values.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def assert_one_line_error(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpubox: "), result.stderr
    return lines[0]
