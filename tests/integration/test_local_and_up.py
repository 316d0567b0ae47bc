"""The built-in local host and the up / status / down / ssh-config cycle, through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

from gpubox.errors import HostUnreachable
from gpubox.remote.providers.local import LocalSshd
from gpubox.state import open_state, pid_alive
from tests.support.cli import assert_one_line_error, host_entry, run_gpubox
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project whose host copy lands in this test's temp folder, not in ~/gpubox of the test user."""
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n')
    return folder


def _local() -> LocalSshd:
    return LocalSshd()


def test_up_detach_status_reuse_and_down_on_local(project: Path) -> None:
    up = run_gpubox("up", "--detach", "--no-services", cwd=project)
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    assert lines[0] == "gpubox up local"
    assert lines[1].startswith("  ✓ connected ") and "(host key made by gpubox)" in lines[1]
    assert any(line.startswith("  · GPU    no NVIDIA GPU: training runs on CPU") for line in lines)
    # The project's folder on the host is made at once (an empty project works), and said.
    assert any("free for" in line and line.rstrip().endswith("remote") for line in lines)
    assert f"  ✓ folder {project.parent / 'remote'} (remote_dir in hosts.toml; created)" in lines
    assert any(line.startswith("  ✓ sync   ") for line in lines)
    assert "running in the background" in up.stdout
    server = _local().running()
    assert server is not None

    status = json.loads(run_gpubox("status", "--json", cwd=project).stdout)
    (local,) = status["hosts"]
    assert local["up"] and local["supervisor"]["detached"]
    assert local["instance"]["state"] == "running"
    assert local["gpu"] == "none (CPU)"
    supervisor_pid = local["supervisor"]["pid"]
    assert pid_alive(supervisor_pid)

    # Another command reuses the running sshd rather than starting a second one.
    assert run_gpubox("ssh", "local", "--", "true", cwd=project).returncode == 0
    assert _local().running() == server

    # A second `up` of a held host is refused, clearly.
    again = run_gpubox("up", "--no-services", cwd=project)
    assert assert_one_line_error(again, 2).startswith(
        f"gpubox: local is already up in gpubox process {supervisor_pid}"
    )

    down = run_gpubox("down", "local", cwd=project)
    assert down.returncode == 0, down.stderr
    assert down.stdout.splitlines() == [
        f"stopped gpubox process {supervisor_pid} holding local",
        "stopped the local sshd",
    ]
    assert not pid_alive(server.pid) and not pid_alive(supervisor_pid)
    assert _local().running() is None
    assert run_gpubox("status", cwd=project).stdout.startswith("nothing is up")


def test_ssh_local_exit_code(project: Path) -> None:
    result = run_gpubox("ssh", "local", "--", "sh", "-c", "exit 7", cwd=project)
    assert result.returncode == 7, result.stderr
    assert run_gpubox("down", "local", cwd=project).returncode == 0


