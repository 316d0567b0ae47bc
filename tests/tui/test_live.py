"""The dashboard driven with Pilot against the real built-in `local` host: a private OpenSSH sshd, the real
agent, the digits example training with TensorFlow (CPU build), real Jupyter and TensorBoard behind real tunnels.

The tests of this module share one home (SHARED_HOME): the first brings `local` up through the dashboard's own
`up` action (env with TensorFlow, services), the next ones use it, the last takes it down. Each opens its own
dashboard on whatever is up, as `gpubox dash` does.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette

from gpubox.config import HostsConfig, ProjectConfig, load_hosts, load_project
from gpubox.state import open_state
from gpubox.tui.components.hosts_table import HostsTable
from gpubox.tui.components.log_view import RunLog
from gpubox.tui.components.runs_table import RunsTable
from gpubox.tui.screens.details import CheckScreen, CostScreen, HelpScreen
from gpubox.tui.screens.logs import LogsScreen
from gpubox.tui.screens.modals import ConfirmScreen, ProgressScreen, RunCommandScreen
from tests.support.cli import host_entry, run_gpubox
from tests.support.sshd import SshServer
from tests.tui.conftest import RecordingApp, wait_until

pytestmark = pytest.mark.integration

SHARED_HOME = True
EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"
DIGITS: dict[str, str] = {}
"""The id of the digits run the run test started (the local host lists every project's runs)."""


@pytest.fixture(scope="module")
def project_root(module_home: Path) -> Path:
    folder = module_home / "digits"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("logs", "checkpoints", "__pycache__"))
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{module_home / "remote"}"\n')
    return folder


def _configs(root: Path) -> tuple[HostsConfig, ProjectConfig]:
    return load_hosts(root), load_project(root)


def _app(root: Path) -> RecordingApp:
    hosts, project = _configs(root)
    return RecordingApp(hosts, project, refresh_seconds=0.4, state_seconds=0.4)


def _state(app: RecordingApp, host: str = "local") -> str | None:
    view = app.snapshot.host(host)
    return None if view is None else view.state


def _cell(table: RunsTable | HostsTable, key: str, column: str) -> str:
    return str(table.get_cell(key, column))


@pytest.mark.timeout(900)
def _failed(app: RecordingApp) -> bool:
    """The progress dialog said the up failed (its ✗ line): no point waiting for the host any longer."""
    return any(line.startswith("✗") for line in app.progress_lines)


async def test_up_brings_local_up_from_the_dashboard(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "down", 30, "local shown as down")
        hosts = app.screen.query_one("#hosts", HostsTable)
        assert "down" in _cell(hosts, "local", "state")
        await pilot.press("u")
        await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), 10, "the progress dialog")
        # The env (TensorFlow) and the services (Jupyter, TensorBoard) are built by the process that holds the host.
        await wait_until(pilot, lambda: _state(app) == "up" or _failed(app), 840, "local up")
        assert not _failed(app), "\n".join(app.progress_lines)
        await wait_until(pilot, lambda: "up" in _cell(hosts, "local", "state"), 10, "the row saying up")
    lines = "\n".join(app.progress_lines)
    assert "✓ connected" in lines and "✓ sync" in lines, lines
    assert any(said.title == "local is up" for said in app.said)
    with open_state() as state:
        holder = state.supervisor("local")
    assert holder is not None and holder.detached  # quitting the dashboard left it up


