"""Multi-host runs on two hosts in network namespaces: TensorFlow's MultiWorkerMirroredStrategy on CPU, one run
id with a part per host, and a failed worker taking the run (and the other worker) down."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_gpubox
from tests.support.hosthome import host_home
from tests.support.netns import NetnsHost, NetnsHostsFactory

pytestmark = [pytest.mark.integration, pytest.mark.netns]

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"


def host_runs() -> Path:
    """The namespace hosts all log in with the session's test host home, so they share its runs folder."""
    return host_home() / ".gpubox" / "runs"


WORKER = """\
import json, os, sys, time
keys = ["TF_CONFIG", "GPUBOX_MULTIHOST_RUN", "GPUBOX_NODE_RANK", "GPUBOX_NUM_NODES", "GPUBOX_NODE_IPS",
        "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "GPUBOX_RUN_ID"]
print("env " + json.dumps({key: os.environ.get(key) for key in keys}), flush=True)
time.sleep(float(sys.argv[1]))
"""


def _subnet(host: NetnsHost) -> str:
    return host.ip.rsplit(".", 1)[0] + ".0/24"


@contextlib.contextmanager
def _joined(hosts: list[NetnsHost]) -> Iterator[None]:
    """Let the namespaces reach each other through this machine, and nothing else.

    Each namespace gets a route to the other namespaces' /24s only (no default route), through its root-side
    gateway, and this machine forwards only what arrives on those veths (per-interface forwarding; the global
    net.ipv4.ip_forward is left as it is). The veths, and with them these settings, go away with the lab.
    """
    for host in hosts:
        for other in hosts:
            if other is not host:
                subprocess.run(
                    ["ip", "-n", host.netns, "route", "add", _subnet(other), "via", host.gateway], check=True
                )
    knobs = [Path(f"/proc/sys/net/ipv4/conf/{host.veth}/forwarding") for host in hosts]
    before = [knob.read_text() for knob in knobs]
    for knob in knobs:
        knob.write_text("1\n")
    try:
        yield
    finally:
        for knob, value in zip(knobs, before, strict=True):
            with contextlib.suppress(OSError):  # the lab may already have removed the veth
                knob.write_text(value)


def _entry(name: str, host: NetnsHost, remote: Path) -> str:
    return (
        f'[hosts.{name}]\nhostname = "{host.ip}"\nuser = "{host.server.user}"\n'
        f'identity_file = "{host.server.client_key}"\naccept_new = true\nconnect_timeout = 5\n'
        f'remote_dir = "{remote}"\n'
    )


@pytest.fixture
def cluster(tmp_path: Path, netns_hosts: NetnsHostsFactory) -> Iterator[tuple[Path, list[NetnsHost]]]:
    hosts = netns_hosts(2)
    project = tmp_path / "digits"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("logs", "checkpoints", "__pycache__"))
    (project / "worker.py").write_text(WORKER)
    (project / "hosts.toml").write_text(
        '[defaults]\nhost = "n0"\n\n'
        + "\n".join(_entry(f"n{i}", h, tmp_path / f"remote{i}") for i, h in enumerate(hosts))
    )
    with _joined(hosts):
        yield project, hosts
        _wait_for_watchers()


def _wait_for_watchers(timeout: float = 20.0) -> None:
    """The watcher a multi-host run leaves behind ends by itself once the run has ended."""
    folder = Path(os.environ["GPUBOX_HOME"]) / "state" / "multihost"
    deadline = time.monotonic() + timeout
    pids = [int(p.read_text()) for p in folder.glob("m-*.watcher") if p.read_text().strip().isdigit()]
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"watchers still running after the run ended: {left}"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _started(stdout: str) -> tuple[str, list[tuple[str, str]]]:
    """The run id and (host, part run id) per worker, from `gpubox run --hosts`' output."""
    lines = stdout.splitlines()
    run_id = next(line.split()[1] for line in lines if line.startswith("started m-"))
    parts = [
        (line.split()[2], line.split()[3]) for line in lines if line.startswith("  worker ") and " r-" in line
    ]
    return run_id, parts


