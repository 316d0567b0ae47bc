"""A sweep over two hosts in network namespaces: both take trials at once, and one whose link goes down for a
while keeps its trial running and is reattached."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_sweep import TRIAL, expected
from tests.support.netns import NetnsHost, NetnsHostsFactory

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _entry(name: str, host: NetnsHost, remote: Path) -> str:
    return (
        f'[hosts.{name}]\nhostname = "{host.ip}"\nuser = "{host.server.user}"\n'
        f'identity_file = "{host.server.client_key}"\naccept_new = true\nconnect_timeout = 3\n'
        f'keepalive_seconds = 2\nremote_dir = "{remote}"\n'
    )


SWEEP = """
[sweep]
command = "python3 trial.py --lr {lr} --units {units} --epochs EPOCHS --pause 1"
metric = "val_accuracy"
direction = "maximize"
sampler = "grid"

[sweep.params]
lr = [0.001, 0.01, 0.1]
units = [32, 128]
"""


def _project(tmp_path: Path, hosts: list[NetnsHost], epochs: int) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    (project / ".git").mkdir()
    (project / "hosts.toml").write_text(
        "".join(_entry(f"n{i}", host, tmp_path / f"remote-n{i}") for i, host in enumerate(hosts))
    )
    (project / ".gitignore").write_text("hosts.toml\n")
    (project / "trial.py").write_text(TRIAL)
    (project / "gpubox.toml").write_text(SWEEP.replace("EPOCHS", str(epochs)))
    return project


def _gpubox(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpubox", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_two_hosts_share_the_trials_and_a_dropped_link_is_reattached(
    tmp_path: Path, netns_hosts: NetnsHostsFactory
) -> None:
    hosts = netns_hosts(2)
    project = _project(tmp_path, hosts, epochs=4)
    started = _gpubox(project, "sweep", "--hosts", "n0,n1")
    assert started.returncode == 0, started.stderr
    assert "running in the background" in started.stdout  # once one host is ready; the other follows
    # Cut n1's wire while a trial runs there, for longer than the scheduler waits on a silent link (20 s with
    # connect_timeout = 3).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        shown = json.loads(_gpubox(project, "sweep", "--show", "--json").stdout)
        if any(t["host"] == "n1" and t["state"] == "running" and t["run"] for t in shown["trials"]):
            break
        time.sleep(0.3)
    hosts[1].link_down()
    time.sleep(25)
    hosts[1].link_up()
    followed = _gpubox(project, "sweep", "--follow", "--json")
    assert followed.returncode == 0, followed.stderr[-3000:]
    document = json.loads(followed.stdout)
    trials = document["trials"]
    assert len(trials) == 6 and {t["state"] for t in trials} == {"complete"}
    assert {t["host"] for t in trials} == {"n0", "n1"}
    for trial in trials:
        assert trial["value"] == pytest.approx(expected(trial["params"]["lr"], trial["params"]["units"]))
    assert document["best"]["params"] == {"lr": 0.01, "units": 128}
    log = Path(document["log"]).read_text()
    assert "n0: no GPU, 1 trial at a time" in log and "n1: no GPU, 1 trial at a time" in log
    assert "  ! n1: no answer for 20 s; dropping the link to reconnect" in log
    assert "its trials keep running there, reconnecting" in log
    assert "  ✓ n1: back after " in log