@pytest.mark.timeout(600)
async def test_a_new_run_of_digits_trains_and_finishes_in_the_runs_table(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, RunCommandScreen), 10, "the run dialog")
        await pilot.press(*"python train.py --epochs 3", "enter")
        await wait_until(pilot, lambda: any(s.action == "run" for s in app.said), 300, "the run to start")
        started = next(s for s in app.said if s.action == "run")
        assert started.run_id, started
        DIGITS["run"] = started.run_id
        key = f"local/{started.run_id}"
        runs = app.screen.query_one("#runs", RunsTable)
        await wait_until(
            pilot, lambda: app.snapshot.run("local", started.run_id) is not None, 30, "the run's row"
        )
        await wait_until(
            pilot,
            lambda: (run := app.snapshot.run("local", started.run_id)) is not None and run.finished,
            400,
            "the run to finish",
        )
        run = app.snapshot.run("local", started.run_id)
        assert run is not None and run.state == "succeeded", run
        await wait_until(
            pilot, lambda: "succeeded" in _cell(runs, key, "state"), 10, "the row saying succeeded"
        )
        assert run.cost_usd == 0.0  # the local host is free, and the cost column says so
        # The selected run's log followed it to the end, and its curves came from its TensorBoard files.
        assert app.model.selected == ("local", started.run_id)
        log = app.screen.query_one(RunLog)
        await wait_until(
            pilot, lambda: any("Epoch 3/3" in line for line in log.lines), 30, "the log's last epoch"
        )
        await wait_until(
            pilot,
            lambda: any(
                c.tag == "train/epoch_loss" and len(c.points) == 3 for c in app.snapshot.selected.curves
            ),
            30,
            "three points of train loss",
        )
        tags = {c.tag for c in app.snapshot.selected.curves}  # type: ignore[union-attr]
        assert {"validation/epoch_loss", "train/epoch_accuracy", "custom/val_error_rate"} <= tags
        assert any(title == f"{started.run_id} finished" for title, _m, _s in app.notified), app.notified


async def test_open_tensorboard_and_jupyter_through_their_tunnels(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        await wait_until(pilot, lambda: len(app.snapshot.tunnels) == 2, 30, "two tunnels listed")
        await pilot.press("t")
        await wait_until(pilot, lambda: len(app.opened) == 1, 60, "TensorBoard opened")
        await pilot.press("j")
        await wait_until(pilot, lambda: len(app.opened) == 2, 60, "Jupyter opened")
    tensorboard, jupyter = app.opened
    assert tensorboard.startswith("http://127.0.0.1:") and "token" not in tensorboard
    assert _fetch(tensorboard) == 200 and b"TensorBoard" in _fetched[tensorboard]
    assert "/lab?token=" in jupyter and "<redacted>" not in jupyter
    assert _fetch(jupyter) == 200 and b"JupyterLab" in _fetched[jupyter]
    # The status line shows the same tunnels without the token.
    assert all("token=" not in t.url or "<redacted>" in t.url for t in app.snapshot.tunnels)


_fetched: dict[str, bytes] = {}


def _fetch(url: str, attempts: int = 5) -> int:
    """GET *url* through its tunnel; a connection reset (a server still starting behind the tunnel) is tried
    again a few times."""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                _fetched[url] = answer.read()
                return int(answer.status)
        except ConnectionResetError:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


async def test_sync_now_and_pull(project_root: Path, module_home: Path) -> None:
    app = _app(project_root)
    (project_root / "notes.txt").write_text("sent by the dashboard\n")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        await pilot.press("y")
        await wait_until(pilot, lambda: any(s.action == "sync" for s in app.said), 60, "the sync to finish")
        await pilot.press("p")
        await wait_until(pilot, lambda: any(s.action == "pull" for s in app.said), 60, "the pull to finish")
        # The sync line comes from the holding gpubox's monitor report.
        await wait_until(
            pilot,
            lambda: (h := app.snapshot.host("local")) is not None and h.sync is not None,
            30,
            "sync status",
        )
    synced = next(s for s in app.said if s.action == "sync")
    assert synced.title == "synced local" and synced.severity == "information", synced
    assert (module_home / "remote" / "notes.txt").read_text() == "sent by the dashboard\n"
    pulled = next(s for s in app.said if s.action == "pull")
    assert pulled.title == "pulled from local", pulled
    assert (project_root / "checkpoints" / "digits.keras").stat().st_size > 10_000
    view = app.snapshot.host("local")
    assert view is not None and view.sync is not None and view.sync.watching
    assert view.sync.text().startswith("watching · ")


async def test_full_screen_log_finds_text_and_the_screens_for_cost_check_help_and_palette(
    project_root: Path,
) -> None:
    app = _app(project_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        digits = _digits_run(app)
        app.select_run("local", digits)
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LogsScreen), 10, "the logs screen")
        full = app.screen.query_one(RunLog)
        await wait_until(pilot, lambda: any("Epoch 2/3" in line for line in full.lines), 30, "the log")
        await pilot.press("slash", *"epoch 2/3", "enter")
        assert full.matches and full.match_index == 0 and not full.following
        await pilot.press("escape", "escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, LogsScreen), 10, "back to the dashboard")

        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, CostScreen) and app.screen.lines, 30, "cost")
        assert app.screen.lines[0].startswith("cost over all the time") and any(
            line.startswith("local ") for line in app.screen.lines
        ), app.screen.lines
        await pilot.press("escape")

        await pilot.press("k")
        await wait_until(pilot, lambda: isinstance(app.screen, CheckScreen) and app.screen.lines, 60, "check")
        assert any("no NVIDIA GPU: training runs on CPU" in line for line in app.screen.lines), (
            app.screen.lines
        )
        await pilot.press("escape")

        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), 10, "help")
        await pilot.press("escape")

        # The command palette lists the actions: find "cost" and run it.
        await pilot.press("ctrl+p")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), 10, "the palette")
        await pilot.press(*"cost")
        palette = app.screen.query_one(CommandList)
        await wait_until(
            pilot, lambda: palette.option_count > 0 and "Cost" in str(palette.options[0].prompt), 10, "cost"
        )
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, CostScreen), 10, "cost from the palette")
        await pilot.press("escape")

        # The dashboard's own find works on the live log panel.
        await pilot.press("slash", *"epoch 3/3", "enter")
        log = app.screen.query_one("#log", RunLog)
        await wait_until(pilot, lambda: bool(log.matches), 10, "a match in the panel")
        await pilot.press("escape")
        assert log.following


