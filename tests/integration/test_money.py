"""Money end to end on real supervisors: the ledger across kill -9 and restarts, `gpubox cost`, budgets, idle
autostop on the local host (a test nvidia-smi on the host python's PATH replays real output shapes), sync and
`gpubox ssh` activity, and stop_command on an ssh host."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpubox.remote.agent.client import AgentSession
from gpubox.remote.connection import Connection, Endpoint
from gpubox.remote.gpu.readings import gpu_readings
from gpubox.remote.providers.local import LocalSshd
from gpubox.state import DIED_REASON, BillingInterval, open_state, pid_alive
from gpubox.train.runs import RunInfo
from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
# The --query-gpu CSV in the shape of the real capture 30_h200_590_query-gpu-full.csv.txt (same column names
# and units), cut to the three columns gpubox's idle sample asks for.
QUERY_HEADER = "index, name, utilization.gpu [%]"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "myproject"
    folder.mkdir()
    return folder


@pytest.fixture
def fake_gpu(tmp_path: Path) -> tuple[str, Path]:
    """(a host 'python3' whose PATH has a test nvidia-smi, the file holding the utilisation it reports)."""
    folder = tmp_path / "fake-gpu"
    folder.mkdir()
    utilization = folder / "utilization"
    utilization.write_text("90")
    smi = folder / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        f"  *--query-gpu=*) printf '%s\\n0, NVIDIA H200, %s %%\\n' '{QUERY_HEADER}' \"$(cat {utilization})\" ;;\n"
        f"  *) cat {CAPTURES / '11_h200_550.txt'} ;;\n"
        "esac\n"
    )
    smi.chmod(0o755)
    python = folder / "python3"
    python.write_text(f'#!/bin/sh\nPATH="{folder}:$PATH" exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return str(python), utilization


def _local_hosts(project: Path, tmp_path: Path, extra: str = "", defaults: str = "") -> None:
    text = f"[defaults]\n{defaults}\n" if defaults else ""
    text += f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n{extra}'
    (project / "hosts.toml").write_text(text)


def _up(project: Path, *args: str) -> subprocess.Popen[str]:
    """`gpubox up --no-tui` in the foreground, as a user runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "--no-tui", "--no-services", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _held(host: str = "local") -> int:
    def holder() -> int | None:
        with open_state() as state:
            found = state.supervisor(host)
        return found.pid if found else None

    pid: int = _wait(holder, what=f"a gpubox holding {host}")
    return pid


def _ledger(host: str | None = None, *, repair: bool = True) -> list[BillingInterval]:
    with open_state() as state:
        return state.billing(host, repair=repair)


def _status(project: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    return document["hosts"][0]


def _drain(fd: int) -> None:
    """Read a terminal's screen until it closes, so the program writing to it never blocks."""
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass


def _spent(line: str) -> float:
    found = re.search(r"\(\$([0-9.]+) spent\)", line)
    assert found, line
    return float(found.group(1))


@pytest.fixture
def stop_processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------------ ledger


def test_kill_9_closes_the_interval_at_its_last_heartbeat_and_restarts_add_up(
    project: Path, tmp_path: Path
) -> None:
    # $3600/h is $1 a second: the cents are the seconds.
    _local_hosts(project, tmp_path, "price_per_hour = 3600\n")
    assert run_gpubox("up", "--detach", "--no-sync", "--no-services", cwd=project).returncode == 0
    pid = _held()
    _wait(lambda: _ledger(repair=False)[0].held_seconds >= 2, what="a billing heartbeat")
    os.kill(pid, signal.SIGKILL)
    _wait(lambda: not pid_alive(pid), what="the supervisor to die")
    (left_open,) = _ledger(repair=False)
    assert left_open.open and left_open.holder_pid == pid

    # The next command sees the dead holder and closes its interval at the last heartbeat.
    cost = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    (killed,) = _ledger()
    assert not killed.open and killed.end_reason == DIED_REASON
    assert killed.held_seconds == left_open.held_seconds and killed.ended_at == left_open.heartbeat_at
    (row,) = cost["hosts"]
    assert row["billing_now"] is False
    assert row["spent_usd"] == round(killed.held_seconds, 4)
    assert run_gpubox("status", cwd=project).stdout.startswith("  ") is False  # not held any more

    # Restart: a new interval, after the first one, closed exactly on `up --stop`.
    assert run_gpubox("up", "--detach", "--no-sync", "--no-services", cwd=project).returncode == 0
    _held()
    _wait(lambda: _ledger()[-1].held_seconds >= 1, what="a billing heartbeat")
    assert run_gpubox("up", "--stop", cwd=project).returncode == 0
    first, second = _ledger()
    assert not second.open and second.end_reason == "released"
    assert second.started_at >= first.ended_at  # type: ignore[operator]
    total = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)["totals"]
    held = first.held_seconds + second.held_seconds
    assert total["spent_usd"] == pytest.approx(held, abs=0.005)  # to the cent (the JSON rounds to 4 places)
    assert total["hours"] == round(held / 3600, 6)
    assert run_gpubox("down", cwd=project).returncode == 0


