"""A quiet env build through the real CLI on the real `local` host: one line while it builds (what pip is doing
and for how long, changing in place on a terminal), pip's whole output kept in a log on the host and its path
said, and on a failure only the lines that say why.

The requirements are small real packages from the machine's package index; each test's file carries a token of
its own so the env is built here (not found in the shared env cache), and the env is removed afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import hosthome
from tests.support.cli import run_gpubox
from tests.support.terminal import on_a_terminal

pytestmark = pytest.mark.integration

SMALL_PACKAGES = "tabulate\ntoolz\n"
"""Two pure-Python packages that the host's Python does not already have."""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    (folder / ".gitignore").write_text("hosts.toml\n")
    before = set(os.listdir(hosthome.host_cache() / "envs"))
    yield folder
    run_gpubox("down", "local", cwd=folder)
    # The envs these tests made are theirs alone (their requirements carry a token): leave none in the cache. The
    # cache is shared with the other test processes, so only envs whose build installed this file's packages go:
    # removing another test's env in the middle of its build broke it (its ensurepip found its folder gone).
    envs = hosthome.host_cache() / "envs"
    for name in set(os.listdir(envs)) - before:
        key = name.removesuffix(".log").removesuffix(".lock").removesuffix(".exit")
        try:
            log = (envs / f"{key}.log").read_text(errors="replace")
        except OSError:
            continue
        if not any(f"Collecting {package}" in log for package in ("tabulate", "toolz")):
            continue
        path = envs / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _requirements(project: Path, text: str) -> None:
    (project / "requirements.txt").write_text(f"{text}# {uuid.uuid4().hex}\n")


def test_run_says_it_builds_keeps_pips_output_on_the_host_and_is_silent_once_cached(project: Path) -> None:
    _requirements(project, SMALL_PACKAGES)
    first = run_gpubox(
        "run", "-f", "--", "python", "-c", "import tabulate, toolz; print('imported')", cwd=project
    )
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    env_lines = [line for line in lines if " env " in line]
    assert len(env_lines) == 2, lines
    building = re.fullmatch(
        r"  · env    building ~/\.gpubox/envs/(\w+) \(requirements\.txt\); pip's log on the host: (\S+)",
        env_lines[0],
    )
    assert building, env_lines[0]
    assert re.fullmatch(
        r"  ✓ env    ~/\.gpubox/envs/\w+ \(requirements\.txt, built in \d+:\d\d:\d\d\)", env_lines[1]
    )
    assert "imported" in lines
    # Nothing of pip's own output reached the terminal...
    assert not [line for line in lines if re.search(r"Collecting|Downloading|Successfully installed", line)]
    # ...it is all in the log on the host, whose path was said.
    log = Path(building.group(2))
    assert log.name == building.group(1) + ".log"
    text = log.read_text()
    # (pip says "Processing" for a package from a local index or wheel folder, "Collecting" otherwise.)
    assert re.search(r"(Collecting|Processing) \S*tabulate", text) and re.search(
        r"(Collecting|Processing) \S*toolz", text
    )
    assert re.search(r"Successfully installed .*tabulate", text)
    again = run_gpubox("run", "-f", "--", "python", "-c", "print('again')", cwd=project)
    assert again.returncode == 0, again.stderr
    assert not [line for line in again.stdout.splitlines() if " env " in line], again.stdout


def test_a_failed_build_shows_the_lines_that_say_why_and_where_the_log_is(project: Path) -> None:
    _requirements(project, "tabulate\ngpubox-no-such-package-anywhere==9.9.9\n")
    result = run_gpubox("run", "--", "python", "-c", "print(1)", cwd=project)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    *details, last = result.stderr.splitlines()
    assert re.fullmatch(
        r"gpubox: requirement 'gpubox-no-such-package-anywhere==9\.9\.9' could not be installed from "
        r"requirements\.txt on local \(the build's log on the host: \S+\.log\)",
        last,
    ), last
    assert details and all(line.startswith("    | ") for line in details), details
    assert any("No matching distribution found for gpubox-no-such-package-anywhere" in d for d in details)
    assert not any("tabulate" in line for line in details)  # what went well is not what matters
    log = Path(last.rsplit(": ", 1)[1].rstrip(")"))
    assert re.search(r"(Collecting|Processing) \S*tabulate", log.read_text())  # the whole output is kept


def test_a_failed_setup_command_shows_its_own_output(project: Path) -> None:
    marker = uuid.uuid4().hex
    (project / "gpubox.toml").write_text(
        f'[env]\nsetup = ["echo preparing {marker}", "echo about to fail; ls /gpubox-no-such-folder"]\n'
    )
    result = run_gpubox("run", "--", "python", "-c", "print(1)", cwd=project)
    assert result.returncode == 1
    *details, last = result.stderr.splitlines()
    assert last.startswith("gpubox: an [env] setup command failed on local (the build's log on the host: ")
    assert details[0] == "    | gpubox-env: setup: echo about to fail; ls /gpubox-no-such-folder"
    assert "    | about to fail" in details
    assert any("gpubox-no-such-folder" in line and "No such file" in line for line in details)
    assert not any(marker in line for line in details)  # the first setup command went well


def test_up_says_the_env_once(project: Path) -> None:
    _requirements(project, SMALL_PACKAGES)
    for expected in ("built in", "cached"):
        started = run_gpubox("up", "--detach", "--no-services", cwd=project, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        finished = [line for line in started.stdout.splitlines() if line.startswith("  ✓ env ")]
        assert len(finished) == 1 and expected in finished[0], started.stdout
        assert len([line for line in started.stdout.splitlines() if " env " in line]) == (
            2 if expected == "built in" else 1
        ), started.stdout
        assert run_gpubox("up", "--stop", cwd=project).returncode == 0


def test_on_a_terminal_the_build_is_one_line_that_changes_in_place(project: Path) -> None:
    _requirements(project, SMALL_PACKAGES)
    code, text, stderr = on_a_terminal(
        "run",
        "--",
        "python",
        "-c",
        "print(1)",
        cwd=project,
        env=dict(os.environ, COLUMNS="200"),
        stderr_apart=True,
        timeout=300,
    )
    assert code == 0, stderr
    # Redrawn in place (carriage return, erase line): what pip is doing, and the time so far.
    drawn = re.findall(r"\r\x1b\[2K  · env    ([^\r\n]*?) · (\d+:\d\d:\d\d)", text)
    steps = {step for step, _clock in drawn}
    assert "creating the venv" in steps, drawn
    assert {"collecting tabulate", "collecting toolz"} <= steps, drawn
    assert any(step.startswith("installing 2 packages: ") for step in steps), drawn
    assert "built in" in text.split("\r\x1b[2K")[-1]  # the line for good replaces the changing one
    assert not re.search(r"(Collecting|Processing) \S*tabulate", text)
