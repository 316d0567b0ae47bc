"""The remote agent on a real host: upload by hash, hello, probe, old or missing Python, bad requests."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

import pytest

from gpubox.actions.supervisor import supervise
from gpubox.errors import AgentError, RemoteError
from gpubox.remote.agent import calls, framing, host
from gpubox.remote.agent import client as agent_client
from gpubox.remote.agent.client import AgentSession, agent_hash, agent_source
from gpubox.remote.agent.host import PROTOCOL
from gpubox.remote.connection import Connection, Endpoint
from gpubox.remote.session import HostSession
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

PYENV = Path(os.path.expanduser("~root")) / ".pyenv" / "versions"


def _usable(python: Path) -> bool:
    """True when this user may run *python* (pyenv under /root is out of reach for others)."""
    try:
        return python.exists() and os.access(python, os.X_OK)
    except OSError:
        return False


PYTHON_38 = PYENV / "3.8.18" / "bin" / "python3"
PYTHON_36 = PYENV / "3.6.15" / "bin" / "python3"


def _connect(server: SshServer, tmp_path: Path, connect_timeout: float = 15.0) -> Connection:
    endpoint = Endpoint(
        alias="t",
        hostname=server.host,
        port=server.port,
        user=server.user,
        identity_files=(str(server.client_key),),
        use_default_keys=False,
    )
    return Connection(
        endpoint, accept_new=True, pin_file=tmp_path / "pins", connect_timeout=connect_timeout
    ).open()


def test_agent_is_uploaded_once_then_reused(sshd: SshServer, tmp_path: Path) -> None:
    agent_file = sshd.home / ".gpubox" / f"agent-{agent_hash()}.py"
    agent_file.unlink(missing_ok=True)
    with _connect(sshd, tmp_path) as connection:
        first = AgentSession(connection).start()
        assert (
            agent_file.read_bytes()
            == (Path(__file__).parents[2] / "gpubox/remote/agent/host.py").read_bytes()
        )
        assert oct(agent_file.parent.stat().st_mode & 0o777) == "0o700"
        stamp = agent_file.stat().st_mtime_ns
        first.close()
        second = AgentSession(connection).start()
        assert second.hello["protocol"] == PROTOCOL
        assert agent_file.stat().st_mtime_ns == stamp
        second.close()


def test_probe_reports_the_host(sshd: SshServer, tmp_path: Path) -> None:
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection).start()
        probe = calls.probe(agent, project_dir=str(tmp_path / "not-yet" / "project"))
        assert probe["hostname"] and probe["os"]
        assert probe["cpu_count"] == len(os.sched_getaffinity(0))
        assert probe["memory"]["total_bytes"] > 0
        disk = probe["disk"]
        assert disk["path"] == str(tmp_path / "not-yet" / "project") and disk["exists"] is False
        assert 0 < disk["free_bytes"] <= disk["total_bytes"]
        assert probe["nvidia_smi"] == {
            "available": False,
            "reason": "nvidia-smi not found on PATH",
            "output": "",
        }
        assert calls.probe(agent, project_dir="~")["disk"]["exists"] is True


def test_probe_carries_raw_nvidia_smi_output(sshd: SshServer, tmp_path: Path) -> None:
    capture = Path(__file__).parents[1] / "data/nvidia-smi/03_l4_550.txt"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    script = fake_bin / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat '{capture}'\n")
    script.chmod(0o755)
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "nvidia-smi").write_text(
        '#!/bin/sh\necho "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'
    )
    (broken / "nvidia-smi").chmod(0o755)
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection, python=_python_with_path(tmp_path, fake_bin)).start()
        smi = calls.probe(agent, project_dir="~")["nvidia_smi"]
        assert smi["available"] is True and smi["output"] == capture.read_text()
        agent.close()
        agent = AgentSession(connection, python=_python_with_path(tmp_path, broken)).start()
        smi = calls.probe(agent, project_dir="~")["nvidia_smi"]
        assert smi["available"] is False and smi["exit_code"] == 9
        assert smi["reason"].startswith("NVIDIA-SMI has failed because it couldn't communicate")


def _python_with_path(tmp_path: Path, extra: Path) -> str:
    """A host 'python3' whose PATH starts with *extra*, as when nvidia-smi is installed there."""
    wrapper = tmp_path / f"python-{extra.name}"
    wrapper.write_text(f'#!/bin/sh\nPATH="{extra}:$PATH" exec {shutil.which("python3")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.skipif(not _usable(PYTHON_38), reason="no Python 3.8 on this machine")
def test_agent_runs_on_python_3_8(sshd: SshServer, tmp_path: Path) -> None:
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection, python=str(PYTHON_38)).start()
        assert agent.hello["python"] == "3.8.18"
        assert calls.probe(agent, project_dir="~")["python"]["version"] == "3.8.18"


@pytest.mark.skipif(not _usable(PYTHON_36), reason="no Python 3.6 on this machine")
def test_too_old_python_is_a_clear_error(sshd: SshServer, tmp_path: Path) -> None:
    old = str(PYTHON_36)
    with _connect(sshd, tmp_path) as connection, pytest.raises(AgentError) as caught:
        AgentSession(connection, python=old).start()
    assert str(caught.value) == (
        f"{old} on {sshd.user}@127.0.0.1:{sshd.port} is Python 3.6; gpubox's agent needs 3.8 or newer "
        '(set python = "...") for this host in hosts.toml)'.replace('")', '"')
    )


def test_missing_python_is_a_clear_error(sshd: SshServer, tmp_path: Path) -> None:
    with _connect(sshd, tmp_path) as connection, pytest.raises(AgentError) as caught:
        AgentSession(connection, python="python9.99").start()
    assert str(caught.value).startswith(f"python9.99 not found on {sshd.user}@127.0.0.1:{sshd.port}")


def test_an_agent_that_starts_but_never_answers_does_not_hang_gpubox(sshd: SshServer, tmp_path: Path) -> None:
    hanging = tmp_path / "python-hangs"
    hanging.write_text("#!/bin/sh\necho 'GPUBOX-BOOT ok'\nexec sleep 600\n")
    hanging.chmod(0o755)
    # Before the fix this blocked until pytest's own timeout.
    with _connect(sshd, tmp_path, connect_timeout=1.5) as connection, pytest.raises(AgentError) as caught:
        AgentSession(connection, python=str(hanging)).start()
    assert "did not answer within 3 s (twice connect_timeout)" in str(caught.value)


def test_unknown_request_is_refused_and_the_session_goes_on(sshd: SshServer, tmp_path: Path) -> None:
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection).start()
        with pytest.raises(AgentError, match="unknown op 'format_disk'"):
            agent.request("format_disk")
        with pytest.raises(AgentError, match="project_dir must be a string"):
            agent.request("probe", {"project_dir": 5})
        assert agent.request("hello")["protocol"] == PROTOCOL


def test_agent_death_is_reported(sshd: SshServer, tmp_path: Path) -> None:
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection).start()
        connection.run(f"kill {agent.hello['pid']}")
        with pytest.raises((AgentError, RemoteError)):
            agent.request("hello")


def test_supervisor_reconnects_after_sshd_restart(sshd: SshServer, tmp_path: Path) -> None:
    from gpubox.config import HostConfig
    from gpubox.remote.providers import ConnectSpec

    connection = _connect(sshd, tmp_path)
    agent = AgentSession(connection).start()
    host = HostConfig(name="t", hostname="127.0.0.1", port=sshd.port)
    session = HostSession(host, connection, ConnectSpec(connection.endpoint), agent, "~")
    stop = threading.Event()
    messages: list[str] = []
    worker = threading.Thread(
        target=supervise,
        kwargs={"session": session, "stop": stop, "say": messages.append, "heartbeat_seconds": 0.1},
    )
    worker.start()
    try:
        first_pid = agent.hello["pid"]
        sshd.kill()
        deadline = threading.Event()
        deadline.wait(1.0)
        sshd.start()
        for _ in range(200):
            if any(m.startswith("reconnected") for m in messages):
                break
            deadline.wait(0.05)
        assert messages[0].startswith("link to t lost")
        assert any(m.startswith("reconnected to t after") for m in messages), messages
        assert session.agent.hello["pid"] != first_pid
        session.heartbeat()
    finally:
        stop.set()
        worker.join(10)
        session.close()
    assert not worker.is_alive()


def test_agent_file_is_stdlib_only_and_py38_syntax() -> None:
    import ast

    source = (Path(__file__).parents[2] / "gpubox/remote/agent/host.py").read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    import sys

    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert shutil.which("python3")


# -- an agent and a client of different protocols (PROTOCOL.md, "Versions"). Each test gives the host a HOME of
# its own, so the agents it uploads never land in the ~/.gpubox that other tests share.


def _python_with_home(tmp_path: Path) -> tuple[str, Path]:
    """A host 'python3' whose HOME is a fresh folder: the agent files and runs/ live under it."""
    home = tmp_path / "host-home"
    home.mkdir()
    wrapper = tmp_path / "python-own-home"
    wrapper.write_text(f'#!/bin/sh\nHOME="{home}" exec {shutil.which("python3")} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), home


def _agent_speaking(protocol: int, *, checks: bool = True) -> bytes:
    """This agent's source with another PROTOCOL; without *checks*, one that ignores the client's protocol, as
    every agent before the check did."""
    source = agent_source().decode()
    changed = source.replace(f"\nPROTOCOL = {PROTOCOL}\n", f"\nPROTOCOL = {protocol}\n", 1)
    if not checks:
        changed = changed.replace(
            'client = args.get("client_protocol")', "client = None  # an agent from before the check", 1
        )
    assert changed.count(f"\nPROTOCOL = {protocol}\n") == 1
    assert checks or "an agent from before the check" in changed
    return changed.encode()


def test_an_agent_of_a_newer_protocol_refuses_this_client(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, home = _python_with_home(tmp_path)
    newer = _agent_speaking(PROTOCOL + 1)
    monkeypatch.setattr(agent_client, "agent_source", lambda: newer)
    with _connect(sshd, tmp_path) as connection, pytest.raises(AgentError) as caught:
        AgentSession(connection, python=python).start()
    assert str(caught.value) == (
        f"the agent on {sshd.user}@127.0.0.1:{sshd.port} speaks protocol {PROTOCOL + 1}, this gpubox {PROTOCOL}"
    )
    assert caught.value.exit_code == 1
    assert (home / ".gpubox" / f"agent-{agent_client.agent_hash()}.py").read_bytes() == newer


def test_this_agent_refuses_a_client_of_a_newer_protocol(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, _home = _python_with_home(tmp_path)
    with monkeypatch.context() as newer_gpubox:
        newer_gpubox.setattr(agent_client, "PROTOCOL", PROTOCOL + 1)
        newer_gpubox.setattr(framing, "PROTOCOL", PROTOCOL + 1)
        with _connect(sshd, tmp_path) as connection, pytest.raises(AgentError) as caught:
            AgentSession(connection, python=python).start()
    assert str(caught.value) == (
        f"the agent on {sshd.user}@127.0.0.1:{sshd.port} speaks protocol {PROTOCOL}, this gpubox {PROTOCOL + 1}"
    )
    assert caught.value.exit_code == 1
    with _connect(sshd, tmp_path) as connection:
        agent = AgentSession(connection, python=python).start()
        # Only the agent can refuse these: calls.hello does not compare what comes back.
        for theirs in (PROTOCOL + 1, True, "1"):
            with pytest.raises(AgentError, match=f"speaks protocol {PROTOCOL},"):
                calls.hello(agent, client_protocol=theirs)  # type: ignore[arg-type]
        assert calls.hello(agent)["protocol"] == PROTOCOL  # a heartbeat names no protocol: answered


def test_the_agents_protocol_refusal_names_its_own_protocol() -> None:
    answer, _ = host.handle({"id": 7, "op": "hello", "args": {"client_protocol": PROTOCOL + 1}})
    assert answer == {
        "id": 7,
        "ok": False,
        "error": {
            "kind": "protocol-mismatch",
            "message": f"this agent speaks protocol {PROTOCOL}, the client {PROTOCOL + 1}",
            "protocol": PROTOCOL,
        },
    }
    answer, _ = host.handle({"id": 8, "op": "hello", "args": {"client_protocol": PROTOCOL}})
    assert answer["ok"] is True and answer["result"]["protocol"] == PROTOCOL


def test_an_agent_that_does_not_check_is_refused_by_the_client(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, _home = _python_with_home(tmp_path)
    older = _agent_speaking(PROTOCOL - 1, checks=False)
    monkeypatch.setattr(agent_client, "agent_source", lambda: older)
    with _connect(sshd, tmp_path) as connection, pytest.raises(AgentError) as caught:
        AgentSession(connection, python=python).start()
    assert str(caught.value) == (
        f"the agent on {sshd.user}@127.0.0.1:{sshd.port} speaks protocol {PROTOCOL - 1}, this gpubox {PROTOCOL}"
    )


def test_an_old_agent_at_this_agents_file_name_is_refused_then_replaced(
    sshd: SshServer, tmp_path: Path
) -> None:
    """The boot trusts a file that exists under its hash: one changed on the host after it was written is what
    the hello check is for. Removing it is the way out (the next start uploads this gpubox's agent)."""
    python, home = _python_with_home(tmp_path)
    ours = home / ".gpubox" / f"agent-{agent_hash()}.py"
    ours.parent.mkdir(mode=0o700)
    ours.write_bytes(_agent_speaking(PROTOCOL - 1, checks=False))
    with _connect(sshd, tmp_path) as connection:
        with pytest.raises(AgentError, match=f"speaks protocol {PROTOCOL - 1}, this gpubox {PROTOCOL}"):
            AgentSession(connection, python=python).start()
        ours.unlink()
        agent = AgentSession(connection, python=python).start()
        assert agent.hello["protocol"] == PROTOCOL
        assert ours.read_bytes() == agent_source()


def test_a_new_client_never_runs_an_old_agent_and_takes_over_its_live_run(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older gpubox's agent keeps serving its own client while this gpubox uploads and runs its own; a run
    the old one started lives in ~/.gpubox/runs, which both read (its files outlive any agent)."""
    python, home = _python_with_home(tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    older = _agent_speaking(PROTOCOL - 1, checks=False)
    with _connect(sshd, tmp_path) as connection:
        with monkeypatch.context() as old_gpubox:
            old_gpubox.setattr(agent_client, "agent_source", lambda: older)
            old_gpubox.setattr(agent_client, "PROTOCOL", PROTOCOL - 1)
            old_hash = agent_client.agent_hash()
            old = AgentSession(connection, python=python).start()
            assert old.hello["protocol"] == PROTOCOL - 1
            run = calls.run_start(
                old,
                project=str(project),
                shell="echo started; sleep 60; echo never",
                name=None,
                env={},
                venv=None,
            )
        assert run["state"] == "running"

        new = AgentSession(connection, python=python).start()
        assert new.hello["protocol"] == PROTOCOL and new.hello["pid"] != old.hello["pid"]
        started_with = Path(f"/proc/{new.hello['pid']}/cmdline").read_bytes().split(b"\0")
        assert agent_hash().encode() in started_with and old_hash.encode() not in started_with
        assert (home / ".gpubox" / f"agent-{old_hash}.py").read_bytes() == older  # left alone, never run
        assert (home / ".gpubox" / f"agent-{agent_hash()}.py").read_bytes() == agent_source()

        listed = calls.run_list(new, ids=[run["id"]])["runs"]
        assert [(row["id"], row["state"]) for row in listed] == [(run["id"], "running")]
        deadline = threading.Event()
        for _ in range(100):
            answer, data = calls.run_log(new, run_id=run["id"])
            if data:
                break
            deadline.wait(0.05)
        assert data == b"started\n" and answer["run"]["state"] == "running"
        assert calls.run_stop(new, run_id=run["id"], grace=1)["state"] == "stopped"
        # The old agent, still serving its own client, sees the same run end.
        calls.hello(old)
        assert calls.run_list(old, ids=[run["id"]])["runs"][0]["state"] == "stopped"
        old.close()
        new.close()


def test_the_uploaded_agent_is_host_py_of_the_package() -> None:
    import hashlib
    from importlib import resources

    assert agent_source() == resources.files("gpubox.remote.agent").joinpath("host.py").read_bytes()
    assert agent_hash() == hashlib.sha256(agent_source()).hexdigest()[:16]


def test_calls_and_the_agents_constants_load_without_paramiko() -> None:
    import subprocess
    import sys

    code = "import sys, gpubox.remote.agent.calls, gpubox.remote.agent.host; print('paramiko' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_two_projects_starting_a_service_at_once_never_take_the_same_port(
    sshd: SshServer, tmp_path: Path
) -> None:
    """Two `gpubox up`s of different projects start their file servers at the same moment, asking for the same
    port. Each agent used to find the port free and start its server there: one server then failed to bind, and
    its agent could even take the other's answer on that port for its own. The port is now chosen and claimed
    under a host-wide lock, so each gets a port of its own, answered by its own server."""
    from gpubox.remote.sshd import free_port

    port = free_port()
    # Slow to bind, as Jupyter is: both agents have chosen a port before either server listens.
    command = "sleep 0.5; exec python3 -m http.server {port} --bind 127.0.0.1"
    results: dict[int, object] = {}
    with _connect(sshd, tmp_path) as connection:
        agents = [AgentSession(connection).start() for _ in range(2)]

        def start(index: int) -> None:
            try:
                results[index] = calls.service_ensure(
                    agents[index],
                    key=f"project{index}",
                    name="files",
                    command=command,
                    port=port,
                    cwd=str(sshd.home),
                    venv=None,
                    secret=None,
                    env={},
                    wait=30,
                )
            except RemoteError as exc:
                results[index] = exc

        threads = [threading.Thread(target=start, args=(index,)) for index in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        try:
            rows = [results[0], results[1]]
            assert all(isinstance(row, dict) for row in rows), rows
            ports = [row["port"] for row in rows]  # type: ignore[index]
            assert len(set(ports)) == 2, rows
            for index in range(2):
                listed = calls.service_list(agents[index], key=f"project{index}")["services"]
                assert [(r["name"], r["state"], r["port"]) for r in listed] == [
                    ("files", "running", ports[index])
                ]
        finally:
            for index, agent in enumerate(agents):
                with contextlib.suppress(RemoteError):
                    calls.service_stop(agent, key=f"project{index}", name="files")
                agent.close()
