"""Renting hosts from Lambda, vast.ai and RunPod, through gpubox's command line, against local servers that
follow each provider's published API (tests/support/clouds) and whose instances' SSH endpoints are real sshds.

Lambda instances always listen on port 22, so its cycle uses a network-namespace host (root only); vast and
RunPod give a port, so theirs use the sshd fixture on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import assert_one_line_error, run_gpubox
from tests.support.clouds import FakeCloud, FakeLambda, FakeRunPod, FakeVast
from tests.support.sshd import SshServer

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).parents[2] / "examples" / "digits"
KEY_VARIABLE = {
    "lambda": "GPUBOX_TEST_LAMBDA_KEY",
    "vast": "GPUBOX_TEST_VAST_KEY",
    "runpod": "GPUBOX_TEST_RUNPOD_KEY",
}
WANTS = {
    "lambda": 'instance_type = "gpu_1x_a100_sxm4"\nssh_key_name = "gpubox-test"\n',
    "vast": 'gpu = "RTX 4090"\n',
    "runpod": 'gpu = "RTX 4090"\n',
}
FAKES: dict[str, type[FakeCloud]] = {"lambda": FakeLambda, "vast": FakeVast, "runpod": FakeRunPod}


@dataclass
class Rig:
    """A project folder with one rented host per provider, the fakes behind them, and the secrets in play."""

    project: Path
    env: dict[str, str]
    clouds: dict[str, FakeCloud]
    keys: dict[str, str]
    outputs: list[str]

    def gpubox(
        self, *args: str, timeout: float = 180, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = run_gpubox(*args, cwd=self.project, env=self.env, timeout=timeout, input=input)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def json(self, *args: str) -> dict:
        result = self.gpubox(*args, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def state_dir(self) -> Path:
        return Path(self.env["GPUBOX_HOME"])

    def assert_no_key_leaked(self) -> None:
        """The API keys appear in nothing gpubox printed and in no file it wrote (state, logs, known_hosts)."""
        for key in self.keys.values():
            for text in self.outputs:
                assert key not in text
            for path in self.state_dir().rglob("*"):
                if path.is_file():
                    assert key.encode() not in path.read_bytes(), path
            for path in self.project.rglob("*"):
                if path.is_file() and path.name != "hosts.toml":
                    assert key.encode() not in path.read_bytes(), path


def _hosts_toml(
    clouds: dict[str, FakeCloud], server_user: str, client_key: Path, remote: Path, extra: str = ""
) -> str:
    lines = []
    for name, cloud in clouds.items():
        lines.append(f'[providers.{name}]\napi_key_env = "{KEY_VARIABLE[name]}"\napi_url = "{cloud.url}"\n')
        lines.append(
            f'[hosts.{name}-box]\nprovider = "{name}"\n{WANTS[name]}user = "{server_user}"\n'
            f'identity_file = "{client_key}"\nremote_dir = "{remote / name}"\nlaunch_timeout = 30\n{extra}'
        )
    return "\n".join(lines)


def _rig(tmp_path: Path, clouds: dict[str, FakeCloud], server: SshServer, *, example: bool = False) -> Rig:
    project = tmp_path / "project"
    if example:
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("logs", "checkpoints"))
    else:
        project.mkdir()
        (project / "train.py").write_text("print('hello')\n")
    (project / "hosts.toml").write_text(
        _hosts_toml(clouds, server.user, server.client_key, tmp_path / "remote")
    )
    env = os.environ.copy()
    keys = {}
    for name, cloud in clouds.items():
        env[KEY_VARIABLE[name]] = cloud.api_key
        keys[name] = cloud.api_key
    return Rig(project, env, clouds, keys, [])


def _fake(name: str, server_host: str, server_port: int, **kwargs: object) -> FakeCloud:
    key = f"{name}-secret-{secrets.token_hex(12)}"
    return FAKES[name](
        api_key=key, ssh_host=server_host, ssh_port=server_port, boot_seconds=0.5, **kwargs
    ).start()


@pytest.fixture
def clouds(sshd: SshServer) -> Iterator[dict[str, FakeCloud]]:
    """vast and RunPod fakes whose instances are the sshd fixture."""
    made = {name: _fake(name, sshd.host, sshd.port) for name in ("vast", "runpod")}
    yield made
    for cloud in made.values():
        cloud.stop()


@pytest.fixture
def rig(tmp_path: Path, clouds: dict[str, FakeCloud], sshd: SshServer) -> Iterator[Rig]:
    rig = _rig(tmp_path, clouds, sshd)
    yield rig
    rig.assert_no_key_leaked()


# ----------------------------------------------------------------------------------------------- offers


def test_offers_from_every_provider_cheapest_first_with_verdicts(rig: Rig) -> None:
    document = rig.json("offers")
    offers = document["offers"]
    assert document["providers"] == ["vast", "runpod"]
    assert {o["provider"] for o in offers} == {"vast", "runpod"}
    prices = [o["price_per_hour"] for o in offers]
    assert prices == sorted(prices)
    assert document["framework"].startswith("TensorFlow ")
    by_gpu = {(o["provider"], o["gpu"], o["gpu_count"]): o for o in offers}
    # vast says the driver: the GTX 1080 Ti box runs an R470 driver, too old for TensorFlow 2.21's CUDA 12.
    old = by_gpu[("vast", "GTX 1080 Ti", 1)]
    assert old["verdict"] == "fail" and any("too old" in reason for reason in old["reasons"])
    good = by_gpu[("vast", "RTX 4090", 1)]
    assert good["verdict"] == "ok" and good["compute_capability"] == "8.9" and good["driver_version"]
    # RunPod does not say the driver: judged on the GPU's known compute capability, driver said unknown.
    pod = next(o for o in offers if o["provider"] == "runpod" and o["gpu"] == "RTX 4090")
    assert pod["verdict"] == "ok" and any("does not say the driver" in r for r in pod["reasons"])
    assert pod["host"] == "runpod-box"

    text = rig.gpubox("offers")
    assert text.returncode == 0, text.stderr
    header, first = text.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["PROVIDER", "GPU", "N"]
    assert f"${prices[0]:.2f}" in first


def test_offers_filters_by_gpu_price_provider_and_compatibility(rig: Rig) -> None:
    typed = rig.json("offers", "--gpu", "4090")["offers"]  # as people type it; vast says "RTX 4090"
    assert {(o["provider"], o["gpu"]) for o in typed} == {("vast", "RTX 4090"), ("runpod", "RTX 4090")}
    assert {o["host"] for o in typed if o["gpu_count"] == 1} == {"vast-box", "runpod-box"}
    assert {o["host"] for o in typed if o["gpu_count"] == 4} == {None}  # the hosts ask for one GPU
    a100 = rig.json("offers", "--gpu", "A100")["offers"]
    assert a100 and all("A100" in o["gpu"] for o in a100)
    assert {o["gpu"] for o in a100 if o["provider"] == "vast"} == {"A100 PCIE", "A100 SXM4"}
    cheap = rig.json("offers", "--max-price", "0.5")["offers"]
    assert cheap and all(o["price_per_hour"] <= 0.5 for o in cheap)
    only_vast = rig.json("offers", "--provider", "vast")
    assert only_vast["providers"] == ["vast"] and {o["provider"] for o in only_vast["offers"]} == {"vast"}
    compatible = rig.json("offers", "--compatible")["offers"]
    assert compatible and all(o["verdict"] in ("ok", "warn") for o in compatible)
    assert not any(o["gpu"] == "GTX 1080 Ti" for o in compatible)
    bad = rig.gpubox("offers", "--max-price", "-1")
    assert_one_line_error(bad, 2)


def test_a_slow_provider_is_reported_and_does_not_hold_up_the_others(rig: Rig) -> None:
    toml = rig.project / "hosts.toml"
    toml.write_text(
        toml.read_text().replace("[providers.runpod]\n", "[providers.runpod]\noffers_timeout = 1\n")
    )
    rig.clouds["runpod"].delay_next("offers", 20)
    document = rig.json("offers")
    assert {o["provider"] for o in document["offers"]} == {"vast"}
    assert document["problems"][0]["provider"] == "runpod"
    assert "no answer within 1 s" in document["problems"][0]["problem"]
    assert document["seconds"]["runpod"] <= 2


def test_a_bad_api_key_is_one_line_naming_the_variable(rig: Rig) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    rig.env[KEY_VARIABLE["vast"]] = wrong
    rig.keys["wrong"] = wrong  # a refused key is a secret too: never echoed
    result = rig.gpubox("offers", "--provider", "vast")
    line = assert_one_line_error(result, 3)
    assert "GPUBOX_TEST_VAST_KEY" in line and "401" in line
    assert_one_line_error(rig.gpubox("up", "vast-box", "--yes", "--no-tui"), 3)
    # With one provider refusing, the others still answer and the refusal is shown.
    mixed = rig.gpubox("offers")
    assert (
        mixed.returncode == 0 and "! vast: vast refused the API key in $GPUBOX_TEST_VAST_KEY" in mixed.stdout
    )


def test_a_missing_api_key_variable_is_bad_input(rig: Rig) -> None:
    del rig.env[KEY_VARIABLE["runpod"]]
    line = assert_one_line_error(rig.gpubox("offers", "--provider", "runpod"), 2)
    assert "GPUBOX_TEST_RUNPOD_KEY is not set" in line
    line = assert_one_line_error(rig.gpubox("up", "runpod-box", "--yes", "--no-tui"), 2)
    assert "GPUBOX_TEST_RUNPOD_KEY is not set" in line


def test_rate_limited_answers_are_retried_after_the_wait_they_ask_for(rig: Rig) -> None:
    vast = rig.clouds["vast"]
    vast.fail_next("offers", 429, count=2, retry_after=0.3)
    document = rig.json("offers", "--provider", "vast")
    assert document["offers"]
    attempts = vast.requests_for("offers")
    assert [r.status for r in attempts] == [429, 429, 200]
    assert attempts[2].time - attempts[1].time >= 0.29


# ------------------------------------------------------------------------------------- launch failures


def test_no_capacity_and_quota_are_clear_and_rent_nothing(rig: Rig) -> None:
    vast, runpod = rig.clouds["vast"], rig.clouds["runpod"]
    vast.capacity_available = False
    line = assert_one_line_error(rig.gpubox("up", "vast-box", "--yes", "--no-tui", "--no-services"), 1)
    assert "was taken before gpubox could rent it" in line
    # In stock when listed, gone by the time of the deploy (RunPod answers 200 with a GraphQL error).
    runpod.fail_next(
        "launch",
        200,
        body={
            "data": {"podFindAndDeployOnDemand": None},
            "errors": [
                {
                    "message": "There are no longer any instances available with the requested specifications. "
                    "Please refresh and try again.",
                    "path": ["podFindAndDeployOnDemand"],
                }
            ],
        },
    )
    line = assert_one_line_error(rig.gpubox("up", "runpod-box", "--yes", "--no-tui", "--no-services"), 1)
    assert "runpod has no 1× RTX 4090 available in its secure cloud right now" in line
    runpod.capacity_available = False
    line = assert_one_line_error(rig.gpubox("up", "runpod-box", "--yes", "--no-tui", "--no-services"), 1)
    assert "runpod has nothing matching runpod-box (1× RTX 4090) right now" in line
    vast.capacity_available = True
    vast.quota_exceeded = True
    line = assert_one_line_error(rig.gpubox("up", "vast-box", "--yes", "--no-tui", "--no-services"), 1)
    assert "vast refused the rental" in line and "credit" in line
    assert not vast.instances and not runpod.instances
    status = rig.json("status")
    assert status["orphans"] == [] and all(not h["billing_now"] for h in status["hosts"])


def test_renting_asks_first_and_refuses_without_a_terminal_or_yes(rig: Rig) -> None:
    result = rig.gpubox("up", "vast-box", "--no-tui", "--no-services")
    line = assert_one_line_error(result, 2)
    assert "rent vast" in line and "/h for vast-box" in line and "--yes" in line
    assert not rig.clouds["vast"].instances


def test_ssh_never_answering_times_out_with_the_instance_still_recorded_as_billing(
    tmp_path: Path, sshd: SshServer
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    vast = _fake("vast", "127.0.0.1", closed_port)
    try:
        rig = _rig(tmp_path, {"vast": vast}, sshd)
        toml = rig.project / "hosts.toml"
        toml.write_text(toml.read_text().replace("launch_timeout = 30", "launch_timeout = 3"))
        result = rig.gpubox("up", "vast-box", "--yes", "--no-tui", "--no-services")
        line = assert_one_line_error(result, 3)
        assert "did not answer SSH within 3 s" in line and "still running and billing" in line
        assert "launched vast instance" in result.stdout
        (instance_id,) = vast.instances
        status = rig.json("status")
        row = next(h for h in status["hosts"] if h["name"] == "vast-box")
        assert row["billing_now"] and row["instance"]["state"] == "running"
        assert str(instance_id) in row["instance"]["detail"]
        assert status["orphans"][0]["instance_id"] == str(instance_id)  # billing, and nobody holds it
        table = rig.gpubox("hosts").stdout
        assert "  billing, not held  " in next(
            line for line in table.splitlines() if line.startswith("vast-box")
        )
        # Terminating is asked about first, always; without a terminal it needs --yes, and nothing is done.
        asked = assert_one_line_error(rig.gpubox("down", "vast-box"), 2)
        assert asked == (
            "gpubox: terminate vast-box (its vast instance and everything on its disk): asking needs a "
            "terminal; pass --yes to go ahead"
        )
        assert vast.instances
        down = rig.gpubox("down", "vast-box", "--yes")
        assert down.returncode == 0, down.stdout + down.stderr
        assert f"terminated vast instance {instance_id}" in down.stdout
        assert not vast.instances
        status = rig.json("status")
        assert not next(h for h in status["hosts"] if h["name"] == "vast-box")["billing_now"]
        rig.assert_no_key_leaked()
    finally:
        vast.stop()


def test_a_failed_terminate_is_loud_and_the_instance_stays_billing(rig: Rig) -> None:
    vast = rig.clouds["vast"]
    up = rig.gpubox(
        "up", "vast-box", "--yes", "--no-tui", "--detach", "--no-services", "--no-sync", "--accept-new"
    )
    assert up.returncode == 0, up.stdout + up.stderr
    vast.terminate_fails = True
    failed = rig.gpubox("down", "vast-box", "--yes", "--no-pull")
    line = assert_one_line_error(failed, 1)
    assert "could not terminate vast instance" in line and "IT IS STILL RUNNING AND BILLING" in line
    assert len(vast.instances) == 1
    row = next(h for h in rig.json("hosts")["hosts"] if h["name"] == "vast-box")
    assert row["billing_now"]
    vast.terminate_fails = False
    again = rig.gpubox("down", "vast-box", "--yes", "--no-pull")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not vast.instances


# ------------------------------------------------------------------------------------------- orphans


def test_orphans_are_found_after_the_local_state_is_lost_and_terminated_after_asking(rig: Rig) -> None:
    vast, runpod = rig.clouds["vast"], rig.clouds["runpod"]
    for name in ("vast-box", "runpod-box"):
        up = rig.gpubox(
            "up", name, "--yes", "--no-tui", "--detach", "--no-services", "--no-sync", "--accept-new"
        )
        assert up.returncode == 0, up.stdout + up.stderr
    # Somebody else's instance in the same account is none of gpubox's business.
    other = vast.add_instance(name="my-own-notebook", gpu="RTX 3090", price_per_hour=0.25)
    held = rig.json("status")
    assert held["orphans"] == []  # both are held up by a gpubox process
    # The laptop loses gpubox's state (the holders die with it), and the pod is stopped meanwhile (its guardian,
    # the console): only its disk bills, but recorded nowhere it would bill unseen for ever.
    for line in rig.gpubox("status").stdout.splitlines():
        if "held by gpubox pid" in line:
            os.kill(int(line.split("pid ")[1].split()[0]), 9)
    shutil.rmtree(rig.state_dir() / "state")
    (pod,) = runpod.instances
    runpod.stop_instance(pod)
    status = rig.gpubox("status")
    assert status.returncode == 0, status.stderr
    orphan_lines = [line for line in status.stdout.splitlines() if "held by no gpubox" in line]
    assert len(orphan_lines) == 2, status.stdout
    assert any("! billing" in line and "vast instance" in line and "$0.40/h" in line for line in orphan_lines)
    assert any(
        "! its disk billing" in line and "runpod instance" in line and "stopped with its disk kept" in line
        for line in orphan_lines
    ), orphan_lines
    assert all("gpubox-" in line for line in orphan_lines)
    listed = rig.json("hosts")["orphans"]
    assert {(o["provider"], o["host"], o["recorded"], o["stopped"]) for o in listed} == {
        ("vast", "vast-box", False, False),
        ("runpod", "runpod-box", False, True),
    }
    refused = rig.gpubox("down", "--orphans")
    assert_one_line_error(refused, 2)
    assert len(vast.instances) == 2 and len(runpod.instances) == 1
    done = rig.gpubox("down", "--orphans", "--yes")
    assert "the 1 stopped one(s) with their disks" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(vast.instances) == [other] and not runpod.instances
    assert rig.json("status")["orphans"] == []


# ------------------------------------------------------------------------------------ the whole cycle


def _cycle(rig: Rig, host: str, cloud: FakeCloud) -> None:
    """up (rent, wait, pin the key, sync) → run the digits example → down (pull, terminate, end billing)."""
    up = rig.gpubox("up", host, "--yes", "--no-tui", "--detach", "--no-services", "--accept-new", timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "launched" in up.stdout and "SSH answers on" in up.stdout and "✓ sync" in up.stdout
    (instance_id,) = cloud.instances
    cloud_price = rig.json("hosts")["hosts"][0]["price_per_hour"]
    assert cloud_price and cloud_price > 0
    status = rig.json("status")
    row = next(h for h in status["hosts"] if h["name"] == host)
    assert row["up"] and row["billing_now"] and row["price_source"].startswith(f"live price from {host[:-4]}")
    assert str(instance_id) in row["instance"]["detail"]
    run = rig.gpubox("run", "--host", host, "-f", "--", "python", "train.py", "--epochs", "1", timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "final " in run.stdout
    down = rig.gpubox("down", host, "--yes", timeout=300)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "pulled outputs" in down.stdout and f"terminated {host[:-4]} instance {instance_id}" in down.stdout
    assert (rig.project / "checkpoints" / "digits.keras").is_file()
    assert not cloud.instances
    cost = rig.json("cost")
    spent = next(h for h in cost["hosts"] if h["name"] == host)
    assert spent["spent_usd"] > 0 and abs(spent["spent_usd"] - spent["hours"] * cloud_price) < 0.001
    row = next(h for h in rig.json("hosts")["hosts"] if h["name"] == host)
    assert not row["billing_now"]


def test_vast_up_run_down(tmp_path: Path, clouds: dict[str, FakeCloud], sshd: SshServer) -> None:
    rig = _rig(tmp_path, {"vast": clouds["vast"]}, sshd, example=True)
    _cycle(rig, "vast-box", clouds["vast"])
    rig.assert_no_key_leaked()


def test_runpod_up_run_down(tmp_path: Path, clouds: dict[str, FakeCloud], sshd: SshServer) -> None:
    rig = _rig(tmp_path, {"runpod": clouds["runpod"]}, sshd, example=True)
    _cycle(rig, "runpod-box", clouds["runpod"])
    # The pod's files live on its volume, the part of a pod that a stop keeps (the project's folder goes there
    # unless remote_dir says otherwise).
    (launch,) = clouds["runpod"].requests_for("launch")
    deployed = launch.body["variables"]["input"]  # type: ignore[index]
    assert deployed["volumeInGb"] == 40 and deployed["volumeMountPath"] == "/workspace", deployed
    assert deployed["containerDiskInGb"] < deployed["volumeInGb"]
    rig.assert_no_key_leaked()


@pytest.mark.netns
def test_lambda_up_run_down_on_a_namespace_host_at_port_22(tmp_path: Path, netns_hosts) -> None:  # type: ignore[no-untyped-def]
    (machine,) = netns_hosts(1)
    lambda_cloud = _fake("lambda", machine.ip, 22)
    try:
        rig = _rig(tmp_path, {"lambda": lambda_cloud}, machine.server, example=True)
        _cycle(rig, "lambda-box", lambda_cloud)
        launches = lambda_cloud.requests_for("launch")
        assert launches[0].body["ssh_key_names"] == ["gpubox-test"]
        assert launches[0].body["name"].startswith("gpubox-lambda-box-")
        rig.assert_no_key_leaked()
    finally:
        lambda_cloud.stop()


# ------------------------------------------------------------------------------- autostop and pacing


def test_an_idle_rented_host_is_terminated_by_autostop_after_its_outputs_come_home(rig: Rig) -> None:
    import time

    vast = rig.clouds["vast"]
    toml = rig.project / "hosts.toml"
    toml.write_text(
        toml.read_text().replace("[hosts.vast-box]\n", "[hosts.vast-box]\nautostop_minutes = 0.05\n")
    )
    write_output = (
        "run",
        "--host",
        "vast-box",
        "-f",
        "--",
        "sh",
        "-c",
        "mkdir -p outputs && echo 42 > outputs/answer.txt",
    )
    made = rig.gpubox(*write_output)
    # `run` on a host with no instance says how to rent one, and rents nothing.
    assert_one_line_error(made, 2)
    assert "`gpubox up vast-box` rents one" in made.stderr and not vast.instances
    up = rig.gpubox("up", "vast-box", "--yes", "--no-tui", "--detach", "--no-services", "--accept-new")
    assert up.returncode == 0, up.stdout + up.stderr
    made = rig.gpubox(*write_output)
    assert made.returncode == 0, made.stdout + made.stderr
    deadline = time.monotonic() + 60
    while vast.instances and time.monotonic() < deadline:
        time.sleep(0.25)
    if vast.instances:
        row = next(h for h in rig.json("status")["hosts"] if h["name"] == "vast-box")
        raise AssertionError(f"autostop did not terminate the idle instance: {row['autostop']}")
    assert (rig.project / "outputs" / "answer.txt").read_text() == "42\n"
    (log_path,) = (rig.state_dir() / "state" / "logs").glob("up-vast-box-*.log")  # one per host and project
    # The instance leaves the cloud's list as its terminate is answered, a moment before the line is written.
    deadline = time.monotonic() + 30
    while "terminated vast instance" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = log_path.read_text()
    assert "pulled outputs" in log and "terminated vast instance" in log, log
    row = next(h for h in rig.json("hosts")["hosts"] if h["name"] == "vast-box")
    assert not row["billing_now"] and not row["up"]


def test_lambda_requests_keep_to_one_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lambda documents about one request per second per client: gpubox paces itself rather than leaning on 429s."""
    from gpubox.config import ProviderSettings
    from gpubox.remote.providers import cloud_api
    from gpubox.remote.providers.cloud import OfferQuery

    with FakeLambda(api_key="pace-key", boot_seconds=0) as cloud:
        monkeypatch.setenv("GPUBOX_TEST_PACE_KEY", "pace-key")
        api = cloud_api(
            ProviderSettings(name="lambda", api_key_env="GPUBOX_TEST_PACE_KEY", api_url=cloud.url)
        )
        for _ in range(3):
            api.offers(OfferQuery())
        api.instances()
        times = [r.time for r in cloud.requests]
    assert len(times) == 4
    assert all(later - earlier >= 0.98 for earlier, later in itertools.pairwise(times))


