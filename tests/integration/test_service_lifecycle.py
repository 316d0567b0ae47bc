"""Services and tunnels over a host's held life, through the real CLI on the real local host: a service that
dies is started again and `status` says what answers meanwhile; URLs (ports, Jupyter's token) stay the same
across `down` and `up`; a browser that resets a connection leaves no traceback; and the foreground `up` says
what `down` does to the host."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import hosthome
from tests.support.cli import run_gpubox
from tests.support.sshd import children

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"
FILES = '\n[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8123\n'


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "digits"
    folder.mkdir()
    # The digits example's env (TensorFlow, TensorBoard; Jupyter goes in the first time): the suite's cached one.
    (folder / "requirements.txt").write_text((EXAMPLE / "requirements.txt").read_text())
    (folder / "gpubox.toml").write_text((EXAMPLE / "gpubox.toml").read_text() + FILES)
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    yield folder
    run_gpubox("down", "local", cwd=folder)


def _services(project: Path) -> dict[str, dict[str, object]]:
    status = run_gpubox("status", "--json", "--show-secrets", cwd=project)
    assert status.returncode == 0, status.stderr
    (local,) = [h for h in json.loads(status.stdout)["hosts"] if h["name"] == "local"]
    return {str(service["name"]): service for service in local["services"]}


def _host_service(project: Path, name: str) -> dict[str, object]:
    """The service's own record on the host (its pid, port and token)."""
    found = list((hosthome.host_home() / ".gpubox" / "services").glob(f"*/{name}/spec.json"))
    remote = str(project.parent / "remote")
    for spec_file in found:
        spec = json.loads(spec_file.read_text())
        if spec.get("cwd") == remote:
            return dict(spec)
    raise AssertionError(f"no {name} service for {remote} on the host: {found}")