# ------------------------------------------------------------------------------------------- gpubox cost


def test_cost_json_text_and_since(project: Path) -> None:
    (project / "hosts.toml").write_text(
        "[defaults]\ntotal_budget_usd = 20\n\n"
        '[hosts.box]\nhostname = "box.example.org"\nprice_per_hour = 1.29\nbudget_usd = 10\n\n'
        '[hosts.h200]\nhostname = "h200.example.org"\n'
    )
    day = 86400.0
    now = time.time()
    with open_state() as state:
        state.record_host("h200", "ssh")
        state.record_probe(
            "h200", {"nvidia_smi": {"available": True, "output": (CAPTURES / "11_h200_550.txt").read_text()}}
        )
        state.open_billing("box", 1.29, at=now - 3 * day)
        state.close_billing("box", at=now - 3 * day + 7200)  # 2 h
        state.open_billing("box", 1.29, at=now - 3600)
        state.close_billing("box", at=now - 1800)  # 30 min
        state.open_billing("h200", 3.59, at=now - 2 * 3600, price_source="estimate", estimate=True)
        state.close_billing("h200", at=now - 3600)  # 1 h at an estimate
        state.open_billing("retired", 0.5, at=now - 10 * day)
        state.close_billing("retired", at=now - 10 * day + 3600)  # a host since removed from hosts.toml
        state.record_budget_alert("box", 50, 10.0, 5.0)

    document = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    assert document["currency"] == "USD" and document["since"] is None and document["runs"] == []
    rows = {row["name"]: row for row in document["hosts"]}
    assert list(rows) == ["box", "h200", "local", "retired"]
    assert rows["box"] == {
        "name": "box",
        "provider": "ssh",
        "configured": True,
        "price_per_hour": 1.29,
        "price_source": "price_per_hour in hosts.toml",
        "price_estimate": False,
        "hours": 2.5,
        "spent_usd": 3.225,
        "unpriced_hours": 0.0,
        "spent_includes_estimate": False,
        "billing_now": False,
        "budget": {
            "budget_usd": 10.0,
            "spent_usd": 3.225,
            "percent": 32.2,
            "warned": [50],
            "on_budget": "stop",
        },
    }
    assert rows["h200"]["price_source"] == "estimate: H200 at RunPod's $3.59/h, catalog 2026-11"
    assert (rows["h200"]["price_per_hour"], rows["h200"]["price_estimate"]) == (3.59, True)
    assert (rows["h200"]["spent_usd"], rows["h200"]["spent_includes_estimate"]) == (3.59, True)
    assert (rows["local"]["price_per_hour"], rows["local"]["hours"]) == (0.0, 0.0)
    assert (rows["retired"]["configured"], rows["retired"]["spent_usd"]) == (False, 0.5)
    assert document["totals"] == {
        "hours": 4.5,
        "spent_usd": 7.315,
        "unpriced_hours": 0.0,
        "spent_includes_estimate": True,
    }
    assert document["total_budget"] == {"budget_usd": 20.0, "spent_usd": 7.315, "percent": 36.6, "warned": []}
    assert document["catalog"] == {"as_of": "2026-11"}

    text = run_gpubox("cost", cwd=project)
    assert text.returncode == 0 and text.stderr == ""
    assert text.stdout.splitlines() == [
        "cost over all the time gpubox recorded",
        "HOST            PROVIDER  $/H     HOURS  SPENT   BUDGET",
        "box             ssh       $1.29   2.50   $3.23   32 % of $10.00",
        "h200            ssh       ~$3.59  1.00   ~$3.59",
        "local           local     $0.00   0.00   $0.00",
        "retired (gone)  -         ?       1.00   $0.50",
        "total                             4.50   ~$7.32  37 % of $20.00 (all hosts)",
        "~ estimated from gpubox's price catalog (2026-11); set price_per_hour in hosts.toml for exact figures",
    ]

    # Only the last day: box's recent 30 min and h200's hour.
    recent = json.loads(run_gpubox("cost", "--since", "1d", "--json", cwd=project).stdout)
    assert {row["name"]: row["hours"] for row in recent["hosts"]} == {
        "box": 0.5,
        "h200": 1.0,
        "local": 0.0,
        "retired": 0.0,
    }
    assert recent["totals"]["spent_usd"] == round(0.645 + 3.59, 4)
    assert recent["hosts"][0]["budget"]["spent_usd"] == 3.225  # budgets always count all recorded time
    # From a moment inside box's last interval (a date, in local time): only the part after it.
    inside = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 2700))
    partial = json.loads(run_gpubox("cost", "--since", inside, "--json", cwd=project).stdout)
    assert partial["hosts"][0]["hours"] == pytest.approx(0.25, abs=0.0003)
    assert partial["since"].startswith(inside)
    bad = run_gpubox("cost", "--since", "yesterday", cwd=project)
    assert assert_one_line_error(bad, 2) == (
        "gpubox: --since: expected a date like 2026-11-01, a time like 2026-11-01T09:30, or 7d / 12h / 30m, "
        'got "yesterday"'
    )


