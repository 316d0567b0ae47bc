"""The host's guardian through the real CLI: `gpubox up` starts it on the host, and it keeps autostop and
max_hours with the laptop's gpubox SIGKILLed (the local host's sshd stopped, an ssh host's stop_command run on
the host), a busy run holds it off, a laptop coming back mid-countdown adopts it without a second stop, and the
ledger records the guardian's stop time when gpubox next connects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpubox.remote.providers.local import LocalSshd
from gpubox.state import BillingInterval, open_state, pid_alive
from tests.support.cli import host_entry, run_gpubox
from tests.support.hosthome import host_home
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "myproject"
    folder.mkdir()
    return folder


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _holder(host: str) -> int | None:
    with open_state() as state:
        found = state.supervisor(host)
    return found.pid if found else None


def _ledger(host: str) -> list[BillingInterval]:
    with open_state() as state:
        return state.billing(host)


def _status(project: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    return document["hosts"][0]


def _guardian(project: Path) -> dict[str, Any]:
    found: dict[str, Any] = _wait(
        lambda: (g := _status(project).get("guardian")) and g.get("running") and g, what="the guardian"
    )
    return found


def _folder() -> Path:
    """This test's guardian folder on the (session's) test host: its config names this gpubox's machine id."""
    machine = (Path(os.environ["GPUBOX_HOME"]) / "state" / "machine-id").read_text().strip()
    for config in (host_home() / ".gpubox" / "guardian").glob("*/config.json"):
        if json.loads(config.read_text()).get("laptop") == machine:
            return config.parent
    raise AssertionError("no guardian folder of this test on the host")


def _stop_record() -> dict[str, Any]:
    """The guardian's stop record: written once the stop is done (the sshd may be gone a moment before)."""
    record = _folder() / "stopped.json"
    _wait(record.exists, what="the stop record")
    found: dict[str, Any] = json.loads(record.read_text())
    return found


def _decisions(folder: Path) -> list[dict[str, Any]]:
    """The guardian's decisions so far: none before its first line (`status` says it runs once its pid is
    recorded, a moment before the new process writes anything)."""
    path = folder / "decisions.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _up_detached(project: Path, *args: str) -> int:
    done = run_gpubox("up", "--detach", "--no-sync", "--no-services", *args, cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    pid: int = _wait(lambda: _holder(args[0] if args else "local"), what="a gpubox holding the host")
    return pid


def _kill_laptop(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), what="the supervisor to die")
    return time.time()


def _local_hosts(project: Path, tmp_path: Path, extra: str) -> None:
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n{extra}')


def _end_run(run_id: str) -> None:
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        pgid = int((host_home() / ".gpubox" / "runs" / run_id / "pid").read_text())
        os.killpg(pgid, signal.SIGKILL)


def _start_run(project: Path, seconds: float) -> str:
    started = run_gpubox("run", "--no-sync", "--", "sleep", str(seconds), cwd=project)
    assert started.returncode == 0, started.stderr
    found = re.search(r"\br-\d+\b", started.stdout + started.stderr)
    assert found, started.stdout
    return found.group(0)


def test_the_guardian_stops_the_local_host_with_the_laptop_killed_once_a_busy_run_ends(
    project: Path, tmp_path: Path
) -> None:
    # $3600/h is $1 a second: the ledger's dollars are the seconds billed.
    # A 6 s window, so that the run starts inside it on a loaded machine.
    _local_hosts(project, tmp_path, "autostop_minutes = 0.1\nprice_per_hour = 3600\n")
    pid = _up_detached(project)
    run_id = _start_run(project, 16)  # long enough for a loaded machine's `gpubox status` calls below
    guardian = _guardian(project)
    assert guardian["acts"] and guardian["action"] == "stop the local sshd", guardian
    assert "guardian  pid" in run_gpubox("status", cwd=project).stdout
    killed_at = _kill_laptop(pid)

    time.sleep(7)  # longer than the window: the run keeps the host busy, laptop or not
    assert LocalSshd().running() is not None
    _wait(lambda: LocalSshd().running() is None, timeout=40, what="the guardian to stop the local sshd")
    folder = _folder()
    stopped = _stop_record()
    assert (stopped["reason"], stopped["by"], stopped["done"]) == (
        "autostop",
        "guardian",
        "stopped the local sshd",
    )
    ended = float((host_home() / ".gpubox" / "runs" / run_id / "ended_at").read_text())
    assert ended + 6 <= stopped["at"] < ended + 6 + 10  # the window after the run, then one look
    events = [d["event"] for d in _decisions(folder)]
    last_idle = len(events) - 1 - events[::-1].index("idle")
    assert "busy" in events and events.index("laptop-gone") < last_idle < events.index("stopped"), events
    assert events[-1] == "stopped"

    # The laptop comes back: the ledger bills the dead holder's interval until the guardian's stop.
    (died,) = _ledger("local")
    assert died.ended_at is not None and died.ended_at <= killed_at + 1
    _local_hosts(project, tmp_path, "autostop_minutes = 10\nprice_per_hour = 3600\n")
    pid = _up_detached(project)
    first = _wait(lambda: (row := _ledger("local")[0]).end_reason != died.end_reason and row, what="the fix")
    assert first.end_reason == "autostop (by the guardian)"
    # The host's clock read through the offset measured at each answer: within a few hundredths of a second.
    assert first.ended_at == pytest.approx(stopped["at"], abs=0.05)
    assert first.held_seconds == pytest.approx(died.held_seconds + stopped["at"] - died.ended_at, abs=0.01)
    new_guardian = _guardian(project)
    assert new_guardian["pid"] != guardian["pid"]
    assert run_gpubox("down", cwd=project).returncode == 0
    _wait(lambda: not pid_alive(new_guardian["pid"]), what="`down` to end the guardian")
    assert _decisions(folder)[-1]["event"] == "released"