def _wait(condition: object, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


def _status_code(url: str, token: str) -> int | None:
    try:
        return httpx.get(url, params={"token": token}, timeout=10).status_code
    except httpx.TransportError:
        return None


def _up_log() -> str:
    (log,) = (Path(os.environ["GPUBOX_HOME"]) / "state" / "logs").glob("up-local-*.log")  # one per project
    return log.read_text()


def test_a_service_that_dies_is_started_again_and_urls_stay_the_same_across_down_and_up(
    project: Path,
) -> None:
    up = run_gpubox("up", "--detach", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    before = _services(project)
    assert set(before) == {"jupyter", "tensorboard", "files"} and all(s["answers"] for s in before.values())

    # The custom server dies on the host: `status` says it does not answer, then the supervisor starts it again
    # behind the same URL.
    files = _host_service(project, "files")
    os.killpg(int(files["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    assert _services(project)["files"]["answers"] is False
    # The up log says why a browser's connection failed (once a minute at most).
    assert _wait(
        lambda: "files: a connection through its tunnel failed: nothing answers on the host's" in _up_log()
    )
    status = run_gpubox("status", cwd=project).stdout
    assert "(not answering: the supervisor starts it again)" in status, status
    assert _wait(lambda: _services(project)["files"]["answers"] is True)
    # The watch says so once the service is back, which a status probe may see a moment before.
    assert _wait(lambda: "files had stopped on the host; started it again" in _up_log(), 10)
    assert httpx.get(str(before["files"]["url"]), timeout=30).status_code == 200

    # So does Jupyter, with the same port and token: the bookmarked URL works on.
    jupyter = _host_service(project, "jupyter")
    os.killpg(int(jupyter["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    assert _wait(lambda: _host_service(project, "jupyter")["pid"] != jupyter["pid"])
    assert _wait(lambda: _services(project)["jupyter"]["answers"] is True, 120)
    assert _services(project)["jupyter"]["url"] == before["jupyter"]["url"]
    url = str(before["jupyter"]["url"])
    token = url.split("token=")[1]
    api = url.split("/lab")[0] + "/api/status"
    # Answering (a byte back on its port) comes a moment before a Jupyter just started serves its API on a loaded
    # machine: the promise is that the bookmarked URL works again, so it gets a few tries.
    assert _wait(lambda: _status_code(api, token) == 200, 30)

    # down, then up: every URL as it was.
    assert run_gpubox("down", "local", cwd=project).returncode == 0
    again = run_gpubox("up", "--detach", cwd=project, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    after = _services(project)
    assert {name: s["url"] for name, s in after.items()} == {name: s["url"] for name, s in before.items()}
    assert "Traceback" not in _up_log()


def test_a_browser_that_resets_its_connection_leaves_no_traceback(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir(exist_ok=True)
    (remote / "big.bin").write_bytes(os.urandom(8 << 20))
    up = run_gpubox("up", "--detach", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    url = str(_services(project)["files"]["url"])
    port = int(url.split(":")[2].split("/")[0])
    # On a loaded machine the file server can still be starting when `up --detach` returns (its tunnel then
    # resets a connection at once, as it should): the resets below are about a server that is serving.
    assert _wait(lambda: _status_code(url, "") == 200, 30)
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(4096)
            # Close with a reset (RST), as a browser tab that is shut mid-download does.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(2)
    assert httpx.get(url, timeout=30).status_code == 200  # the tunnel serves on
    log = _up_log()
    assert "Traceback" not in log and "Exception in thread" not in log, log[-3000:]


def _link_lost_since(project: Path) -> float | None:
    status = run_gpubox("status", "--json", cwd=project)
    assert status.returncode == 0, status.stderr
    (local,) = [h for h in json.loads(status.stdout)["hosts"] if h["name"] == "local"]
    return local["link_lost_since"]  # type: ignore[no-any-return]


def test_while_the_link_is_down_status_says_so_and_a_request_waits_for_it(project: Path) -> None:
    """The holder's connection drops (its sshd session killed: the socket is reset) while the host's sshd is
    frozen, so the reconnect cannot happen yet. `status` says the link is lost instead of calling the services
    dead, and a browser request made meanwhile is held by the tunnel and answered once the link is back (it used
    to be reset at once)."""
    import threading

    up = run_gpubox("up", "--detach", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    url = str(_services(project)["files"]["url"])
    assert _wait(lambda: _status_code(url, "") == 200, 30)
    listener = int((Path(os.environ["GPUBOX_HOME"]) / "state" / "local-sshd" / "sshd.pid").read_text())
    answered: list[int] = []
    request = threading.Thread(target=lambda: answered.append(httpx.get(url, timeout=60).status_code))
    os.kill(listener, signal.SIGSTOP)  # a reconnect now waits in its backlog until it goes on
    try:
        # Only the per-connection sshd processes: what runs below them (a login shell's rc file, the agent) ends
        # on its own once its pipes close, as it does when a real link drops.
        for session in children(listener):
            with contextlib.suppress(ProcessLookupError):
                os.kill(session, signal.SIGKILL)
        request.start()
        (project / "edited_offline.py").write_text("x = 1\n")  # live sync meets the dropped link too
        assert _wait(lambda: _link_lost_since(project) is not None, 30)
        status = run_gpubox("status", cwd=project).stdout
        assert "link      lost" in status and "reconnecting" in status, status
        assert "files     http://127.0.0.1:" in status and "(link lost: waiting for it)" in status, status
        assert request.is_alive() and not answered  # held by the tunnel, not reset
    finally:
        os.kill(listener, signal.SIGCONT)
    request.join(60)
    assert answered == [200]
    assert _wait(lambda: _link_lost_since(project) is None, 60)
    assert _services(project)["files"]["answers"] is True
    remote = project.parent / "remote"
    assert _wait(lambda: (remote / "edited_offline.py").is_file(), 30)
    # A dropped link is said in the log, and is not an error of the sync's or of the outputs follower's.
    (local,) = json.loads(run_gpubox("status", "--json", cwd=project).stdout)["hosts"]
    assert local["sync"]["errors"] == 0 and local["outputs"]["errors"] == 0, (local["sync"], local["outputs"])
    log = _up_log()
    assert "sync paused, link lost" in log
    assert "reconnected to local" in log and "Traceback" not in log and "Exception in thread" not in log, log[
        -3000:
    ]


def test_the_foreground_up_says_down_stopped_the_host(project: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "--no-tui", "--no-services"],
        cwd=project,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("  holding local"):
            break
    down = run_gpubox("down", "local", cwd=project)
    assert down.returncode == 0, down.stderr
    rest, stderr = process.communicate(timeout=60)
    last = rest.rstrip().splitlines()[-1]
    assert last.startswith("  left local after ") and last.endswith(": `gpubox down` is stopping it"), (
        rest,
        stderr,
    )
    assert "the host keeps running" not in rest