# ----------------------------------------------------------------------------------------------- budgets


def test_budget_warns_once_per_threshold_and_stops_the_local_host(
    project: Path, tmp_path: Path, stop_processes: list[subprocess.Popen[str]]
) -> None:
    _local_hosts(project, tmp_path, "price_per_hour = 3600\nbudget_usd = 3\n")  # $1/s: used up in 3 s
    process = _up(project, "--no-sync")
    stop_processes.append(process)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, out
    warnings = [line for line in out.splitlines() if line.startswith("  ! ")]
    assert len(warnings) == 4, out
    assert warnings[0].startswith("  ! budget: local reached 50 % of its $3.00 budget ($")
    assert warnings[1].startswith("  ! budget: local reached 80 % of its $3.00 budget ($")
    assert warnings[2].startswith("  ! budget: local used up its $3.00 budget ($")
    assert warnings[2].endswith(" spent): stopping local")
    assert warnings[3].startswith("  ! budget: local used up its $3.00 budget ($")
    assert warnings[3].endswith(" spent): stopped the local sshd")
    # Each warning when its threshold is due (a tick is scheduled for it), not at the next heartbeat.
    assert [_spent(w) >= due for w, due in zip(warnings, (1.5, 2.4, 3.0), strict=False)] == [True] * 3
    assert _spent(warnings[0]) < 2.4 and _spent(warnings[1]) < 3.0
    assert out.splitlines()[-1].startswith("  left local after 0:00:0")
    assert LocalSshd().running() is None
    (interval,) = _ledger()
    assert interval.end_reason == "budget" and 3.0 <= interval.held_seconds < 5
    with open_state() as state:
        assert [(s, t) for s, t, *_ in state.budget_alerts()] == [
            ("local", 50),
            ("local", 80),
            ("local", 100),
        ]
    # Used up: `gpubox up` refuses until the budget is raised (or on_budget = "warn").
    again = run_gpubox("up", "--no-tui", "--no-services", cwd=project)
    message = assert_one_line_error(again, 1)
    assert message.startswith("gpubox: local used up its $3.00 budget ($3.") and message.endswith(
        ' spent): raise budget_usd in hosts.toml, or set on_budget = "warn" for local'
    )
    document = json.loads(run_gpubox("cost", "--json", cwd=project).stdout)
    assert document["hosts"][0]["budget"]["warned"] == [50, 80, 100]


