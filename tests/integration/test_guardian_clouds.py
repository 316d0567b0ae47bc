"""A rented host's guardian stops it through the cloud's API with the laptop gone, through the real CLI.

The host is a network namespace (its sshd on port 22, as RunPod's and vast's SSH ports are for gpubox) with two
wires to this machine: the laptop's (``eth0``), which the tests cut, and the host's own way to the cloud
(``eth1``), on which the fake cloud listens (tests/support/clouds, following each cloud's published API). The
cloud gives the instance its variables as it launches it (its id and its own key, in the sshd's ``SetEnv``), as
RunPod and vast give their containers theirs. Then `gpubox up` rents it, the laptop's gpubox is SIGKILLed and its
link taken down, and the guardian alone must stop the instance: after the idle window, after a busy run ends,
at max_hours, at the budget, with a stalled run; a laptop back mid-countdown takes the stop over (pulling the
outputs and terminating it) with no second stop. The ledger then agrees with the cloud's bill to the cent.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpubox.state import open_state, pid_alive
from tests.support.cli import run_gpubox
from tests.support.clouds import FakeCloud, FakeLambda, FakeRunPod, FakeVast
from tests.support.clouds.base import FakeInstance
from tests.support.hosthome import host_home
from tests.support.netns import NetnsHost, NetnsHostsFactory

pytestmark = [pytest.mark.integration, pytest.mark.netns]

WANTS = {
    "vast": 'gpu = "RTX 4090"\n',
    "runpod": 'gpu = "RTX 4090"\n',
    "lambda": 'instance_type = "gpu_1x_a100_sxm4"\nssh_key_name = "gpubox-test"\n',
}
FAKES: dict[str, type[FakeCloud]] = {"vast": FakeVast, "runpod": FakeRunPod, "lambda": FakeLambda}
KEY_VARIABLE = "GPUBOX_TEST_CLOUD_KEY"


@dataclass
class Rig:
    machine: NetnsHost
    cloud: FakeCloud
    project: Path
    env: dict[str, str]
    host: str
    outputs: list[str] = field(default_factory=list)

    def gpubox(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = run_gpubox(*args, cwd=self.project, env=self.env, timeout=timeout)
        self.outputs.append(done.stdout + done.stderr)
        return done

    def status(self) -> dict[str, Any]:
        done = self.gpubox("status", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        row: dict[str, Any] = next(h for h in json.loads(done.stdout)["hosts"] if h["name"] == self.host)
        return row

    def spent(self) -> float:
        done = self.gpubox("cost", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return float(next(h for h in json.loads(done.stdout)["hosts"] if h["name"] == self.host)["spent_usd"])

    def instance(self) -> FakeInstance:
        with self.cloud.lock:
            (found,) = [*self.cloud.instances.values(), *self.cloud.terminated.values()]
            return found

    def up(self, *args: str) -> int:
        done = self.gpubox(
            "up",
            self.host,
            "--yes",
            "--detach",
            "--no-services",
            "--no-sync",
            "--accept-new",
            *args,
            timeout=180,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return int(_wait(lambda: _holder(self.host), what="a gpubox holding the host"))

    def guardian(self) -> dict[str, Any]:
        try:
            found: dict[str, Any] = _wait(
                lambda: (g := self.status().get("guardian")) and g.get("running") and g.get("pid") and g,
                what="the guardian",
            )
        except AssertionError as exc:
            logs = sorted((Path(self.env["GPUBOX_HOME"]) / "state" / "logs").glob("up-*.log"))
            raise AssertionError(f"{exc}: {self.status()}; {[p.read_text()[-3000:] for p in logs]}") from None
        return found

    def leave(self, pid: int) -> float:
        """The laptop goes: its gpubox SIGKILLed, its link to the host cut. Returns when."""
        os.kill(pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(pid), what="the supervisor to die")
        self.machine.link_down()
        return time.time()

    def folder(self) -> Path:
        machine_id = (Path(self.env["GPUBOX_HOME"]) / "state" / "machine-id").read_text().strip()
        for config in (host_home() / ".gpubox" / "guardian").glob("*/config.json"):
            found = json.loads(config.read_text())
            if found.get("laptop") == machine_id and found.get("host") == self.host:
                return config.parent
        raise AssertionError("no guardian folder of this test on the host")

    def decisions(self) -> list[dict[str, Any]]:
        text = (self.folder() / "decisions.log").read_text()
        return [json.loads(line) for line in text.splitlines()]

    def stop_record(self) -> dict[str, Any]:
        path = self.folder() / "stopped.json"
        _wait(path.exists, what="the guardian's stop record")
        found: dict[str, Any] = json.loads(path.read_text())
        return found

    def assert_no_key_leaked(self) -> None:
        """The account's key: in nothing gpubox printed, in no file it wrote on this machine."""
        for text in self.outputs:
            assert self.cloud.api_key not in text
        for path in Path(self.env["GPUBOX_HOME"]).rglob("*"):
            if path.is_file():
                assert self.cloud.api_key.encode() not in path.read_bytes(), path