def _listing(project: Path, host: str = "n0") -> dict[str, dict[str, object]]:
    listing = run_gpubox("runs", "--host", host, "--all", "--json", cwd=project)
    assert listing.returncode == 0, listing.stderr
    return {run["id"]: run for run in json.loads(listing.stdout)["runs"]}


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _env_line(part: str) -> dict[str, str]:
    log = (host_runs() / part / "log").read_text()
    return json.loads(next(line for line in log.splitlines() if line.startswith("env "))[4:])


def test_two_hosts_train_digits_with_multi_worker_mirrored_strategy(
    cluster: tuple[Path, list[NetnsHost]], tmp_path: Path
) -> None:
    project, hosts = cluster
    result = run_gpubox(
        "run",
        "--hosts",
        "n0,n1",
        "-f",
        "--",
        "python",
        "train.py",
        "--epochs",
        "2",
        "--multi-worker",
        cwd=project,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, parts = _started(result.stdout)
    assert [host for host, _ in parts] == ["n0", "n1"]
    finals = {}
    for line in result.stdout.splitlines():
        if line.startswith(("[n0] final ", "[n1] final ")):
            finals[line[1:3]] = json.loads(line.split("final ", 1)[1])
    assert set(finals) == {"n0", "n1"}, result.stdout[-3000:]
    # One model trained together: the workers' metrics are all-reduced, so both saw the same ones.
    assert finals["n0"] == finals["n1"]
    assert finals["n0"]["val_accuracy"] > 0.3
    # Only the chief (worker 0) saves the checkpoint, in its host's project folder.
    assert (tmp_path / "remote0" / "checkpoints" / "digits.keras").stat().st_size > 10_000
    assert not (tmp_path / "remote1" / "checkpoints" / "digits.keras").exists()
    config = [
        json.loads(json.loads((host_runs() / part / "spec.json").read_text())["env"]["TF_CONFIG"])
        for _, part in parts
    ]
    workers = config[0]["cluster"]["worker"]
    assert [w.rsplit(":", 1)[0] for w in workers] == [h.ip for h in hosts]
    assert [c["task"] for c in config] == [{"type": "worker", "index": 0}, {"type": "worker", "index": 1}]
    assert config[1]["cluster"] == config[0]["cluster"]

    listing = _listing(project)
    run = listing[run_id]
    assert (run["state"], run["exit_code"], run["host"]) == ("succeeded", 0, "n0,n1")
    assert [(p["host"], p["id"], p["state"]) for p in run["parts"]] == [  # type: ignore[union-attr]
        ("n0", parts[0][1], "succeeded"),
        ("n1", parts[1][1], "succeeded"),
    ]
    # A part shows inside its run, not as a run of its own (the namespace hosts share a home folder, so each
    # lists the other's runs too, as hosts sharing an NFS home do).
    assert parts[0][1] not in listing and parts[1][1] not in listing
    # The same run seen from the other host's listing.
    assert _listing(project, "n1")[run_id]["state"] == "succeeded"


def test_a_killed_worker_fails_the_run_and_the_watcher_stops_the_other(
    cluster: tuple[Path, list[NetnsHost]],
) -> None:
    project, hosts = cluster
    started = run_gpubox("run", "--hosts", "n0,n1", "--", "python", "worker.py", "300", cwd=project)
    assert started.returncode == 0, started.stderr
    run_id, parts = _started(started.stdout)
    assert len(parts) == 2
    logs = [host_runs() / part / "log" for _, part in parts]
    _wait_for(lambda: all(b"env " in log.read_bytes() for log in logs), 30, "both workers to start")

    envs = [_env_line(part) for _, part in parts]
    ips = ",".join(h.ip for h in hosts)
    for index, env in enumerate(envs):
        assert env["GPUBOX_MULTIHOST_RUN"] == run_id
        assert env["GPUBOX_RUN_ID"] == parts[index][1]
        assert (env["GPUBOX_NODE_RANK"], env["RANK"]) == (str(index), str(index))
        assert (env["GPUBOX_NUM_NODES"], env["WORLD_SIZE"]) == ("2", "2")
        assert env["GPUBOX_NODE_IPS"] == ips
        assert env["MASTER_ADDR"] == hosts[0].ip
        tf_config = json.loads(env["TF_CONFIG"])
        assert tf_config["task"] == {"type": "worker", "index": index}
        assert [w.rsplit(":", 1)[0] for w in tf_config["cluster"]["worker"]] == [h.ip for h in hosts]
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"]
    assert envs[0]["MASTER_PORT"] not in envs[0]["TF_CONFIG"]
    assert _listing(project)[run_id]["state"] == "running"

    victim = int((host_runs() / parts[1][1] / "pid").read_text())
    os.killpg(victim, signal.SIGKILL)
    # Nobody follows the run: the watcher it left behind stops the other worker.
    other = host_runs() / parts[0][1]
    _wait_for(lambda: (other / "exit_code").exists(), 30, "the other worker to be stopped")
    assert (other / "stopped").exists()

    run = _listing(project, "n1")[run_id]
    assert (run["state"], run["exit_code"], run["failed_part"]) == ("failed", 137, "n1")
    assert [(p["state"], p["exit_code"]) for p in run["parts"]] == [("stopped", 143), ("failed", 137)]  # type: ignore[union-attr]

    logs_f = run_gpubox("logs", run_id, "-f", cwd=project)
    assert logs_f.returncode == 137, logs_f.stderr
    out = logs_f.stdout.splitlines()
    assert sorted(line.split(" ", 2)[:2] for line in out) == [["[n0]", "env"], ["[n1]", "env"]]
    assert logs_f.stderr.strip().endswith(f"worker 1 on n1 ({parts[1][1]}) failed (exit 137)")

    table = run_gpubox("runs", "--host", "n0", cwd=project)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()]
    assert [run_id, "n0,n1", "failed"] in [row[:3] for row in rows], table.stdout
    assert ["├", parts[0][1], "n0", "stopped"] in [row[:4] for row in rows], table.stdout
    assert ["└", parts[1][1], "n1", "failed"] in [row[:4] for row in rows], table.stdout