def test_on_budget_warn_keeps_the_host_running_and_counts_the_total_budget(
    project: Path, tmp_path: Path, stop_processes: list[subprocess.Popen[str]]
) -> None:
    _local_hosts(
        project,
        tmp_path,
        'price_per_hour = 3600\nbudget_usd = 1.5\non_budget = "warn"\n',
        "total_budget_usd = 2",
    )
    process = _up(project, "--no-sync")
    stop_processes.append(process)
    _held()
    # The supervisor is recorded a moment before its billing interval opens.
    _wait(lambda: (rows := _ledger()) and rows[0].held_seconds >= 3, what="3 s of billing")
    assert process.poll() is None and LocalSshd().running() is not None
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    warnings = [line[len("  ! budget: ") :] for line in out.splitlines() if line.startswith("  ! ")]
    expected = [
        "local reached 50 % of its $1.50 budget ($",
        "all hosts together reached 50 % of the $2.00 total_budget_usd ($",
        "local reached 80 % of its $1.50 budget ($",
        "local used up its $1.50 budget ($",
        "all hosts together reached 80 % of the $2.00 total_budget_usd ($",
        "all hosts together used up the $2.00 total_budget_usd ($",
    ]
    assert len(warnings) == len(expected), out
    assert all(w.startswith(e) for w, e in zip(warnings, expected, strict=True)), warnings
    assert warnings[-1].endswith(' spent): local keeps running (on_budget = "warn")')
    assert out.splitlines()[-1].endswith("; the host keeps running")
    assert LocalSshd().running() is not None
    assert run_gpubox("down", cwd=project).returncode == 0


# ---------------------------------------------------------------------------------------------- autostop


def test_autostop_waits_while_the_gpu_is_busy_then_stops_the_idle_local_host(
    project: Path, tmp_path: Path, fake_gpu: tuple[str, Path], stop_processes: list[subprocess.Popen[str]]
) -> None:
    python, utilization = fake_gpu
    # A 6 s window: wide enough that a loaded machine's `gpubox status` calls still see the countdown.
    _local_hosts(project, tmp_path, f'python = "{python}"\nautostop_minutes = 0.1\n')
    process = _up(project, "--no-sync")
    stop_processes.append(process)
    _held()
    time.sleep(7)  # longer than the window: the GPU at 90 % keeps the host up
    assert process.poll() is None
    busy = _status(project)["autostop"]
    assert (busy["state"], busy["busy"], busy["gpu"]) == ("busy", ["GPU busy (90 % ≥ 5 %)"], "GPU 90 %")
    assert (
        "    autostop  waiting: GPU busy (90 % ≥ 5 %) (after 0.1 min idle)"
        in run_gpubox("status", cwd=project).stdout.splitlines()
    )

    utilization.write_text("0")
    counting = _wait(
        lambda: (a := _status(project)["autostop"]) and a["state"] == "counting" and a, what="the countdown"
    )
    assert 0 < counting["remaining_seconds"] <= 6 and counting["action"] == "stop the local sshd"
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    assert out.splitlines()[-1].startswith("  left local after ")
    assert out.splitlines()[-1].endswith(": stopped the local sshd")
    assert "  ! idle for 0:00:06: stopped the local sshd" in out.splitlines()
    assert LocalSshd().running() is None
    assert _ledger()[0].end_reason == "autostop"


def test_autostop_waits_while_a_run_is_active(
    project: Path, tmp_path: Path, stop_processes: list[subprocess.Popen[str]]
) -> None:
    _local_hosts(project, tmp_path, "autostop_minutes = 0.1\n")  # a 6 s window: `gpubox run` starts within it
    process = _up(project)
    stop_processes.append(process)
    _held()
    # 14 s: on a loaded machine `gpubox status` itself can take seconds, and must still find the run going.
    started = run_gpubox("run", "--no-sync", "--", "sleep", "14", cwd=project)
    assert started.returncode == 0, started.stderr
    time.sleep(7)  # longer than the window: the run keeps the host up
    assert process.poll() is None
    autostop = _status(project)["autostop"]
    assert autostop["state"] == "busy" and any("run" in reason for reason in autostop["busy"]), autostop
    out, _ = process.communicate(timeout=40)  # the run ends after 14 s, then the idle window runs out
    assert process.returncode == 0 and out.splitlines()[-1].endswith(": stopped the local sshd"), out