def _wait(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _holder(host: str) -> int | None:
    with open_state() as state:
        found = state.supervisor(host)
    return found.pid if found else None


@pytest.fixture
def rig_for(netns_hosts: NetnsHostsFactory, tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(provider: str, extra: str) -> Rig:
        (machine,) = netns_hosts(1)
        fake = FAKES[provider]
        cloud = fake(
            api_key=f"{provider}-account-key-0123456789",
            ssh_host=machine.ip,
            ssh_port=22,
            boot_seconds=0.5,
            listen=machine.uplink(),
        ).start()
        if provider == "vast":
            names = {"key": "CONTAINER_API_KEY", "id": "CONTAINER_ID"}
        elif provider == "runpod":
            names = {"key": "RUNPOD_API_KEY", "id": "RUNPOD_POD_ID"}
        else:
            names = {}  # a Lambda instance is told nothing about itself
        if names:
            cloud.on_launch = lambda instance: machine.server.set_env(
                {names["key"]: instance.key, names["id"]: str(instance.id)}
            )
        project = tmp_path / "project"
        project.mkdir()
        server = machine.server
        (project / "hosts.toml").write_text(
            f'[providers.{provider}]\napi_key_env = "{KEY_VARIABLE}"\napi_url = "{cloud.url}"\n\n'
            f'[hosts.box]\nprovider = "{provider}"\n{WANTS[provider]}user = "{server.user}"\n'
            f'identity_file = "{server.client_key}"\nremote_dir = "{tmp_path / "remote"}"\nlaunch_timeout = 30\n'
            f"{extra}"
        )
        rig = Rig(machine, cloud, project, dict(os.environ, **{KEY_VARIABLE: cloud.api_key}), "box")
        made.append(rig)
        return rig

    yield make
    for rig in made:
        with open_state() as state:
            held = state.supervisor(rig.host)
        if held is not None:
            os.kill(held.pid, signal.SIGKILL)
        rig.machine.server.set_env({})
        rig.cloud.stop()


def test_an_idle_pod_stops_itself_with_the_laptop_gone_and_the_ledger_agrees_to_the_cent(
    rig_for: Callable[..., Rig],
) -> None:
    rig = rig_for("runpod", "autostop_minutes = 0.2\n")  # a 12 s window
    pid = rig.up()
    # A short run keeps it busy while the laptop is still there (which would stop it itself).
    started = rig.gpubox("run", "--host", "box", "--no-sync", "--", "sleep", "15")
    assert started.returncode == 0, started.stdout + started.stderr
    guardian = rig.guardian()
    assert guardian["acts"] and guardian["action"] == "stop it through the runpod API (its disk kept)", (
        guardian
    )
    status_text = rig.gpubox("status").stdout
    assert "guardian  pid" in status_text, (status_text, rig.status())
    rig.leave(pid)

    stopped = _wait(lambda: rig.instance().stopped_at, timeout=60, what="the guardian to stop the pod")
    record = rig.stop_record()
    assert (record["reason"], record["by"]) == ("autostop", "guardian")
    assert record["done"] == f"stopped runpod pod {rig.instance().id} through its API (its volume kept)"
    (stop,) = rig.cloud.requests_for("stop")
    assert stop.scoped_to == rig.instance().id  # signed by the pod's own key, not the account's
    assert rig.cloud.requests_for("terminate") == []
    events = [d["event"] for d in rig.decisions()]
    assert events.index("laptop-gone") < events.index("stopped"), events
    idle_at = max(d["at"] for d in rig.decisions() if d["event"] == "idle" and d["at"] < record["at"])
    assert 12 <= record["at"] - idle_at < 12 + 15  # the window, then at most a look (and a loaded machine)
    assert stopped == pytest.approx(record["at"], abs=2)

    # The laptop comes back: the ledger bills until the pod stopped (RunPod's record says when), once.
    rig.machine.link_up()
    row = rig.status()
    assert row["instance"]["state"] == "stopped" and "was stopped at" in row["instance"]["detail"], row
    billed = rig.cloud.billed_dollars()
    first = rig.spent()
    assert abs(first - billed) < 0.01, (first, billed)
    rig.status()
    assert rig.spent() == first  # a second look changes nothing
    with open_state() as state:
        intervals = state.billing(rig.host)
    assert intervals[-1].ended_at == pytest.approx(int(stopped), abs=1.01), intervals
    rig.assert_no_key_leaked()


def test_a_busy_run_keeps_a_vast_instance_up_and_it_stops_once_the_run_ends(
    rig_for: Callable[..., Rig],
) -> None:
    rig = rig_for("vast", "autostop_minutes = 0.2\n")  # 12 s
    pid = rig.up()
    rig.guardian()
    started = rig.gpubox("run", "--host", "box", "--no-sync", "--", "sleep", "30")
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = re.search(r"\br-\d+\b", started.stdout + started.stderr).group(0)  # type: ignore[union-attr]
    _wait(lambda: "busy" in [d["event"] for d in rig.decisions()], what="the guardian to see the run")
    rig.leave(pid)
    time.sleep(14)  # longer than the window: the run keeps it up, laptop or not
    assert rig.instance().stopped_at is None and rig.cloud.requests_for("stop") == []
    _wait(lambda: rig.instance().stopped_at, timeout=60, what="the guardian to stop the instance")
    ended = float((host_home() / ".gpubox" / "runs" / run_id / "ended_at").read_text())
    record = rig.stop_record()
    assert ended + 12 <= record["at"] < ended + 12 + 15
    assert record["done"] == f"stopped vast instance {rig.instance().id} through its API (its disk kept)"
    (stop,) = rig.cloud.requests_for("stop")
    assert stop.body == {"state": "stopped"} and stop.scoped_to == rig.instance().id
    rig.machine.link_up()
    assert rig.status()["instance"]["state"] == "stopped"
    rig.assert_no_key_leaked()


def test_max_hours_stops_a_busy_instance_with_the_laptop_gone(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for("vast", "max_hours = 0.008\n")  # 28.8 s after up
    pid = rig.up()
    rig.guardian()
    started = rig.gpubox("run", "--host", "box", "--no-sync", "--", "sleep", "60")
    assert started.returncode == 0, started.stdout + started.stderr
    rig.leave(pid)
    _wait(lambda: rig.instance().stopped_at, timeout=60, what="the deadline")
    record = rig.stop_record()
    assert record["reason"] == "max_hours" and re.fullmatch(
        r"max_hours: box is 0:00:[23]\d old", record["why"]
    )
    rig.machine.link_up()


def test_the_budget_stops_an_instance_with_the_laptop_gone(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for("vast", "budget_usd = 0.003\n")
    pid = rig.up()
    guardian = rig.guardian()
    price = rig.instance().price_per_hour
    at = guardian["budget_stop_at"]
    assert at is not None, guardian
    rig.leave(pid)
    _wait(lambda: rig.instance().stopped_at, timeout=120, what="the budget's stop")
    record = rig.stop_record()
    assert record["reason"] == "budget" and record["why"].startswith("budget: "), record
    # Stopped when the budget ran out at this host's rate (within a look or two of it).
    assert rig.instance().cost() == pytest.approx(0.003, abs=price * 15 / 3600)
    rig.machine.link_up()


def test_a_stalled_run_is_not_activity_and_the_stop_says_so(rig_for: Callable[..., Rig]) -> None:
    rig = rig_for("runpod", "autostop_minutes = 0.2\nstall_minutes = 0.2\n")  # stalled 12 s after its line
    pid = rig.up()
    rig.guardian()
    started = rig.gpubox("run", "--host", "box", "--no-sync", "--", "sh", "-c", "echo loading; sleep 60")
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = re.search(r"\br-\d+\b", started.stdout + started.stderr).group(0)  # type: ignore[union-attr]
    rig.leave(pid)
    _wait(lambda: rig.instance().stopped_at, timeout=60, what="the stalled run's stop")
    record = rig.stop_record()
    assert re.fullmatch(
        rf"idle for 0:00:\d\d \(run {run_id} stalled since \d\d:\d\d:\d\d\)", record["why"]
    ), record
    rig.machine.link_up()


def test_a_laptop_back_mid_countdown_takes_the_stop_over_and_the_instance_stops_once(
    rig_for: Callable[..., Rig],
) -> None:
    rig = rig_for("vast", "autostop_minutes = 0.15\n")  # 9 s
    pid = rig.up()
    first = rig.guardian()
    rig.leave(pid)
    time.sleep(2)
    rig.machine.link_up()
    # Back mid countdown, in the foreground: it adopts the guardian, which leaves the stop to it, and it
    # terminates the instance after bringing the outputs home.
    process = subprocess.run(
        [sys.executable, "-m", "gpubox", "up", "box", "--no-tui", "--no-services", "--no-sync"],
        cwd=rig.project,
        env=rig.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = process.stdout + process.stderr
    assert process.returncode == 0, out
    assert f"guardian pid {first['pid']} adopted on box" in out, out
    assert "terminated vast instance" in out.splitlines()[-1], out
    assert rig.cloud.requests_for("stop") == [] and len(rig.cloud.requests_for("terminate")) == 1
    events = [d["event"] for d in rig.decisions()]
    assert "adopted" in events and "stopped" not in events, events


def test_lambda_with_self_stop_key_terminates_itself_with_the_users_key_placed_on_the_host(
    rig_for: Callable[..., Rig],
) -> None:
    rig = rig_for("lambda", 'autostop_minutes = 0.05\nself_stop = "key"\n')
    pid = rig.up()
    guardian = rig.guardian()
    assert guardian["action"] == "terminate it through the lambda API", guardian
    placed = rig.folder() / "api-key"
    assert placed.read_text() == rig.cloud.api_key and (placed.stat().st_mode & 0o777) == 0o600
    rig.leave(pid)
    _wait(lambda: rig.instance().terminated_at, timeout=60, what="the guardian to terminate the instance")
    record = rig.stop_record()
    assert record["done"] == f"terminated lambda instance {rig.instance().id} through its API"
    rig.machine.link_up()
    row = rig.status()
    assert row["instance"]["state"] == "stopped"
    # Lambda keeps no record of when: the ledger ends where the guardian's countdown, last seen by the laptop,
    # said it would stop it (the host was idle when the laptop left), which agrees with the bill to the cent.
    assert abs(rig.spent() - rig.cloud.billed_dollars()) < 0.01, (rig.spent(), rig.cloud.billed_dollars())
    with open_state() as state:
        last = state.billing(rig.host)[-1]
    assert last.end_reason and "guardian's countdown" in last.end_reason, last
    # The guardian's record of its stop comes within one look (1 s) of that time on a quiet machine; on a CI
    # machine at full load it came 5.2 s after it once, while the ledger above still agreed with the bill.
    assert last.ended_at == pytest.approx(record["at"], abs=8)
    rig.assert_no_key_leaked()


def test_a_stopped_instance_stays_known_up_starts_it_again_and_down_brings_its_outputs_home(
    rig_for: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = rig_for("vast", "autostop_minutes = 0.1\n")  # 6 s
    pid = rig.up()
    rig.guardian()
    (first,) = rig.cloud.requests_for("launch")
    rig.leave(pid)
    stopped = _wait(lambda: rig.instance().stopped_at, timeout=60, what="the guardian to stop the instance")
    # Written on the host after the laptop left: only the stopped instance's disk has it.
    outputs = tmp_path / "remote" / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    (outputs / "score.txt").write_text("0.91\n")
    rig.machine.link_up()

    row = rig.status()
    assert row["instance"]["state"] == "stopped", row
    assert "`gpubox up box` starts it again, `gpubox down box` terminates it" in row["instance"]["detail"], (
        row
    )
    # vast's API has no stop time: the guardian left its own in the instance's label, and the ledger closes
    # there (the cloud's bill to the cent) before the instance is ever started again or terminated.
    (note,) = rig.cloud.requests_for("label")
    assert note.scoped_to == rig.instance().id and " stopped@" in rig.instance().name
    assert (
        "was stopped at" in row["instance"]["detail"] and "does not say when" not in row["instance"]["detail"]
    )
    assert abs(rig.spent() - rig.cloud.billed_dollars()) < 0.01, (rig.spent(), rig.cloud.billed_dollars())
    # Terminating it would lose that output: `down` says how to choose, and terminates nothing.
    refused = rig.gpubox("down", "box", "--yes")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert (
        "is stopped with its disk kept" in line and "--no-pull" in line and "nothing was terminated" in line
    )
    assert rig.cloud.requests_for("terminate") == []

    # `up` starts the same instance again instead of renting another, its label back to gpubox's name, and the
    # ledger still agrees with the bill to the cent. (A longer window now: with the laptop there, an idle host
    # would be terminated by the laptop before `down` is run.)
    hosts_toml = rig.project / "hosts.toml"
    hosts_toml.write_text(hosts_toml.read_text().replace("autostop_minutes = 0.1", "autostop_minutes = 30"))
    rig.up()
    assert [r.operation for r in rig.cloud.requests_for("launch")] == [first.operation]
    (resume,) = rig.cloud.requests_for("resume")
    assert resume.body == {"state": "running"} and resume.scoped_to is None
    assert rig.instance().stopped_at is None and rig.instance().resumed_at is not None
    assert rig.instance().name == rig.cloud.requests_for("launch")[0].body["label"]
    assert "started vast instance" in rig.outputs[-1] and " again" in rig.outputs[-1], rig.outputs[-1]
    _wait(
        lambda: abs(rig.spent() - rig.cloud.billed_dollars()) < 0.01, what="the ledger to agree with the bill"
    )
    with open_state() as state:
        ends = [i.ended_at for i in state.billing(rig.host) if i.ended_at is not None]
    assert any(abs(end - stopped) < 2 for end in ends), (ends, stopped)

    done = rig.gpubox("down", "box", "--yes", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (rig.project / "outputs" / "score.txt").read_text() == "0.91\n"
    assert len(rig.cloud.requests_for("terminate")) == 1
    assert rig.instance().terminated_at is not None
    rig.assert_no_key_leaked()
