"""The dashboard's notifications from a real held host: a budget threshold, autostop about to fire, a sync
conflict (all three come from the monitor report the `up` process writes), and a run that fails."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gpubox.config import load_hosts, load_project
from tests.support.cli import run_gpubox
from tests.tui.conftest import RecordingApp, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
async def test_budget_autostop_conflict_and_failed_run_are_notified(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    remote = tmp_path / "remote"
    (project / "notes.txt").write_text("first\n")
    # $1 a second against a $40 budget: 50 % after 20 s; only a warning. Autostop after 30 s idle: its
    # countdown starts under a minute, which is when the dashboard warns.
    # The host's python runs with a HOME of its own: runs other tests leave going on this machine's shared
    # ~/.gpubox would keep the host busy (and autostop from counting down).
    host_home = tmp_path / "host-home"
    host_home.mkdir()
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nexport HOME="{host_home}"\nexec python3 "$@"\n')
    python.chmod(0o755)
    (project / "hosts.toml").write_text(
        f'[hosts.local]\nremote_dir = "{remote}"\npython = "{python}"\nprice_per_hour = 3600\n'
        'budget_usd = 40\non_budget = "warn"\nautostop_minutes = 0.5\n'
    )
    (project / ".gitignore").write_text("hosts.toml\n")
    try:
        up = run_gpubox("up", "--detach", "--no-services", cwd=project)
        assert up.returncode == 0, up.stdout + up.stderr
        app = RecordingApp(load_hosts(project), load_project(project), refresh_seconds=0.4, state_seconds=0.4)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(
                pilot, lambda: (h := app.snapshot.host("local")) is not None and h.state == "up", 30, "up"
            )
            # A conflict: the host's copy changed behind gpubox's back, then the local one changes too.
            synced = remote / "notes.txt"
            await wait_until(pilot, synced.exists, 30, "the first sync")
            synced.write_text("edited on the host\n")
            time.sleep(0.05)  # a different mtime on the host
            (project / "notes.txt").write_text("edited here\n")
            await wait_until(
                pilot,
                lambda: any(t == "sync conflict on local" for t, _m, _s in app.notified),
                30,
                "conflict",
            )
            await wait_until(
                pilot,
                lambda: any(t.startswith("local stops in ") for t, _m, _s in app.notified),
                60,
                "autostop",
            )
            await wait_until(
                pilot, lambda: any(t == "budget 50 %" for t, _m, _s in app.notified), 60, "budget"
            )
            # A run that fails is told as one (it also keeps the host from idling out).
            await pilot.press("n")
            await pilot.pause(0.3)
            await pilot.press(*"exit 3", "enter")
            await wait_until(pilot, lambda: any(s.action == "run" for s in app.said), 60, "the run")
            run_id = next(s for s in app.said if s.action == "run").run_id
            await wait_until(
                pilot,
                lambda: any(t == f"{run_id} failed with exit code 3" for t, _m, _s in app.notified),
                60,
                "the failure",
            )
            view = app.snapshot.host("local")
            assert view is not None and view.sync is not None and view.sync.conflicts >= 1
        conflict = next(m for t, m, _s in app.notified if t == "sync conflict on local")
        assert conflict.startswith(
            "notes.txt changed on the host and here: the host's copy was kept as notes.txt.gpubox-conflict-"
        ), conflict
        budget = next((t, m, s) for t, m, s in app.notified if t == "budget 50 %")
        assert budget[1].startswith("local reached 50 % of $40.00") and budget[2] == "warning", budget
        autostop = next((m, s) for t, m, s in app.notified if t.startswith("local stops in "))
        assert "stop the local sshd" in autostop[0] and autostop[1] == "warning", autostop
    finally:
        run_gpubox("down", "local", cwd=project)