def test_orphans_are_found_across_pages_of_instances(rig: Rig) -> None:
    vast = rig.clouds["vast"]
    vast.page_size = 2
    ids = {str(vast.add_instance(name=f"gpubox-vast-box-{i:06x}", price_per_hour=0.4)) for i in range(5)}
    vast.add_instance(name="not-ours", price_per_hour=0.4)
    orphans = rig.json("hosts")["orphans"]
    assert {o["instance_id"] for o in orphans} == ids
    assert len(vast.requests_for("list_instances")) == 3  # 6 instances, 2 a page


def test_lambda_capacity_and_quota_errors_say_what_to_do(tmp_path: Path, sshd: SshServer) -> None:
    lambda_cloud = _fake("lambda", "127.0.0.1", 22)
    try:
        rig = _rig(tmp_path, {"lambda": lambda_cloud}, sshd)
        up = ("up", "lambda-box", "--yes", "--no-tui", "--no-services")
        # Capacity when listed, none at launch: Lambda's own error code, in words.
        lambda_cloud.fail_next(
            "launch",
            400,
            body={
                "error": {
                    "code": "instance-operations/launch/insufficient-capacity",
                    "message": "Not enough capacity to fulfill launch request.",
                }
            },
        )
        line = assert_one_line_error(rig.gpubox(*up), 1)
        assert "lambda has no capacity for gpu_1x_a100_sxm4 in " in line and "gpubox offers" in line
        lambda_cloud.quota_exceeded = True
        line = assert_one_line_error(rig.gpubox(*up), 1)
        assert "lambda refused the launch: your account's quota is used up" in line
        lambda_cloud.quota_exceeded = False
        lambda_cloud.capacity_available = False
        line = assert_one_line_error(rig.gpubox(*up), 1)
        assert "lambda has no capacity for gpu_1x_a100_sxm4 in any region right now" in line
        assert not lambda_cloud.instances
        rig.assert_no_key_leaked()
    finally:
        lambda_cloud.stop()


