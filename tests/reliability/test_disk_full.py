"""The host's disk fills up during a sync: one clear error, no partial file on the host, local untouched, and the
sync goes on by itself once space returns. The host project folder lives on a small tmpfs (root only)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gpubox.config import HostConfig, load_project
from gpubox.remote.session import connect_host
from gpubox.sync.engine import Syncer
from gpubox.sync.watch import LiveSync, WatchSettings
from tests.reliability.harness import Counters, Invariants, SmallDisk, Workspace, seed_tree, wait_until
from tests.support.netns import NetnsHost
from tests.support.trees import snapshot

pytestmark = [pytest.mark.integration, pytest.mark.netns]


def _problems(invariants: Invariants) -> None:
    found = invariants.check()
    assert not found, "\n".join(found)


def test_a_sync_onto_a_full_disk_is_one_clear_line_and_changes_nothing(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    with SmallDisk(tmp_path / "disk", size_mb=20) as disk:
        lab.server.restart()  # its sessions must see the new mount
        ws = Workspace(lab, tmp_path, remote_dir=disk.mount / "proj")
        seed_tree(ws.project, 50)
        assert ws.gpubox("sync").returncode == 0
        model = ws.remote / "outputs" / "model.bin"  # the host's own work
        model.parent.mkdir()
        model.write_bytes(b"weights" * 100_000)
        invariants = Invariants(ws, counters)
        invariants.remember_outputs()
        host_before = snapshot(ws.remote)

        disk.fill(leave=100_000)
        counters.faults["disk_fill"] += 1
        seed_tree(ws.project, 0, big=2, big_size=3_000_000)
        (ws.project / "src" / "pkg1" / "m1.py").write_text("changed while the host disk is full\n")
        local_before = snapshot(ws.project)
        failed = ws.gpubox("sync")
        assert failed.returncode == 1, failed.stdout + failed.stderr
        lines = failed.stderr.splitlines()
        assert len(lines) == 1, failed.stderr
        assert lines[0].startswith(
            f"gpubox: {lab.server.user}@{lab.ip}: host disk full: no space left in "
        ), lines
        assert "nothing was changed" in lines[0]
        assert snapshot(ws.project) == local_before  # local untouched
        assert snapshot(ws.remote) == host_before  # no partial file, no staged leftovers, nothing replaced
        assert not (ws.remote / ".gpubox-staging").exists()

        disk.free()
        again = ws.gpubox("sync")
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("sync lab: 4 sent"), again.stdout  # data/, its two files and m1.py
        _problems(invariants)


def test_live_sync_goes_on_by_itself_when_space_returns(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    """Regression: a batch the host refused (disk full) waited for the next local edit or the periodic rescan
    (60 s) before it went again; now it is retried with backoff, so it lands soon after space is freed even when
    nothing else changes. The rescan is pushed out of reach here to show the retry alone does it."""
    with SmallDisk(tmp_path / "disk", size_mb=20) as disk:
        lab.server.restart()
        ws = Workspace(lab, tmp_path, remote_dir=disk.mount / "proj")
        seed_tree(ws.project, 30)
        invariants = Invariants(ws, counters)
        host = HostConfig(
            name="lab",
            hostname=lab.ip,
            user=lab.server.user,
            identity_file=str(lab.server.client_key),
            accept_new=True,
            remote_dir=str(ws.remote),
        )
        session = connect_host(host, "proj", probe=False)
        problems: list[str] = []
        reports = threading.Event()
        try:
            syncer = Syncer(session, load_project(ws.project))
            syncer.full()
            live = LiveSync(
                syncer,
                settings=WatchSettings(rescan_seconds=3600.0),
                on_problem=problems.append,
                on_report=lambda report, why: reports.set(),
            ).start()
            try:
                disk.fill(leave=50_000)
                counters.faults["disk_fill"] += 1
                seed_tree(ws.project, 0, big=3, big_size=1_000_000)
                assert wait_until(lambda: any("host disk full" in p for p in problems), timeout=60), problems
                assert not (ws.remote / "data").exists()
                disk.free()
                assert wait_until(ws.synced, timeout=60, interval=0.1), problems
            finally:
                live.stop()
        finally:
            session.close()
        _problems(invariants)


def test_gpubox_up_reports_a_full_disk_and_catches_up(
    lab: NetnsHost, tmp_path: Path, counters: Counters
) -> None:
    with SmallDisk(tmp_path / "disk", size_mb=20) as disk:
        lab.server.restart()
        ws = Workspace(lab, tmp_path, remote_dir=disk.mount / "proj")
        seed_tree(ws.project, 30)
        invariants = Invariants(ws, counters)
        ws.up()
        disk.fill(leave=0)
        counters.faults["disk_fill"] += 1
        seed_tree(ws.project, 0, big=2, big_size=2_000_000)
        assert wait_until(lambda: "host disk full" in ws.up_log_text(), timeout=60), ws.up_log_text()
        disk.free()
        _problems(invariants)
        assert ws.up_alive()
        ws.stop_up()