def test_autostop_waits_while_sync_batches_happen(
    project: Path, tmp_path: Path, stop_processes: list[subprocess.Popen[str]]
) -> None:
    _local_hosts(project, tmp_path, "autostop_minutes = 0.1\n")
    process = _up(project)
    stop_processes.append(process)
    _held()
    edited = project / "train.py"
    deadline = time.monotonic() + 8  # longer than the 6 s window, with a batch every 0.3 s
    n = 0
    while time.monotonic() < deadline:
        n += 1
        edited.write_text(f"epochs = {n}\n")
        time.sleep(0.3)
    assert process.poll() is None
    autostop = _status(project)["autostop"]
    assert autostop["state"] == "counting" and autostop["last_activity"].startswith("sync ")
    assert autostop["idle_seconds"] < 1.5
    out, _ = process.communicate(timeout=20)  # quiet now: it stops after the window
    assert process.returncode == 0 and out.splitlines()[-1].endswith(": stopped the local sshd"), out
    assert (tmp_path / "remote" / "train.py").read_text() == f"epochs = {n}\n"


def test_an_interactive_gpubox_ssh_shell_keeps_the_host_up(
    project: Path, tmp_path: Path, stop_processes: list[subprocess.Popen[str]]
) -> None:
    _local_hosts(project, tmp_path, "autostop_minutes = 0.05\n")
    process = _up(project, "--no-sync")
    stop_processes.append(process)
    _held()
    controller, terminal = pty.openpty()
    # A user's terminal: the pty is the controlling terminal of the shell's own session.
    shell = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "ssh", "local"],
        cwd=project,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    screen = threading.Thread(target=_drain, args=(controller,), daemon=True)
    screen.start()
    try:
        with open_state() as state:
            _wait(lambda: state.shells("local") == [shell.pid], what="the shell's record")
        time.sleep(4)  # longer than the window
        assert process.poll() is None
        assert _status(project)["autostop"]["busy"] == ["1 interactive `gpubox ssh` shell open"]
        os.write(controller, b"exit\n")
        shell.wait(timeout=20)
    finally:
        if shell.poll() is None:
            shell.kill()
        os.close(controller)
    with open_state() as state:
        assert state.shells("local") == []
    out, _ = process.communicate(timeout=20)
    assert out.splitlines()[-1].endswith(": stopped the local sshd"), out


# --------------------------------------------------------------------------------------------- ssh hosts


def test_an_idle_ssh_host_runs_its_stop_command_or_warns_once(
    project: Path, tmp_path: Path, sshd: SshServer, stop_processes: list[subprocess.Popen[str]]
) -> None:
    entry = host_entry("box", sshd, accept_new=True, autostop_minutes=0.05, price_per_hour=2)
    (project / "hosts.toml").write_text(entry + f'remote_dir = "{tmp_path / "remote"}"\n')
    process = _up(project, "box", "--no-sync")
    stop_processes.append(process)
    _held("box")
    time.sleep(5)
    assert process.poll() is None  # no stop_command: it cannot stop the machine, and says so once
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=20)
    warned = [line for line in out.splitlines() if "without stop_command" in line]
    assert warned == [
        "  ! idle for 0:00:03: box is an ssh host without stop_command, so it keeps running (and billing); "
        "set stop_command in hosts.toml, or `gpubox down box`"
    ], out
    # Said at `up`: the host's guardian cannot stop it alone.
    assert (
        "  ! if this laptop goes away, box keeps running: no stop_command for this ssh host: it keeps running "
        "(and billing)" in out.splitlines()
    ), out

    marker = tmp_path / "stopped"
    (project / "hosts.toml").write_text(
        entry + f'remote_dir = "{tmp_path / "remote"}"\nstop_command = "touch {marker}"\n'
    )
    process = _up(project, "box", "--no-sync")
    stop_processes.append(process)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    assert marker.exists()
    assert out.splitlines()[-1].endswith(f": ran `touch {marker}` on the host"), out
    assert _ledger("box")[-1].end_reason == "autostop"