def test_an_ssh_hosts_guardian_runs_stop_command_on_the_host_with_the_laptop_killed(
    project: Path, tmp_path: Path, sshd: SshServer
) -> None:
    marker = tmp_path / "stopped"
    entry = host_entry("box", sshd, accept_new=True, autostop_minutes=0.05, price_per_hour=2)
    (project / "hosts.toml").write_text(
        entry + f'remote_dir = "{tmp_path / "remote"}"\nstop_command = "echo stop >> {marker}"\n'
    )
    pid = _up_detached(project, "box")
    _guardian(project)
    _kill_laptop(pid)
    _wait(marker.exists, timeout=30, what="stop_command's marker")
    time.sleep(1)
    assert marker.read_text() == "stop\n"
    assert _decisions(_folder())[-1]["text"] == f"idle for 0:00:03: ran `echo stop >> {marker}` on the host"


def test_a_laptop_back_mid_countdown_adopts_the_guardian_and_the_host_stops_once(
    project: Path, tmp_path: Path, sshd: SshServer, processes: list[subprocess.Popen[str]]
) -> None:
    marker = tmp_path / "stopped"
    entry = host_entry("box", sshd, accept_new=True, autostop_minutes=0.1, price_per_hour=2)  # 6 s
    (project / "hosts.toml").write_text(
        entry + f'remote_dir = "{tmp_path / "remote"}"\nstop_command = "echo stop >> {marker}"\n'
    )
    pid = _up_detached(project, "box")
    first = _guardian(project)
    _kill_laptop(pid)
    # Back at once, mid countdown, in the foreground this time.
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "box", "--no-tui", "--no-services", "--no-sync"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    processes.append(process)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    assert f"  · guardian pid {first['pid']} adopted on box: keeps autostop after 0.1 min idle" in out, out
    assert out.splitlines()[-1].endswith(f": ran `echo stop >> {marker}` on the host"), out
    time.sleep(1)
    assert marker.read_text() == "stop\n"  # one stop: the guardian's, which the laptop saw
    assert _ledger("box")[-1].end_reason == "autostop"
    events = [d["event"] for d in _decisions(_folder())]
    assert events.count("stopped") == 1 and "adopted" in events