def _digits_run(app: RecordingApp) -> str:
    if "run" in DIGITS:
        return DIGITS["run"]
    ours = [r for r in app.snapshot.runs if r.host == "local" and r.command == "python train.py --epochs 3"]
    assert ours, [r.command for r in app.snapshot.runs]
    return ours[-1].id


async def test_stop_run_asks_and_mouse_selects_rows(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, RunCommandScreen), 10, "the run dialog")
        # ↑ brings back the command run before (the history comes from the runs gpubox has seen).
        await pilot.press("up")
        assert app.screen.query_one("#command").value == "python train.py --epochs 3"  # type: ignore[attr-defined]
        await pilot.press("ctrl+u", *"sleep 300", "enter")
        await wait_until(pilot, lambda: any(s.action == "run" for s in app.said), 120, "the run to start")
        run_id = next(s for s in app.said if s.action == "run").run_id
        assert run_id is not None
        await wait_until(
            pilot,
            lambda: (run := app.snapshot.run("local", run_id)) is not None and run.state == "running",
            30,
            "sleep running",
        )
        # Clicking the digits run's row selects it; clicking the sleeping one selects it back.
        runs = app.screen.query_one("#runs", RunsTable)
        digits = _digits_run(app)
        row = runs.get_row_index(f"local/{digits}")
        runs.scroll_to(y=max(0, row - 2), animate=False)
        await pilot.pause()
        await pilot.click(RunsTable, offset=(3, 2 + row - int(runs.scroll_y)))
        await wait_until(pilot, lambda: app.model.selected == ("local", digits), 10, "the click's selection")
        app.screen.query_one("#runs", RunsTable).select_key(f"local/{run_id}")
        await wait_until(pilot, lambda: app.model.selected == ("local", run_id), 10, "the sleep run selected")

        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question")
        await pilot.press("n")
        await pilot.pause(1.0)
        assert app.snapshot.run("local", run_id).state == "running"  # type: ignore[union-attr]
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question again")
        await pilot.click("#yes")
        await wait_until(
            pilot,
            lambda: (run := app.snapshot.run("local", run_id)) is not None and run.state == "stopped",
            60,
            "the run stopped",
        )
        assert any(s.action == "stop" and s.title == f"{run_id} stopped" for s in app.said)


