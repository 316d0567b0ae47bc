"""Faults against the real command line and a host in a network namespace; every test ends with the invariant
check of ``harness.Invariants`` (trees hash-identical, host outputs kept, nothing written outside the allowed
folders, every run accounted for, logs byte-identical to the host's).

Link-down durations are drawn from a seeded 5-8 s here to keep the suite short; the bench campaign
(``bench/fault_campaign.py``) uses the issue's full 5-30 s range.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import (
    FAULT_KINDS,
    Counters,
    Editor,
    FaultSchedule,
    Invariants,
    SmallDisk,
    Workspace,
    kill_sshd,
    link_cut,
    netem_unavailable_reason,
    run_schedule,
    seed_tree,
    wait_until,
)
from tests.support.netns import NetnsHost

pytestmark = [pytest.mark.integration, pytest.mark.netns]

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"
CI_LINK_DOWN = (5.0, 8.0)


def _down_seconds(seed: int) -> float:
    return round(random.Random(seed).uniform(*CI_LINK_DOWN), 2)


def _assert_kept(invariants: Invariants) -> None:
    problems = invariants.check()
    assert not problems, "\n".join(problems)


def _digits(workspace: Workspace) -> None:
    shutil.rmtree(workspace.project)
    shutil.copytree(EXAMPLE, workspace.project, ignore=shutil.ignore_patterns("logs", "checkpoints"))


def test_link_down_during_the_initial_sync(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 1500, big=6, big_size=8_000_000)
    invariants = Invariants(ws, counters)
    sync = ws.spawn("sync")
    # Cut the wire as soon as the first batch has landed: the rest of the tree is then in flight or queued.
    assert wait_until(lambda: ws.remote.exists() and any(ws.remote.iterdir()), timeout=60, interval=0.005)
    with link_cut(lab):
        mid_sync = sync.poll() is None
        time.sleep(_down_seconds(1))
    counters.faults["link_down"] += 1
    out, err = sync.communicate(timeout=180)
    assert mid_sync, "the sync ended before the link went down: the tree is too small to test this"
    assert sync.returncode == 0, (out, err)
    _assert_kept(invariants)


def test_link_down_during_a_burst_of_live_edits(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 200)
    invariants = Invariants(ws, counters)
    ws.up()
    editor = Editor(ws.project, seed=2)
    editor.burst(60, pause=0.01)
    with link_cut(lab):
        editor.burst(120, pause=0.02)  # edits go on while the host is unreachable
        time.sleep(_down_seconds(2))
    counters.faults["link_down"] += 1
    editor.burst(60, pause=0.01)
    _assert_kept(invariants)
    assert ws.up_alive(), ws.up_log_text()
    ws.stop_up()


def test_link_down_during_logs_follow(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    """A real TensorFlow training (examples/digits) followed with `logs -f` across a dead link."""
    ws = Workspace(lab, tmp_path)
    _digits(ws)
    invariants = Invariants(ws, counters)
    started = ws.gpubox("run", "--", "python", "train.py", "--epochs", "60", timeout=900, check=True)
    run_id = next(line.split()[1] for line in started.stdout.splitlines() if line.startswith("started "))
    invariants.expect_run(run_id)
    follower = ws.spawn("logs", run_id, "-f")
    host_log = invariants.home / ".gpubox" / "runs" / run_id / "log"
    assert wait_until(lambda: host_log.exists() and b"Epoch 2/" in host_log.read_bytes(), timeout=300)
    with link_cut(lab):
        time.sleep(_down_seconds(3))
    counters.faults["link_down"] += 1
    out, err = follower.communicate(timeout=600)
    assert follower.returncode == 0, err.decode(errors="replace")
    assert b"link to lab lost" in err or b"Epoch 60/60" in out  # it told the user, or rode out the gap
    assert not invariants.check_log(run_id, shown=out)
    invariants.remember_outputs()
    assert any(name.startswith("checkpoints/") for name in invariants.outputs), invariants.outputs
    _assert_kept(invariants)


def test_a_large_download_through_a_tunnel_survives_the_link_going_down(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """200 MB from a server on the host's loopback, through gpubox's tunnel, with the link cut mid-way."""
    size = 200 * 1000 * 1000
    ws = Workspace(
        lab,
        tmp_path,
        gpubox_toml=(
            "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
            '[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8321\n'
        ),
    )
    seed_tree(ws.project, 20)
    blob = ws.remote / "outputs" / "big.bin"
    blob.parent.mkdir(parents=True)
    digest = hashlib.sha256()
    with open(blob, "wb") as handle:
        rng = random.Random(4)
        for _ in range(size // (1 << 20)):
            chunk = rng.randbytes(1 << 20)
            digest.update(chunk)
            handle.write(chunk)
        tail = rng.randbytes(size % (1 << 20))
        digest.update(tail)
        handle.write(tail)
    invariants = Invariants(ws, counters)
    invariants.remember_outputs()
    ws.up(services=True)
    url = next(
        line.split()[-1] for line in ws.gpubox("status").stdout.splitlines() if "http://127.0.0.1:" in line
    ).rstrip("/")
    received = hashlib.sha256()
    count = 0
    at_link_up: list[int] = []

    def cut_link() -> None:
        with link_cut(lab):
            time.sleep(_down_seconds(4))
        at_link_up.append(count)

    cut = threading.Thread(target=cut_link)
    with httpx.stream("GET", f"{url}/outputs/big.bin", timeout=httpx.Timeout(120.0)) as response:
        assert response.status_code == 200
        for chunk in response.iter_bytes(1 << 16):
            received.update(chunk)
            count += len(chunk)
            if count >= size // 4 and not cut.is_alive() and not cut.ident:
                cut.start()
    cut.join()
    counters.faults["link_down"] += 1
    counters.bytes_compared += count
    assert cut.ident is not None, "the link never went down during the download"
    assert at_link_up[0] < size, "the download was over before the link came back"
    assert (count, received.hexdigest()) == (size, digest.hexdigest())
    _assert_kept(invariants)
    ws.stop_up()


def test_sshd_killed_and_restarted_during_a_batch(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 100)
    invariants = Invariants(ws, counters)
    ws.up()
    # A batch big enough to be in flight when the host's sshd (and with it every session) dies.
    seed_tree(ws.project, 0, big=8, big_size=6_000_000)
    assert wait_until(
        lambda: (ws.remote / ".gpubox-staging").exists() or (ws.remote / "data").exists(), 60, 0.002
    )
    kill_sshd(lab.server)
    counters.faults["sshd_kill_restart"] += 1
    Editor(ws.project, seed=5).burst(40)
    time.sleep(1.5)
    lab.server.start()
    _assert_kept(invariants)
    assert ws.up_alive(), ws.up_log_text()
    ws.stop_up()


def test_a_one_shot_sync_cut_by_sshd_dying_fails_cleanly_and_the_next_one_converges(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 300, big=8, big_size=6_000_000)
    invariants = Invariants(ws, counters)
    sync = ws.spawn("sync")
    assert wait_until(lambda: ws.remote.exists() and any(ws.remote.iterdir()), timeout=60, interval=0.002)
    kill_sshd(lab.server)
    counters.faults["sshd_kill_restart"] += 1
    _out, err = sync.communicate(timeout=120)
    lines = err.decode().splitlines()
    if sync.returncode != 0:  # it may have finished just before the kill
        # One line, exit 3 (paramiko's own "Socket exception: ..." log line used to come first).
        assert sync.returncode == 3, err
        assert lines == [f"gpubox: the connection to {lab.server.user}@{lab.ip} was lost"], err
    lab.server.start()
    again = ws.gpubox("sync")
    assert again.returncode == 0, again.stderr
    _assert_kept(invariants)


def test_a_sync_sigkilled_mid_pipeline_then_edited_leaves_no_conflict_copies(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """Regression: files the host applied from a batch whose answer the killed gpubox never recorded were taken
    for the host's own work; edited locally and synced again, each was set aside as NAME.gpubox-conflict-* (420
    stray copies of gpubox's own writes in the first run of this test)."""
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 3000, size=20_000)
    invariants = Invariants(ws, counters)
    sync = ws.spawn("sync")
    landed = lambda: ws.remote.exists() and sum(1 for _ in ws.remote.rglob("*.py")) > 100  # noqa: E731
    assert wait_until(landed, timeout=60, interval=0.001)
    sync.kill()
    sync.wait()
    counters.faults["gpubox_sigkill"] += 1
    time.sleep(0.5)  # the agent finishes what it had already read
    on_host = [path.relative_to(ws.remote) for path in ws.remote.rglob("*.py")]
    for rel in on_host:
        (ws.project / rel).write_text(f"edited after the kill: {rel}\n")
    again = ws.gpubox("sync")
    assert again.returncode == 0, again.stderr
    assert "conflict" not in again.stdout, again.stdout[:2000]
    assert not list(ws.remote.rglob("*.gpubox-conflict-*"))
    _assert_kept(invariants)