def test_max_hours_stops_a_busy_host_and_warns_before(
    project: Path, tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    # 0.0845 h is 304 s: the 5-minute warning comes 4 s after `up`.
    _local_hosts(project, tmp_path, "max_hours = 0.0845\n")
    pid = _up_detached(project)
    _guardian(project)
    warning = _wait(
        lambda: [d for d in _decisions(_folder()) if d["event"] == "warning"], what="the 5-minute warning"
    )
    assert len(warning) == 1 and warning[0]["minutes"] == 5, warning
    assert any(line.startswith("    ! deadline  stops in 0:0") for line in _lines(project))
    assert re.fullmatch(
        r"local stops in 0:0[45]:\d\d: max_hours = 0.0845, whatever it is doing", warning[0]["text"]
    )

    # A deadline a few seconds away instead: the busy host is stopped, the laptop there or not.
    assert run_gpubox("down", cwd=project).returncode == 0
    _wait(lambda: not pid_alive(pid), what="the supervisor to let go")
    _local_hosts(project, tmp_path, "max_hours = 0.0015\n")  # 5.4 s
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "--no-tui", "--no-services", "--no-sync"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    processes.append(process)
    _wait(lambda: _holder("local"), what="a gpubox holding the host")
    run_id = _start_run(project, 30)
    out, _ = process.communicate(timeout=60)
    _end_run(run_id)  # the session's test host is shared: a run left going keeps other tests' hosts busy
    assert process.returncode == 0, out
    assert re.search(r": max_hours: local is 0:00:0\d old: stopped the local sshd$", out.splitlines()[-1]), (
        out
    )
    assert LocalSshd().running() is None
    assert _status(project)["up"] is False


def _lines(project: Path) -> list[str]:
    return run_gpubox("status", cwd=project).stdout.splitlines()


def test_a_stalled_run_is_not_activity_and_the_stop_says_so(project: Path, tmp_path: Path) -> None:
    # A 3 s stall (a run that prints once and then hangs: a stuck data loader) and a 9 s window, so that a loaded
    # machine's `gpubox status` still sees the stalled run counting down.
    _local_hosts(project, tmp_path, "autostop_minutes = 0.15\nstall_minutes = 0.05\n")
    pid = _up_detached(project)
    started = run_gpubox("run", "--no-sync", "--", "sh", "-c", "echo loading; sleep 60", cwd=project)
    assert started.returncode == 0, started.stderr
    run_id = re.search(r"\br-\d+\b", started.stdout + started.stderr).group(0)  # type: ignore[union-attr]
    try:
        stalled = _wait(
            lambda: (a := _status(project)["autostop"]) and a.get("stalled") and a, what="the run to stall"
        )
        assert stalled["state"] == "counting" and stalled["busy"] == [], stalled
        assert re.fullmatch(rf"run {run_id} stalled since \d\d:\d\d:\d\d", stalled["stalled"][0]), stalled
        _kill_laptop(pid)
        _wait(lambda: LocalSshd().running() is None, timeout=30, what="the guardian to stop the local sshd")
        stopped = _stop_record()
        assert re.fullmatch(
            rf"idle for 0:00:\d\d \(run {run_id} stalled since \d\d:\d\d:\d\d\)", stopped["why"]
        ), stopped
        assert json.loads(
            (host_home() / ".gpubox" / "runs" / run_id / "spec.json").read_text()
        )  # still there
    finally:
        _end_run(run_id)


def test_down_ends_the_guardian_of_a_local_host_whose_sshd_is_already_stopped(
    project: Path, tmp_path: Path
) -> None:
    # The sshd gone (stopped by hand, or the machine's own doing) leaves the guardian watching on this machine:
    # `down` must still end it, without the sshd it would have reached it through.
    _local_hosts(project, tmp_path, "autostop_minutes = 10\n")
    pid = _up_detached(project)
    guardian = _guardian(project)
    folder = _folder()
    _kill_laptop(pid)
    assert LocalSshd().stop()
    assert pid_alive(guardian["pid"])
    done = run_gpubox("down", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    _wait(lambda: not pid_alive(guardian["pid"]), what="`down` to end the guardian")
    assert _decisions(folder)[-1]["event"] == "released"
    assert not (folder / "config.json").exists()


def test_cost_and_status_bill_a_local_host_until_its_guardians_stop_once(
    project: Path, tmp_path: Path
) -> None:
    # $3600/h is $1 a second: the ledger's dollars are the seconds billed.
    # A 6 s window, so that the run starts inside it on a loaded machine.
    _local_hosts(project, tmp_path, "autostop_minutes = 0.1\nprice_per_hour = 3600\n")
    pid = _up_detached(project)
    _start_run(project, 12)  # busy while the laptop is still there
    _guardian(project)
    _kill_laptop(pid)
    _wait(lambda: LocalSshd().running() is None, timeout=60, what="the guardian to stop the local sshd")
    stopped = _stop_record()
    (died,) = _ledger("local")
    assert died.ended_at is not None and died.ended_at < stopped["at"]

    # `gpubox cost`, with no gpubox holding the host and without reaching it: billed until the guardian's stop.
    report = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    spent = next(h for h in report["hosts"] if h["name"] == "local")["spent_usd"]
    (row,) = _ledger("local")
    assert row.end_reason == "autostop (by the guardian)" and row.ended_at == pytest.approx(
        stopped["at"], abs=0.01
    )
    assert spent == pytest.approx(died.held_seconds + stopped["at"] - died.ended_at, abs=0.01)
    # Every later look agrees: no second extension, whoever looks.
    run_gpubox("status", "--json", cwd=project)
    again = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    assert next(h for h in again["hosts"] if h["name"] == "local")["spent_usd"] == spent
    up = run_gpubox("up", "--detach", "--no-sync", "--no-services", cwd=project)
    assert up.returncode == 0 and "its guardian stopped it" not in up.stdout + up.stderr
    assert _ledger("local")[0] == row
    assert run_gpubox("down", cwd=project).returncode == 0
