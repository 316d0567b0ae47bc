"""Multi-host runs without hosts: worker wiring, the run's state from its parts, log prefixes, bad input, the
session pool and the watcher's entry point."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gpubox.config import HostConfig, HostsConfig
from gpubox.errors import UsageError
from gpubox.remote.agent import host as agent
from gpubox.remote.pool import SessionPool
from gpubox.train import multihost
from gpubox.train.multihost import MultiRun, Part, aggregate, worker_env
from gpubox.train.multihost.logs import _Prefixer, _prefixes
from gpubox.train.multihost.wiring import wire
from gpubox.train.runs import RunInfo
from tests.support.cli import assert_one_line_error, run_gpubox


def _run(hosts: tuple[str, ...] = ("a", "b")) -> MultiRun:
    run = MultiRun("m-1", hosts, "python train.py", None, 100.0)
    run.parts = [Part(host, f"r-{i + 1}", i, f"10.0.0.{i + 1}:4000") for i, host in enumerate(hosts)]
    return run


def _info(state: str, code: int | None = None, ended: float | None = None) -> RunInfo:
    return RunInfo("r-1", "a", "python train.py", state, 100.0, ended, code)


def test_worker_env_is_what_multi_worker_mirrored_strategy_and_torchrun_read() -> None:
    env = worker_env(1, ["10.0.0.5:41234", "10.0.0.6:40211"], "10.0.0.5", 41235, "m-3")
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.5:41234", "10.0.0.6:40211"]},
        "task": {"type": "worker", "index": 1},
    }
    assert {k: v for k, v in env.items() if k != "TF_CONFIG"} == {
        "GPUBOX_MULTIHOST_RUN": "m-3",
        "GPUBOX_NODE_RANK": "1",
        "GPUBOX_NUM_NODES": "2",
        "GPUBOX_NODE_IPS": "10.0.0.5,10.0.0.6",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "41235",
        "WORLD_SIZE": "2",
        "RANK": "1",
    }
    assert multihost.host_port("fd00::5", 80) == "[fd00::5]:80"
    assert worker_env(0, ["[fd00::5]:80", "[fd00::6]:81"], "fd00::5", 82, "m-1")["GPUBOX_NODE_IPS"] == (
        "fd00::5,fd00::6"
    )


class _FakeAgent:
    def __init__(self, address: str | None, ports: list[int]) -> None:
        self.reply = {"address": address, "ports": ports}
        self.asked: list[dict[str, Any]] = []

    def request(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        assert op == "node_info"
        self.asked.append(args)
        return self.reply


def _session(name: str, hostname: str, agent_: _FakeAgent) -> Any:
    return SimpleNamespace(
        host=SimpleNamespace(name=name),
        spec=SimpleNamespace(endpoint=SimpleNamespace(hostname=hostname)),
        agent=agent_,
    )


def test_an_ip_endpoint_is_the_workers_address_and_a_loopback_one_asks_the_host() -> None:
    first, second = _FakeAgent("192.168.1.9", [5000, 5001]), _FakeAgent("10.1.1.7", [6000])
    cluster, master_addr, master_port = wire(
        [_session("a", "10.1.1.1", first), _session("b", "127.0.0.1", second)]
    )
    # a is reached where gpubox reaches it; b (behind a loopback endpoint) says where it sends from toward a.
    assert cluster == ["10.1.1.1:5000", "10.1.1.7:6000"]
    assert (master_addr, master_port) == ("10.1.1.1", 5001)
    assert first.asked == [{"toward": None, "ports": 2}]
    assert second.asked == [{"toward": "10.1.1.1", "ports": 1}]


def test_agent_node_info_finds_the_route_source_and_distinct_free_ports() -> None:
    found = agent.op_node_info({"toward": "127.0.0.1", "ports": 3})
    assert found["address"] == "127.0.0.1"
    assert len(set(found["ports"])) == 3 and all(1024 <= p <= 65535 for p in found["ports"])
    for bad in ({"toward": 5}, {"ports": 99}, {"ports": "2"}):
        with pytest.raises(agent.RequestError):
            agent.op_node_info(bad)


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([_info("succeeded", 0, 5), _info("succeeded", 0, 6)], ("succeeded", 0, None)),
        ([_info("running"), _info("starting")], ("running", None, None)),
        ([_info("running"), _info("failed", 3, 9)], ("failed", 3, "b")),
        ([_info("stopped", 143, 9), _info("failed", 137, 8)], ("failed", 137, "b")),
        ([_info("failed", 2, 7), _info("failed", 1, 8)], ("failed", 2, "a")),
        ([_info("lost"), _info("running")], ("failed", 1, "a")),
        ([_info("running"), None], ("unknown", None, None)),
        ([_info("stopped", 143, 5), _info("succeeded", 0, 4)], ("stopped", 143, None)),
    ],
)
def test_the_run_state_comes_from_its_parts(
    states: list[RunInfo | None], expected: tuple[str, int | None, str | None]
) -> None:
    status = aggregate(_run(), states)
    assert (status.state, status.exit_code, status.failed and status.failed.host) == expected


def test_failures_after_a_stop_request_are_part_of_the_stop_and_the_first_seen_failure_wins() -> None:
    # Both workers died after the user asked to stop: stopped, not failed.
    infos = [_info("stopped", 143, 12), _info("failed", 1, 13)]
    assert aggregate(_run(), infos, stop_requested_at=10).state == "stopped"
    # Host clocks disagree: the failure gpubox saw first names the culprit, not the earliest end time.
    infos = [_info("failed", 1, 50), _info("failed", 137, 40)]
    status = aggregate(_run(), infos, first_failure=("a", "r-1"))
    assert (status.exit_code, status.failed and status.failed.host) == (1, "a")


def test_status_remembers_the_first_failure_for_every_later_view() -> None:
    run = multihost.new_run(("a", "b"), "python train.py", None, "/p")
    run.parts = _run().parts
    assert multihost.status_of(run, [_info("running"), _info("failed", 5, 20)]).failed == run.parts[1]
    later = multihost.status_of(run, [_info("failed", 1, 10), _info("failed", 5, 20)])
    assert (later.failed, later.exit_code) == (run.parts[1], 5)


def test_records_get_fresh_ids_and_an_unknown_one_is_bad_input() -> None:
    first = multihost.new_run(("a", "b"), "x", None, "/p")
    second = multihost.new_run(("a", "b"), "y", "named", "/p")
    assert (first.id, second.id) == ("m-1", "m-2")
    second.parts.append(Part("a", "r-4", 0, "10.0.0.1:1"))
    multihost.save_run(second)
    assert multihost.load_run("m-2") == second
    with pytest.raises(UsageError, match="no multi-host run m-9"):
        multihost.load_run("m-9")
    with pytest.raises(UsageError, match="is not a multi-host run id"):
        multihost.load_run("r-9")


def test_log_lines_are_prefixed_whole() -> None:
    out = io.BytesIO()
    printer = _Prefixer(b"[a]  ", out)
    printer.feed(b"one\ntw")
    printer.feed(b"o\nthr")
    assert out.getvalue() == b"[a]  one\n[a]  two\n"
    printer.close()
    assert out.getvalue() == b"[a]  one\n[a]  two\n[a]  thr\n"
    assert _prefixes(_run(("a", "long"))) == {"a": b"[a]    ", "long": b"[long] "}


def test_pick_hosts() -> None:
    hosts = HostsConfig(None, {name: HostConfig(name) for name in ("a", "b", "c")})
    assert [h.name for h in multihost.pick_hosts("c, a", hosts)] == ["c", "a"]
    for spec, message in [
        ("a", "--hosts needs two or more hosts"),
        ("a,a", "--hosts names a more than once"),
        ("a,zz", 'unknown host "zz"'),
    ]:
        with pytest.raises(UsageError, match=message):
            multihost.pick_hosts(spec, hosts)
    with pytest.raises(UsageError, match="--host and --hosts do not go together"):
        multihost.pick_hosts("a,b", hosts, single="a")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--hosts", "a", "--", "true"], "gpubox: --hosts needs two or more hosts, comma-separated"),
        (["run", "--hosts", "a,nope", "--", "true"], 'gpubox: unknown host "nope"'),
        (
            ["run", "--host", "a", "--hosts", "a,b", "--", "true"],
            "gpubox: --host and --hosts do not go together",
        ),
        (["logs", "m-7"], "gpubox: no multi-host run m-7 on this machine"),
        (["stop", "m-7x"], "gpubox: 'm-7x' is not a multi-host run id"),
    ],
)
def test_bad_multi_host_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    # Hosts nothing answers on: every one of these must fail before connecting.
    (tmp_path / "hosts.toml").write_text(
        '[hosts.a]\nhostname = "192.0.2.10"\n\n[hosts.b]\nhostname = "192.0.2.11"\n'
    )
    line = assert_one_line_error(run_gpubox(*argv, cwd=tmp_path, timeout=30), 2)
    assert line.startswith(message), line


class _FakeLink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.alive = True
        self.closed = False

    def is_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        self.closed = True


def test_the_pool_keeps_one_session_per_host_and_reopens_a_dead_one(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[_FakeLink] = []

    def connect_host(host: HostConfig, project_name: str, **kwargs: Any) -> _FakeLink:
        assert (project_name, kwargs["probe"], kwargs["launch"]) == ("proj", False, False)
        opened.append(_FakeLink(host.name))
        return opened[-1]

    monkeypatch.setattr("gpubox.remote.session.connect_host", connect_host)
    given = _FakeLink("a")
    pool = SessionPool([HostConfig("a"), HostConfig("b")], "proj", sessions={"a": cast(Any, given)})
    get: Callable[[str], Any] = pool.get
    assert get("a") is given and opened == []
    first_b = get("b")
    assert get("b") is first_b and [link.name for link in opened] == ["b"]
    given.alive = False
    again = get("a")
    assert given.closed and again is not given and again.name == "a"
    pool.close()
    assert all(link.closed for link in opened)


def test_the_watcher_runs_as_a_module() -> None:
    """`run --hosts` leaves `python -m gpubox.train.multihost watch m-N` behind: the package must run."""
    done = subprocess.run(
        [sys.executable, "-m", "gpubox.train.multihost"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (2, "usage: python -m gpubox.train.multihost watch m-N\n")