async def test_resizing_from_80x24_to_wide_keeps_the_tables_readable(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(200, 50)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        hosts = app.screen.query_one("#hosts", HostsTable)
        assert hosts.narrow is False and "provider" in [c.key for c in hosts.columns_shown]
        await pilot.resize_terminal(80, 24)
        await wait_until(pilot, lambda: hosts.narrow is True, 10, "the narrow columns")
        assert "provider" not in [c.key for c in hosts.columns_shown]
        assert "up" in _cell(hosts, "local", "state")
        await pilot.resize_terminal(200, 50)
        await wait_until(pilot, lambda: hosts.narrow is False, 10, "the wide columns")
        assert "up" in _cell(hosts, "local", "state")


async def test_a_host_that_stops_answering_is_unreachable_while_the_rest_updates(
    project_root: Path, sshd: SshServer, module_home: Path
) -> None:
    config = project_root / "hosts.toml"
    before = config.read_text()
    config.write_text(before + host_entry("box", sshd, remote_dir=str(module_home / "box-remote")))
    try:
        up = run_gpubox(
            "up", "box", "--detach", "--no-sync", "--no-services", "--accept-new", cwd=project_root
        )
        assert up.returncode == 0, up.stdout + up.stderr
        app = _app(project_root)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: _state(app, "box") == "up" and _state(app) == "up", 60, "both up")
            sshd.stop()
            await wait_until(pilot, lambda: _state(app, "box") == "unreachable", 60, "box unreachable")
            box = app.snapshot.host("box")
            assert box is not None and box.unreachable_since is not None
            app.screen.query_one("#hosts", HostsTable).select_key("box")
            await wait_until(
                pilot,
                lambda: "unreachable since" in str(app.screen.query_one("#host-detail").render()),
                10,
                "the detail line",
            )
            local = app.snapshot.host("local")
            assert local is not None
            seen = local.sampled_at
            await wait_until(
                pilot,
                lambda: (h := app.snapshot.host("local")) is not None and (h.sampled_at or 0) > (seen or 0),
                30,
                "local to keep updating",
            )
            assert any(title == "box is not answering" for title, _m, _s in app.notified)
    finally:
        run_gpubox("down", "box", "--keep-instance", cwd=project_root)
        config.write_text(before)


TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is missing (scripts/setup.sh installs it when run as root)")
def test_gpubox_dash_in_a_real_terminal(project_root: Path, tmp_path: Path) -> None:
    """`gpubox dash` in tmux: keys through send-keys, the screen through capture-pane."""
    assert TMUX is not None
    socket = str(tmp_path / "tmux.sock")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "GPUBOX_HOME": os.environ["GPUBOX_HOME"],
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
    }
    script = f"cd {shlex.quote(str(project_root))} && {shlex.quote(sys.executable)} -m gpubox dash; echo EXIT=$?; sleep 60"
    tmux = [TMUX, "-S", socket]

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "dash"], capture_output=True, text=True, env=env
        ).stdout

    def wait(condition: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        text = screen()
        while not condition(text):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.2)
            text = screen()
        return text

    subprocess.run(
        [*tmux, "new-session", "-d", "-s", "dash", "-x", "160", "-y", "45", "sh", "-c", script],
        env=env,
        check=True,
    )
    try:
        digits = DIGITS.get("run", "r-")
        shown = wait(
            lambda text: "● up" in text and f" {digits} " in text and "succeeded" in text,
            "the host and run rows",
        )
        host_row = next(line for line in shown.splitlines() if "● up" in line).strip("│ ")
        assert host_row.split()[:2] == ["local", "local"], host_row  # name, provider
        run_row = next(line for line in shown.splitlines() if f" {digits} " in line)
        assert "local" in run_row and "python train.py --epochs 3" in run_row and "succeeded" in run_row
        assert "sync local:" in shown and "tunnels" in shown
        subprocess.run([*tmux, "send-keys", "-t", "dash", "q"], env=env, check=True)
        left = wait(lambda text: "EXIT=" in text, "gpubox to exit")
        assert "EXIT=0" in left, left
        assert "left the dashboard: local and its runs keep going; `gpubox down local` stops it" in left
        assert "Traceback" not in left
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True)
    with open_state() as state:
        assert state.supervisor("local") is not None  # q stops nothing


@pytest.mark.timeout(300)
async def test_down_asks_then_takes_local_down(project_root: Path) -> None:
    app = _app(project_root)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: _state(app) == "up", 60, "local up")
        app.screen.query_one("#hosts", HostsTable).select_key("local")
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question")
        await pilot.press("escape")
        await pilot.pause(1.0)
        assert _state(app) == "up"
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), 10, "the question again")
        await pilot.press("y")
        await wait_until(pilot, lambda: _state(app) == "down", 120, "local down")
        await wait_until(pilot, lambda: any(s.action == "down" for s in app.said), 120, "down to finish")
    assert any(s.action == "down" and s.title == "local is down" for s in app.said), app.said
    with open_state() as state:
        assert state.supervisor("local") is None