def test_run_follow_stops_the_others_and_exits_with_the_failed_workers_code(
    cluster: tuple[Path, list[NetnsHost]], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, _ = cluster
    monkeypatch.setenv("GPUBOX_MULTIHOST_WATCHER", "0")  # only the follower watches this run
    follower = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "run", "--hosts", "n1,n0", "-f", "--", "python", "worker.py", "300"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert follower.stdout is not None
        header: list[str] = []
        while not (header and header[-1].startswith("  worker 1:")):
            line = follower.stdout.readline()
            assert line, "gpubox ended before starting the run"
            header.append(line)
        run_id, parts = _started("".join(header))
        assert [host for host, _ in parts] == ["n1", "n0"]
        logs = [host_runs() / part / "log" for _, part in parts]
        _wait_for(lambda: all(b"env " in log.read_bytes() for log in logs), 30, "both workers to start")
        os.killpg(int((host_runs() / parts[0][1] / "pid").read_text()), signal.SIGKILL)  # the chief
        stdout, stderr = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert follower.returncode == 137, stderr
    assert f"worker 0 on n1 ({parts[0][1]}) failed (exit 137); stopping n0 ({parts[1][1]})" in stderr
    assert (host_runs() / parts[1][1] / "stopped").exists()
    assert "[n1] env " in stdout and "[n0] env " in stdout
    assert _listing(project)[run_id]["state"] == "failed"