def test_agent_idle_op_reads_the_gpu_and_terminals(
    sshd: SshServer, tmp_path: Path, fake_gpu: tuple[str, Path]
) -> None:
    python, utilization = fake_gpu
    endpoint = Endpoint(
        alias="box",
        hostname=sshd.host,
        port=sshd.port,
        user=sshd.user,
        identity_files=(str(sshd.client_key),),
        use_default_keys=False,
    )
    with Connection(endpoint, accept_new=True, pin_file=tmp_path / "pins") as connection:
        agent = AgentSession(connection, python=python).start()
        answer = agent.request("idle", {"gpu": True, "ttys": True})
        assert gpu_readings(answer["nvidia_smi"]).busiest() == (90.0, "GPU 90 %")
        assert answer["nvidia_smi"]["output"] == f"{QUERY_HEADER}\n0, NVIDIA H200, 90 %\n"
        assert (
            isinstance(answer["ttys"], list)
            and isinstance(answer["runs"], int)
            and isinstance(answer["kernels"], int)
        )
        utilization.write_text("3")
        assert gpu_readings(agent.request("idle")["nvidia_smi"]).busiest() == (3.0, "GPU 3 %")
        agent.close()
        plain = AgentSession(connection, python=sys.executable).start()
        assert gpu_readings(plain.request("idle", {"ttys": False})["nvidia_smi"]).busiest() == (
            None,
            "no GPU",
        )
        plain.close()


def test_cost_groups_runs_by_host_and_lists_only_the_dearest_unless_all(
    project: Path, tmp_path: Path
) -> None:
    """Real runs on the free local host make one summary line; a paid host lists its dearest few."""
    (project / "hosts.toml").write_text(
        f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n\n'
        '[hosts.box]\nhostname = "box.example.org"\nprice_per_hour = 2.0\n'
    )
    (project / "job.sh").write_text("true\n")
    try:
        for _ in range(7):
            assert (
                run_gpubox("run", "--host", "local", "-f", "--", "sh", "job.sh", cwd=project).returncode == 0
            )
    finally:
        run_gpubox("down", "local", cwd=project)
    now = time.time()
    with open_state() as state:
        state.open_billing("box", 2.0, at=now - 10 * 3600)
        state.close_billing("box", at=now)
        state.cache_runs(
            "box",
            [
                RunInfo(f"r-{n}", "box", f"python train.py --size {n}", "succeeded", now - n * 600, now, 0)
                for n in range(1, 9)
            ],
        )
    text = run_gpubox("cost", cwd=project)
    assert text.returncode == 0, text.stderr
    runs = text.stdout.split("\nruns, by host")[1].splitlines()
    assert runs[0] == " (the 5 dearest of each):"
    # The dearest host first, and its dearest runs (the longest here) first.
    assert runs[1] == "  box: 8 runs, 6.00 h, $12.00"
    assert [line.split()[0] for line in runs[2:7]] == ["r-8", "r-7", "r-6", "r-5", "r-4"]
    assert runs[2].split()[1:5] == ["succeeded", "1.33", "h", "$2.67"]
    # The free host's runs: ours, and any other project's gpubox has heard of on the (shared) test host.
    local = re.fullmatch(r"  local: (\d+) runs, \d+\.\d\d h, \$0\.00", runs[7])  # their hours: theirs
    assert local is not None and int(local.group(1)) >= 7, runs[7]
    assert runs[8] == f"  ({3 + int(local.group(1))} more not listed; `gpubox cost --all` lists every run)"
    assert len(runs) == 9

    everything = run_gpubox("cost", "--all", cwd=project).stdout.split("\nruns, by host:")[1].splitlines()
    assert len([line for line in everything if line.startswith("    r-")]) == 8 + int(local.group(1))
