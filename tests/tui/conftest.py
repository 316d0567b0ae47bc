"""Dashboard test fixtures: a home shared by a whole module where a real host stays up across its tests (the
env with TensorFlow, Jupyter and TensorBoard is built once), frozen cursors for snapshots, and an app that
records what it told the user."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from gpubox.tui.app import GpuboxApp
from tests.conftest import _stop_leftovers


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("tui-shared")
    yield base
    _stop_leftovers(base / "gpubox-home")


@pytest.fixture(autouse=True)
def isolated_home(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Like the suite's own: GPUBOX_HOME and HOME of the test's, except in modules that set SHARED_HOME, whose
    tests share one (the host they bring up stays up for the next test; the module cleans up at its end)."""
    shared = bool(getattr(request.module, "SHARED_HOME", False))
    base = request.getfixturevalue("module_home") if shared else tmp_path
    home = base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700, exist_ok=True)
    gpubox_home = base / "gpubox-home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GPUBOX_HOME", str(gpubox_home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    yield home
    if not shared:
        _stop_leftovers(gpubox_home)


@pytest.fixture(autouse=True)
def no_cursor_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inputs keep their cursor visible: snapshots do not depend on when they were taken."""
    monkeypatch.setattr(Input, "_toggle_cursor", lambda _self: None)


class RecordingApp(GpuboxApp):
    """The dashboard, remembering every notification and every URL it was asked to open."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.opened: list[str] = []
        kwargs.setdefault("opener", self._record_open)
        super().__init__(*args, **kwargs)
        self.notified: list[tuple[str, str, str]] = []

    def _record_open(self, url: str) -> str:
        self.opened.append(url)
        return f"opened {url.split('?')[0]}"

    def notify(self, message: str, *, title: str = "", severity: Any = "information", **kwargs: Any) -> None:
        self.notified.append((title, str(message), str(severity)))
        super().notify(message, title=title, severity=severity, **kwargs)


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], bool], timeout: float, what: str = "condition"
) -> None:
    """Let the app run until *condition* holds; fail after *timeout* seconds (a generous deadline, never a
    fixed wait)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await pilot.pause(0.1)
