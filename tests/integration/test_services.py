"""Jupyter, TensorBoard and a custom service on the local host, reached only through gpubox's own tunnels."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from gpubox.remote.tunnels import bind_local
from tests.support.cli import run_gpubox
from tests.support.trees import wait_until

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("logs", "checkpoints"))
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    with (folder / "gpubox.toml").open("a") as handle:
        handle.write(
            '\n[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8123\n'
        )
    yield folder
    down = run_gpubox("down", "local", cwd=folder)
    assert down.returncode == 0, down.stderr


def _services(project: Path, *extra: str) -> dict[str, str]:
    status = run_gpubox("status", "--json", *extra, cwd=project)
    assert status.returncode == 0, status.stderr
    (local,) = [h for h in json.loads(status.stdout)["hosts"] if h["name"] == "local"]
    return {service["name"]: service["url"] for service in local["services"]}


def test_services_through_tunnels(project: Path) -> None:
    trained = run_gpubox("run", "-f", "--", "python", "train.py", "--epochs", "2", cwd=project, timeout=900)
    assert trained.returncode == 0, trained.stdout[-1500:] + trained.stderr[-1500:]
    run_id = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("started "))
    up = run_gpubox("up", "--detach", "--no-sync", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "jupyter      http://127.0.0.1:" in up.stdout and "?token=<redacted>" in up.stdout
    urls = _services(project)
    assert set(urls) == {"jupyter", "tensorboard", "files"}
    assert urls["jupyter"].endswith("/lab?token=<redacted>")  # no secret in --json unless asked
    secret_urls = _services(project, "--show-secrets")
    token = secret_urls["jupyter"].split("token=")[1]
    assert len(token) >= 32
    opened = run_gpubox("open", "jupyter", "--print", cwd=project)
    assert opened.stdout.strip() == secret_urls["jupyter"]

    jupyter = urls["jupyter"].split("/lab")[0]
    with httpx.Client(timeout=30) as client:
        # Without the token (and without the cookie a tokened request leaves behind): refused.
        assert httpx.get(f"{jupyter}/api/status", timeout=30).status_code == 403
        assert client.get(f"{jupyter}/api/status", params={"token": token}).status_code == 200
        kernel = client.post(f"{jupyter}/api/kernels", params={"token": token}, json={"name": "python3"})
        assert kernel.status_code == 201, kernel.text
        tensorboard = urls["tensorboard"].rstrip("/")
        deadline = time.monotonic() + 60
        runs: list[str] = []
        while time.monotonic() < deadline and f"{run_id}/train" not in runs:
            runs = client.get(f"{tensorboard}/data/runs").json()
            time.sleep(0.5)
        assert f"{run_id}/train" in runs, runs
        scalars = client.get(
            f"{tensorboard}/data/plugin/scalars/scalars",
            params={"run": f"{run_id}/train", "tag": "epoch_loss"},
        )
        assert scalars.status_code == 200, scalars.text
        assert [step for _wall, step, _value in scalars.json()] == [0, 1]
        listing = client.get(urls["files"])
        assert listing.status_code == 200 and "train.py" in listing.text

        # Many connections at once, as a TensorBoard page makes.
        answers = [client.get(f"{tensorboard}/data/runs").status_code for _ in range(50)]
        assert answers == [200] * 50

    # Up again after stopping the supervisor: the host's services are reused, not restarted.
    assert run_gpubox("up", "--stop", cwd=project).returncode == 0
    again = run_gpubox("up", "--detach", "--no-sync", cwd=project, timeout=300)
    assert "jupyter      reused on the host's 127.0.0.1:" in again.stdout, again.stdout


def test_tunnels_work_again_after_the_link_drops(project: Path) -> None:
    from gpubox.remote.providers.local import LocalSshd

    (project / "gpubox.toml").write_text(
        "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
        '[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8124\n'
    )
    (project / "requirements.txt").unlink()
    up = run_gpubox("up", "--detach", cwd=project, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    url = _services(project)["files"]
    with httpx.Client(timeout=10) as client:
        assert client.get(url).status_code == 200
        server = LocalSshd().running()
        assert server is not None
        # Every SSH session of the host drops (its sshd process dies), the listener stays. What the sessions
        # started in sessions of their own (the service) lives on, as after a real drop.
        for pid in _children(server.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                status = client.get(url).status_code
                if status == 200:
                    break
            time.sleep(0.5)
        assert status == 200
    assert _services(project)["files"] == url  # the same local URL


def _children(parent: int) -> list[int]:
    """The processes whose parent is *parent* (for sshd's listener: one sshd per SSH session)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
    return found


def test_a_taken_local_port_moves_to_the_next_free_one() -> None:
    first = bind_local(0)
    port = first.getsockname()[1]
    try:
        second = bind_local(port)
        try:
            assert second.getsockname()[1] != port
            assert second.getsockname()[0] == "127.0.0.1"
        finally:
            second.close()
    finally:
        first.close()


def test_tunnels_listen_on_loopback_only() -> None:
    listener = bind_local(0)
    try:
        assert listener.getsockname()[0] == "127.0.0.1"
        with pytest.raises(OSError):
            socket.create_connection((_an_outside_address(), listener.getsockname()[1]), timeout=1)
    finally:
        listener.close()


def _an_outside_address() -> str:
    """Another loopback address: a listener bound to 127.0.0.1 alone does not answer there."""
    return "127.0.0.2"


@pytest.mark.netns
def test_nothing_is_reachable_from_another_network_namespace(project: Path, netns_hosts: object) -> None:
    (outsider,) = netns_hosts(1)  # type: ignore[operator]
    up = run_gpubox("up", "--detach", "--no-sync", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    status = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    (local,) = [h for h in status["hosts"] if h["name"] == "local"]
    ports = set()
    for service in local["services"]:
        ports.add(int(service["url"].split(":")[2].split("/")[0]))  # the local tunnel
        ports.add(int(service["host_port"]))  # the server itself on the (local) host
    probe = (
        "import socket, sys\n"
        "for port in map(int, sys.argv[2:]):\n"
        "    try:\n"
        "        socket.create_connection((sys.argv[1], port), timeout=2).close()\n"
        "        print('open', port)\n"
        "    except OSError:\n"
        "        print('closed', port)\n"
    )
    # From the namespace, this machine is its gateway address: every port must be closed there.
    seen = outsider.exec("python3", "-c", probe, outsider.gateway, *map(str, sorted(ports))).stdout
    assert seen.split("\n")[:-1] == [f"closed {port}" for port in sorted(ports)], seen


def test_a_jupyter_kernel_runs_code_over_its_websocket_through_the_tunnel(project: Path) -> None:
    import uuid

    import websocket  # websocket-client: a plain client, to talk to Jupyter's kernel channel

    (project / "gpubox.toml").write_text("[services.tensorboard]\nenabled = false\n")
    up = run_gpubox("up", "--detach", "--no-sync", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    url = _services(project, "--show-secrets")["jupyter"]
    base, token = url.split("/lab?token=")
    kernel = httpx.post(f"{base}/api/kernels", params={"token": token}, json={"name": "python3"}, timeout=60)
    assert kernel.status_code == 201, kernel.text
    channel = websocket.create_connection(
        f"ws{base[4:]}/api/kernels/{kernel.json()['id']}/channels?token={token}", timeout=60
    )
    try:
        session = uuid.uuid4().hex
        message_id = uuid.uuid4().hex
        channel.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": message_id,
                        "username": "gpubox-test",
                        "session": session,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {"code": "1+1", "silent": False, "store_history": False, "allow_stdin": False},
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        result = None
        deadline = time.monotonic() + 60
        while result is None and time.monotonic() < deadline:
            reply = json.loads(channel.recv())
            if (
                reply.get("parent_header", {}).get("msg_id") == message_id
                and reply["msg_type"] == "execute_result"
            ):
                result = reply["content"]["data"]["text/plain"]
        assert result == "2"
    finally:
        channel.close()


def test_a_busy_jupyter_kernel_keeps_the_host_from_autostopping(project: Path, tmp_path: Path) -> None:
    import uuid

    import websocket

    (project / "hosts.toml").write_text(
        # A 15 s window: long enough that starting the kernel on a loaded machine does not already count as idle.
        f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\nautostop_minutes = 0.25\n'
    )
    (project / "gpubox.toml").write_text("[services.tensorboard]\nenabled = false\n")
    up = run_gpubox("up", "--detach", "--no-sync", cwd=project, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    base, token = _services(project, "--show-secrets")["jupyter"].split("/lab?token=")
    kernel = httpx.post(f"{base}/api/kernels", params={"token": token}, json={"name": "python3"}, timeout=60)
    channel = websocket.create_connection(
        f"ws{base[4:]}/api/kernels/{kernel.json()['id']}/channels?token={token}", timeout=60
    )
    try:
        channel.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": uuid.uuid4().hex,
                        "username": "t",
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": "import time; time.sleep(60)",
                        "silent": False,
                        "store_history": False,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        kernel_url = f"{base}/api/kernels/{kernel.json()['id']}"

        def kernel_busy() -> bool:
            answer = httpx.get(kernel_url, params={"token": token}, timeout=30)
            return bool(answer.json().get("execution_state") == "busy")

        assert wait_until(kernel_busy, timeout=60)
        time.sleep(17)  # longer than the window: the busy kernel keeps the host up
        status = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
        (local,) = [h for h in status["hosts"] if h["name"] == "local"]
        assert local["up"], local
        autostop = local["autostop"]
        assert autostop["state"] == "busy" and any("Jupyter kernel" in r for r in autostop["busy"]), autostop
        # The cell is interrupted: once the kernel is idle, the window runs out and the local host is stopped.
        httpx.post(f"{kernel_url}/interrupt", params={"token": token}, timeout=30)
    finally:
        channel.close()
    from gpubox.remote.providers.local import LocalSshd

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and LocalSshd().running() is not None:
        time.sleep(0.5)
    assert LocalSshd().running() is None
