"""The money keys of hosts.toml: budgets, on_budget, autostop, stop_command; bad values are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubox.config import load_hosts
from tests.support.cli import assert_one_line_error, run_gpubox


def _project(tmp_path: Path, hosts_toml: str) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "hosts.toml").write_text(hosts_toml)
    return folder


def test_money_keys_apply_with_defaults(tmp_path: Path) -> None:
    folder = _project(
        tmp_path,
        "[defaults]\ntotal_budget_usd = 200\nbudget_usd = 40\nautostop_minutes = 30\n\n"
        '[hosts.box]\nhostname = "gpu.example.org"\nbudget_usd = 50\non_budget = "warn"\n'
        'autostop_gpu_percent = 12.5\nstop_command = ["sudo", "shutdown", "-h", "now"]\n\n'
        "[hosts.quiet]\nautostop_minutes = 0\n\n"
        "[hosts.local]\nautostop_minutes = 0.05\n",
    )
    hosts = load_hosts(folder)
    box, quiet, local = hosts.get("box"), hosts.get("quiet"), hosts.get("local")
    assert hosts.total_budget_usd == 200.0
    assert (box.budget_usd, box.on_budget, box.autostop_minutes, box.autostop_gpu_percent) == (
        50.0,
        "warn",
        30.0,
        12.5,
    )
    assert box.stop_command == "sudo shutdown -h now"
    assert (quiet.budget_usd, quiet.on_budget, quiet.autostop_minutes, quiet.stop_command) == (
        40.0,
        "stop",
        0.0,
        None,
    )
    assert (local.autostop_minutes, local.autostop_gpu_percent, local.budget_usd) == (0.05, 5.0, 40.0)


@pytest.mark.parametrize(
    ("hosts_toml", "message"),
    [
        (
            "[hosts.box]\nbudget_usd = 0\n",
            "gpubox: hosts.toml:2: hosts.box.budget_usd: expected a number > 0, got 0",
        ),
        (
            '[hosts.box]\nbudget_usd = "50"\n',
            'gpubox: hosts.toml:2: hosts.box.budget_usd: expected a number > 0, got "50"',
        ),
        (
            '[hosts.box]\non_budget = "halt"\n',
            'gpubox: hosts.toml:2: hosts.box.on_budget: expected "stop" or "warn", got "halt"',
        ),
        (
            "[hosts.box]\nautostop_minutes = -5\n",
            "gpubox: hosts.toml:2: hosts.box.autostop_minutes: expected minutes: a number >= 0 "
            "(0 turns autostop off), got -5",
        ),
        (
            "[defaults]\nautostop_minutes = true\n",
            "gpubox: hosts.toml:2: defaults.autostop_minutes: expected minutes: a number >= 0 "
            "(0 turns autostop off), got true",
        ),
        (
            "[hosts.box]\nautostop_gpu_percent = 150\n",
            "gpubox: hosts.toml:2: hosts.box.autostop_gpu_percent: expected a percentage: a number 0-100, got 150",
        ),
        (
            '[hosts.box]\nstop_command = ""\n',
            "gpubox: hosts.toml:2: hosts.box.stop_command: expected a command: a non-empty string or a list "
            'of strings, got ""',
        ),
        (
            '[hosts.local]\nstop_command = "sudo poweroff"\n',
            'gpubox: hosts.toml:2: hosts.local.stop_command: not used by provider "local" '
            "(gpubox runs that host itself)",
        ),
        (
            "[hosts.box]\ntotal_budget_usd = 100\n",
            "gpubox: hosts.toml:2: hosts.box.total_budget_usd: only allowed in [defaults] "
            "(the budget of all hosts together)",
        ),
        (
            "[defaults]\ntotal_budget_usd = -1\n",
            "gpubox: hosts.toml:2: defaults.total_budget_usd: expected a number > 0, got -1",
        ),
        (
            "[hosts.box]\nbudget = 10\n",
            'gpubox: hosts.toml:2: hosts.box.budget: unknown key; did you mean "budget_usd"?',
        ),
        (
            "[hosts.box]\nautostop = 10\n",
            'gpubox: hosts.toml:2: hosts.box.autostop: unknown key; did you mean "autostop_minutes"?',
        ),
    ],
)
def test_bad_money_values_are_one_line_errors(tmp_path: Path, hosts_toml: str, message: str) -> None:
    folder = _project(tmp_path, hosts_toml)
    assert assert_one_line_error(run_gpubox("cost", cwd=folder), 2) == message