def test_ssh_runs_in_the_remote_project_folder_when_it_exists(project: Path) -> None:
    (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{project}"\n')
    result = run_gpubox("ssh", "local", "--", "pwd", cwd=project)
    assert result.stdout.strip() == str(project)
    run_gpubox("down", "local", cwd=project)


def test_up_stop_ends_only_the_supervisor(project: Path) -> None:
    assert run_gpubox("up", "--detach", "--no-services", cwd=project).returncode == 0
    stopped = run_gpubox("up", "--stop", cwd=project)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped gpubox process")
    assert _local().running() is not None  # the host keeps running
    assert (
        run_gpubox("up", "--stop", cwd=project).stdout.strip()
        == "nothing was holding local up for this project"
    )
    assert (
        run_gpubox("down", "--keep-instance", cwd=project).stdout.strip()
        == "kept local running (--keep-instance)"
    )
    assert _local().running() is not None
    run_gpubox("down", cwd=project)


def test_foreground_up_holds_until_interrupted(project: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "gpubox", "up", "--no-tui", "--no-services"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        held = None
        while time.monotonic() < deadline and held is None:
            with open_state() as state:
                held = state.supervisor("local")
            time.sleep(0.05)
        assert held is not None and held.pid == process.pid and not held.detached
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "holding local: Ctrl-C leaves it running" in out
    assert "the host keeps running" in out.splitlines()[-1]
    with open_state() as state:
        assert state.supervisor("local") is None
    run_gpubox("down", cwd=project)


def test_local_server_is_shared_by_concurrent_starters(tmp_path: Path) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            results.append(LocalSshd().ensure_running().pid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1
    assert LocalSshd().stop() is True
    assert LocalSshd().stop() is False


def test_local_keeps_its_port_across_restarts() -> None:
    first = LocalSshd().ensure_running()
    LocalSshd().stop()
    second = LocalSshd().ensure_running()
    try:
        assert second.port == first.port and second.pid != first.pid
    finally:
        LocalSshd().stop()


def test_local_survives_a_stolen_port() -> None:
    first = LocalSshd().ensure_running()
    LocalSshd().stop()
    import socket

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", first.port))
    squatter.listen()
    try:
        second = LocalSshd().ensure_running()
        assert second.port != first.port
    finally:
        squatter.close()
        LocalSshd().stop()


def test_missing_sshd_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpubox.remote import sshd

    monkeypatch.setattr(sshd.shutil, "which", lambda name: None)
    monkeypatch.setattr(sshd, "_SSHD_CANDIDATES", ("/nonexistent/sshd",))
    with pytest.raises(HostUnreachable) as caught:
        LocalSshd().ensure_running()
    assert "install the `openssh-server` package" in str(caught.value)


def test_up_on_a_configured_ssh_host(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    (project / "hosts.toml").write_text(
        '[defaults]\nhost = "box"\n\n' + host_entry("box", sshd, accept_new=True, price_per_hour=1.5)
    )
    up = run_gpubox("up", "--detach", "--no-services", cwd=project)
    assert up.returncode == 0, up.stderr
    assert f"✓ connected {sshd.user}@127.0.0.1:{sshd.port} (host key checked)" in up.stdout
    assert "$1.50/h (price_per_hour in hosts.toml)" in up.stdout
    hosts = json.loads(run_gpubox("hosts", "--json", cwd=project).stdout)
    box = next(h for h in hosts["hosts"] if h["name"] == "box")
    assert box["up"] and box["default"] and box["price_per_hour"] == 1.5
    assert box["endpoint"] == f"{sshd.user}@127.0.0.1:{sshd.port}"
    table = run_gpubox("hosts", cwd=project).stdout
    assert "box *" in table and "$1.50" in table
    down = run_gpubox("down", cwd=project)
    assert down.returncode == 0
    assert down.stdout.splitlines()[-1] == "box is an ssh host: gpubox left the machine itself running"
    with open_state() as state:
        ((host, price, started, ended),) = state.billing_intervals("box")
    assert (host, price) == ("box", 1.5) and ended is not None and ended >= started


def test_ssh_config_entries_work_with_openssh(tmp_path: Path, project: Path, sshd: SshServer) -> None:
    (project / "hosts.toml").write_text(
        host_entry("box", sshd) + f'\n[hosts.local]\nremote_dir = "{tmp_path / "remote"}"\n'
    )
    assert run_gpubox("ssh", "box", "--accept-new", "--", "true", cwd=project).returncode == 0
    assert run_gpubox("up", "local", "--detach", "--no-services", cwd=project).returncode == 0
    written = run_gpubox("ssh-config", cwd=project)
    assert written.returncode == 0, written.stderr
    include = Path(os.environ["GPUBOX_HOME"]) / "config" / "ssh_config"
    assert f"    Include {include}" in written.stdout
    for name in ("gpubox-box", "gpubox-local"):
        result = subprocess.run(
            ["ssh", "-F", str(include), "-o", "BatchMode=yes", name, "echo", "via", name],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert (result.returncode, result.stdout) == (0, f"via {name}\n"), result.stderr
    run_gpubox("down", "local", cwd=project)


def test_init_writes_a_config_that_works_as_written(project: Path) -> None:
    (project / "hosts.toml").unlink()
    first = run_gpubox("init", cwd=project)
    assert first.returncode == 0
    assert [line.split(" (")[0] for line in first.stdout.splitlines()[:2]] == [
        "wrote gpubox.toml",
        "wrote hosts.toml",
    ]
    assert "`gpubox up` works right away on the built-in local host" in first.stdout
    # Every example is there to read, and none of it is live: no example host is the default, no stop
    # command, no shared remote_dir, no requirements file that the project does not have.
    for name in ("hosts.toml", "gpubox.toml"):
        assert tomllib.loads((project / name).read_text()) == {}, name
    hosts_text = (project / "hosts.toml").read_text()
    assert '# stop_command = "sudo poweroff"' in hosts_text and "# [hosts.box]" in hosts_text
    listing = run_gpubox("hosts", "--json", cwd=project)
    assert listing.returncode == 0, listing.stderr
    document = json.loads(listing.stdout)
    assert [h["name"] for h in document["hosts"]] == ["local"] and document["provider_problems"] == []
    # As written, `up` comes up on the built-in local host.
    up = run_gpubox("up", "--detach", "--no-services", cwd=project, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    status = run_gpubox("status", cwd=project)
    assert status.returncode == 0 and "local  [local]  held by gpubox pid" in status.stdout, status.stdout
    assert "API key" not in status.stdout + status.stderr
    assert run_gpubox("down", "local", cwd=project).returncode == 0
    # A second init keeps what is there.
    (project / "hosts.toml").write_text("# mine\n")
    second = run_gpubox("init", cwd=project)
    assert second.stdout.splitlines() == [
        "kept gpubox.toml (already there)",
        "kept hosts.toml (already there)",
    ]
    assert (project / "hosts.toml").read_text() == "# mine\n"


def test_a_cloud_without_its_key_is_mentioned_only_when_asked(project: Path) -> None:
    (project / "hosts.toml").write_text(
        (project / "hosts.toml").read_text()
        + '\n[hosts.cloudy]\nprovider = "lambda"\ninstance_type = "gpu_1x_a10"\nssh_key_name = "k"\n'
    )
    for command in (("status",), ("hosts",), ("status", "--json"), ("hosts", "--json")):
        result = run_gpubox(*command, cwd=project)
        assert result.returncode == 0, result.stderr
        assert "LAMBDA_API_KEY" not in result.stdout + result.stderr, (command, result.stdout)
    # Asked about that cloud, gpubox says what is missing.
    offers = run_gpubox("offers", "--provider", "lambda", cwd=project)
    assert "the API key variable LAMBDA_API_KEY is not set" in offers.stdout + offers.stderr