def test_gpubox_sigkilled_mid_batch_then_started_again(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 100)
    invariants = Invariants(ws, counters)
    ws.up()
    seed_tree(ws.project, 0, big=8, big_size=6_000_000)
    Editor(ws.project, seed=6).burst(50)
    assert wait_until(
        lambda: (ws.remote / ".gpubox-staging").exists() or (ws.remote / "data").exists(), 60, 0.002
    )
    ws.kill_up()
    counters.faults["gpubox_sigkill"] += 1
    Editor(ws.project, seed=7).burst(50)  # edits while no gpubox runs at all
    ws.up()
    _assert_kept(invariants)
    Editor(ws.project, seed=8).burst(20)  # and live sync works after the restart
    _assert_kept(invariants)
    ws.stop_up()


def test_logs_follow_stops_at_once_on_a_changed_host_key_and_leaks_no_connection(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """Regression, found by the campaign: a `logs -f` whose host came back with another key retried every 0.2 s
    for ever, and every failed handshake left its TCP connection open (fabric closes only connections whose
    connect() succeeded), until the host's sshd hit MaxStartups and refused everyone else as well."""
    ws = Workspace(lab, tmp_path)
    (ws.project / "job.py").write_text("print('started')\n")
    ws.gpubox("sync", check=True)
    run_id = ws.start_run("sleep", "20")
    lab.server.stop()  # the host is rebuilt: same address, new host key
    for name in ("host_ed25519", "host_ed25519.pub"):
        (lab.server.files.folder / name).unlink()
    from gpubox.remote.sshd import prepare_sshd_files

    prepare_sshd_files(lab.server.files.folder, listen=lab.ip, user=lab.server.user)
    lab.server.start()
    counters.faults["sshd_kill_restart"] += 1
    follower = ws.spawn("logs", run_id, "-f")
    try:
        _out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    lines = err.decode().splitlines()
    assert follower.returncode == 3, err
    assert len(lines) == 1 and lines[0].startswith(f"gpubox: HOST KEY CHANGED for {lab.ip}: "), err
    # And in one process, handshake after failed handshake: no socket stays open.
    from gpubox.config import HostConfig
    from gpubox.errors import HostKeyChanged
    from gpubox.remote.session import open_connection

    host = HostConfig(
        name="lab", hostname=lab.ip, user=lab.server.user, identity_file=str(lab.server.client_key)
    )
    for _ in range(5):
        with pytest.raises(HostKeyChanged):
            open_connection(host)
    assert wait_until(lambda: _connections_to(lab.ip) == 0, timeout=10), _connections_to(lab.ip)


def _connections_to(ip: str) -> int:
    listing = subprocess.run(
        ["ss", "-tn", "state", "established", "( dport = :22 )"], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for line in listing.splitlines() if f"{ip}:22" in line)


def test_an_agent_start_cut_off_by_the_link_is_a_dropped_link_not_a_broken_agent(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """Regression, found by the campaign: `logs -f` started just as the link went down ended with "the gpubox
    agent did not answer within 10 s" (an AgentError, which it does not ride out) instead of waiting for the link.
    A start that times out now asks the SSH transport itself: no answer there means the link, HostUnreachable."""
    from gpubox.config import HostConfig
    from gpubox.errors import HostUnreachable
    from gpubox.remote.session import open_connection, start_agent

    slow = tmp_path / "slow-python"  # a python that takes a moment to start, so the cut lands mid-start
    slow.write_text('#!/bin/sh\nsleep 2\nexec python3 "$@"\n')
    slow.chmod(0o755)
    host = HostConfig(
        name="lab",
        hostname=lab.ip,
        user=lab.server.user,
        identity_file=str(lab.server.client_key),
        accept_new=True,
        connect_timeout=2.0,
        python=str(slow),
    )
    connection, _spec = open_connection(host)
    caught: list[BaseException] = []

    def start() -> None:
        try:
            start_agent(connection, host).close()
        except BaseException as exc:
            caught.append(exc)

    starting = threading.Thread(target=start)
    try:
        starting.start()
        time.sleep(0.5)
        with link_cut(lab):
            counters.faults["link_down"] += 1
            starting.join(60)
    finally:
        connection.close()
    assert len(caught) == 1 and isinstance(caught[0], HostUnreachable), caught
    assert "stopped answering while the gpubox agent was starting" in str(caught[0])


def test_an_agent_start_delayed_by_a_short_outage_still_succeeds(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """The CI campaign (seed 2, after the fix above) saw the link come back just before the start timed out while
    the agent's answer was still on its way (TCP retransmission backoff): the probe got through and the start was
    declared stuck. After a probe that answers, what the agent sent is read before giving up. (This test checks
    that a start delayed by an outage succeeds; it does not force that exact race, which the campaign meets.)"""
    from gpubox.config import HostConfig
    from gpubox.remote.session import open_connection, start_agent

    slow = tmp_path / "slow-python"
    slow.write_text('#!/bin/sh\nsleep 2\nexec python3 "$@"\n')
    slow.chmod(0o755)
    host = HostConfig(
        name="lab",
        hostname=lab.ip,
        user=lab.server.user,
        identity_file=str(lab.server.client_key),
        accept_new=True,
        connect_timeout=2.0,  # the start may take 4 s
        python=str(slow),
    )
    connection, _spec = open_connection(host)
    outcome: list[object] = []

    def start() -> None:
        try:
            agent = start_agent(connection, host)
            outcome.append(agent.hello)
            agent.close()
        except BaseException as exc:
            outcome.append(exc)

    starting = threading.Thread(target=start)
    try:
        starting.start()
        time.sleep(0.5)
        # The agent answers at ~2 s into the dead link; the link is back at ~3.7 s, but the host's TCP retries
        # only at its next backoff step (~5 s), after the start's 4 s timeout.
        with link_cut(lab):
            counters.faults["link_down"] += 1
            time.sleep(3.2)
        starting.join(60)
    finally:
        connection.close()
    assert len(outcome) == 1 and isinstance(outcome[0], dict) and outcome[0].get("protocol"), outcome


def test_a_connection_dropped_during_authentication_is_not_a_refused_key(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """Regression, found by the campaign (seeds 2 and 22): paramiko reports a connection that died mid-authentication
    as "Authentication failed.", which gpubox turned into "refused our keys; add the public key to the host's
    authorized_keys", a wrong diagnosis, and fatal for `logs -f`. The sshd is killed at seeded moments of
    repeated handshakes; whatever each attempt meets, it must not be called a refusal."""
    from gpubox.config import HostConfig
    from gpubox.errors import AuthenticationFailed
    from gpubox.remote.session import open_connection

    host = HostConfig(
        name="lab",
        hostname=lab.ip,
        user=lab.server.user,
        identity_file=str(lab.server.client_key),
        accept_new=True,
        connect_timeout=3.0,
    )
    open_connection(host)[0].close()  # pin the key
    rng = random.Random(7)
    refused: list[str] = []
    for _ in range(40):
        outcome: list[BaseException | None] = []

        def attempt(outcome: list[BaseException | None] = outcome) -> None:
            try:
                open_connection(host)[0].close()
                outcome.append(None)
            except Exception as exc:
                outcome.append(exc)

        trying = threading.Thread(target=attempt)
        trying.start()
        time.sleep(rng.uniform(0.0, 0.04))
        kill_sshd(lab.server)
        counters.faults["sshd_kill_restart"] += 1
        trying.join(30)
        lab.server.start()
        if outcome and isinstance(outcome[0], AuthenticationFailed):
            refused.append(str(outcome[0]))
    assert not refused, refused


def test_200ms_latency_and_1_percent_loss(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    """Sync, a run, its log and a tunnel over a slow, lossy link (netem on the host's link)."""
    reason = netem_unavailable_reason(lab)
    if reason:
        counters.skipped["netem"] += 1
        pytest.skip(reason)
    ws = Workspace(
        lab,
        tmp_path,
        gpubox_toml=(
            "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
            '[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8322\n'
        ),
    )
    seed_tree(ws.project, 200, big=1, big_size=2_000_000)
    (ws.project / "job.py").write_text(
        "import os\nos.makedirs('outputs', exist_ok=True)\nopen('outputs/done.txt', 'w').write('done')\n"
        "for i in range(500):\n    print('line', i, 'x' * (i % 50))\n"
    )
    invariants = Invariants(ws, counters)
    lab.netem(delay_ms=200, loss_percent=1.0)
    counters.faults["netem"] += 1
    try:
        assert ws.gpubox("sync", timeout=300).returncode == 0
        ws.up(services=True, timeout=300)
        Editor(ws.project, seed=9).burst(30, pause=0.05)
        run_id = ws.start_run("python3", "job.py")
        invariants.expect_run(run_id)
        followed = ws.gpubox("logs", run_id, "-f", timeout=300)
        assert followed.returncode == 0, followed.stderr
        assert not invariants.check_log(run_id, shown=followed.stdout.encode())
        url = next(
            line.split()[-1]
            for line in ws.gpubox("status").stdout.splitlines()
            if "http://127.0.0.1:" in line
        )
        assert httpx.get(f"{url.rstrip('/')}/job.py", timeout=60).status_code == 200
        _assert_kept(invariants)
    finally:
        lab.clear_netem()
    ws.stop_up()


def test_campaign(lab: NetnsHost, tmp_path: Path, counters: Counters) -> None:
    """GPUBOX_CAMPAIGN_SCHEDULES seeded fault schedules (default 4) mixing every fault kind; bench/fault_campaign.py
    runs 200 with the full link-down range."""
    count = int(os.environ.get("GPUBOX_CAMPAIGN_SCHEDULES", "4"))
    kinds = [kind for kind in FAULT_KINDS if kind != "netem" or not netem_unavailable_reason(lab)]
    problems: list[str] = []
    with SmallDisk(tmp_path / "disk", size_mb=64) as disk:
        lab.server.restart()  # its sessions must see the new mount
        for seed in range(count):
            outcome = run_schedule(
                lab,
                tmp_path / f"s{seed}",
                seed,
                counters,
                kinds=kinds,
                link_down_seconds=CI_LINK_DOWN,
                disk=disk,
            )
            problems += [f"{outcome.schedule.describe()}: {p}" for p in outcome.problems]
    assert counters.schedules == count
    assert not problems, "\n".join(problems)


def test_fault_schedules_are_seeded_and_bounded() -> None:
    for seed in range(50):
        first = FaultSchedule(seed, horizon=20, max_faults=3)
        again = FaultSchedule(seed, horizon=20, max_faults=3)
        assert first.faults == again.faults
        assert 1 <= len(first.faults) <= 3
        assert first.seconds <= 20
        for before, after in zip(first.faults, first.faults[1:], strict=False):
            assert before.at + before.seconds <= after.at  # one at a time
    assert (
        FaultSchedule(1).faults != FaultSchedule(2).faults
        or FaultSchedule(3).faults != FaultSchedule(4).faults
    )


def test_a_schedule_restores_everything_even_when_stopped_early(lab: NetnsHost, tmp_path: Path) -> None:
    ws = Workspace(lab, tmp_path)
    schedule = FaultSchedule(0, kinds=["link_down"], horizon=30, max_faults=1, link_down_seconds=(20, 25))
    from tests.reliability.harness import FaultTarget

    schedule.start(FaultTarget(ws))
    assert wait_until(lambda: bool(schedule.outcomes) or _link_is_down(lab), timeout=10)
    schedule.stop()
    schedule.join(timeout=30)
    assert not _link_is_down(lab)
    assert subprocess.run(["ip", "netns", "exec", lab.netns, "true"], check=False).returncode == 0
    assert not schedule.errors


def _link_is_down(host: NetnsHost) -> bool:
    state = host.exec("ip", "-o", "link", "show", "eth0").stdout
    return "state DOWN" in state or ",UP" not in state.split(">")[0]


def test_the_invariant_check_catches_each_broken_promise(lab: NetnsHost, tmp_path: Path) -> None:
    """The checker itself: every kind of loss it is meant to find, it finds."""
    ws = Workspace(lab, tmp_path)
    seed_tree(ws.project, 20)
    (ws.project / "job.py").write_text("print('hello')\n")
    counters = Counters()
    invariants = Invariants(ws, counters)
    assert ws.gpubox("sync").returncode == 0
    output = ws.remote / "outputs" / "model.bin"
    output.parent.mkdir()
    output.write_bytes(b"weights")
    invariants.remember_outputs()
    run_id = ws.start_run("python3", "job.py")
    invariants.expect_run(run_id)
    assert invariants.check(converge_seconds=5) == []

    (ws.remote / "src" / "pkg0" / "m0.py").write_text("edited on the host\n")
    output.unlink()
    (ws.remote.parent / "stray.txt").write_text("outside the project folder\n")
    (ws.remote / ".gpubox-staging").mkdir()
    (ws.remote / ".gpubox-staging" / "1-0").write_text("half a file")
    found = invariants.check(converge_seconds=0.5)
    assert [problem.split(":")[0] for problem in found] == [
        "trees differ in 1 paths",
        "host output outputs/model.bin was deleted",
        "staged files left on the host",
        "written beside the host project folder",
    ], found
    assert invariants.check_log(run_id, shown=b"hello\n") == []
    assert invariants.check_log(run_id, shown=b"hel") != []
    assert counters.lost == found