def test_a_stopped_pod_stays_recorded_until_up_starts_it_again_or_down_terminates_it(rig: Rig) -> None:
    """A pod stopped while no gpubox held it (its guardian, or the RunPod console): `status` says so, `up`
    starts that pod again (or says plainly why it cannot, renting nothing), and `down` asks for --no-pull before
    terminating a disk that may hold outputs never pulled."""
    cloud = rig.clouds["runpod"]
    up = ("up", "runpod-box", "--yes", "--no-tui", "--detach", "--no-services", "--no-sync", "--accept-new")

    def stop_it_and_let_go() -> str:
        done = rig.gpubox("down", "runpod-box", "--keep-instance", "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        (pod,) = cloud.instances.values()
        cloud.stop_instance(pod.id)
        return str(pod.id)

    assert rig.gpubox(*up).returncode == 0
    pod_id = stop_it_and_let_go()
    pin = rig.state_dir() / "state" / "instances" / f"runpod-{pod_id}.known_hosts"
    assert pin.exists()
    host = next(h for h in rig.json("status")["hosts"] if h["name"] == "runpod-box")
    assert host["instance"]["state"] == "stopped", host
    assert "`gpubox up runpod-box` starts it again" in host["instance"]["detail"], host
    assert host["billing_now"] is False, host  # its GPU no longer bills (its disk does, at RunPod's rate)

    cloud.resume_capacity = False
    line = assert_one_line_error(rig.gpubox(*up), 1)
    assert f"could not start instance {pod_id} of runpod-box again" in line and "not enough free GPUs" in line
    assert "--no-pull" in line and len(cloud.requests_for("launch")) == 1, line

    cloud.resume_capacity = True
    started = rig.gpubox(*up)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"started runpod instance {pod_id} of runpod-box again" in started.stdout + started.stderr
    assert len(cloud.requests_for("resume")) == 2  # the refused start, then this one
    assert len(cloud.requests_for("launch")) == 1 and list(cloud.instances) == [pod_id]
    host = next(h for h in rig.json("status")["hosts"] if h["name"] == "runpod-box")
    assert host["instance"]["state"] == "running", host

    stop_it_and_let_go()
    line = assert_one_line_error(rig.gpubox("down", "runpod-box", "--yes"), 1)
    assert "stopped with its disk kept" in line and "nothing was terminated" in line, line
    assert cloud.requests_for("terminate") == []
    done = rig.gpubox("down", "runpod-box", "--no-pull", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert cloud.instances == {} and len(cloud.requests_for("terminate")) == 1
