"""Quitting never waits for a host: a poll stuck on a host that accepts TCP but never speaks SSH is abandoned,
and the dashboard is gone while that connection is still waiting."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from gpubox.config import load_hosts, load_project
from gpubox.state import open_state
from tests.tui.conftest import RecordingApp, wait_until


def test_quit_while_a_poll_waits_on_a_silent_host(tmp_path: Path) -> None:
    import asyncio

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)  # never says a word: the SSH handshake waits for its banner

    threading.Thread(target=accept, daemon=True).start()
    project = tmp_path / "proj"
    project.mkdir()
    (project / "hosts.toml").write_text(
        f'[hosts.silent]\nhostname = "127.0.0.1"\nport = {listener.getsockname()[1]}\nconnect_timeout = 120\n'
    )
    with open_state() as state:  # held by some live gpubox process (this one): the dashboard polls it
        state.claim_supervisor("silent", os.getpid(), detached=True)

    async def run() -> RecordingApp:
        app = RecordingApp(load_hosts(project), load_project(project), refresh_seconds=0.2, state_seconds=0.2)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: bool(accepted), 30, "the poll to connect")
            await wait_until(pilot, lambda: app.polls.in_flight == {"silent"}, 10, "the poll in flight")
            await pilot.press("q")
        return app

    try:
        app = asyncio.run(run())
        # The dashboard has exited, and the host has not been given up on: its connection is still open.
        assert app.return_code == 0
        assert accepted[0].recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        assert app.snapshot.host("silent") is not None
        assert app.snapshot.host("silent").state == "connecting"  # type: ignore[union-attr]
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
        with open_state() as state:
            state.release_supervisor("silent", os.getpid())
