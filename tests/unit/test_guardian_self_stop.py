"""A rented host's guardian stops its instance through the cloud's API, as the agent sends it (host.py's
``_provider_stop``, the plan from gpubox.actions.guardian), against the fake clouds: with the key the cloud gives
the instance (vast's CONTAINER_API_KEY, RunPod's pod RUNPOD_API_KEY), which acts on that instance alone, or with
the user's own key placed on the host (self_stop = "key", Lambda). Never another instance than gpubox's record."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpubox.actions.guardian import guardian_can_act, provider_stop_plan, self_stop_mode
from gpubox.config import load_hosts
from gpubox.remote.agent import host as agent
from tests.support.clouds import FakeCloud, FakeLambda, FakeRunPod, FakeVast

WANTS = {
    "lambda": 'instance_type = "gpu_1x_a100_sxm4"\nssh_key_name = "k"\n',
    "vast": 'gpu = "RTX 4090"\n',
    "runpod": 'gpu = "RTX 4090"\n',
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("CONTAINER_API_KEY", "CONTAINER_ID", "RUNPOD_API_KEY", "RUNPOD_POD_ID"):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def _host(tmp_path: Path, cloud: FakeCloud, extra: str = ""):  # type: ignore[no-untyped-def]
    name = cloud.PROVIDER
    (tmp_path / "hosts.toml").write_text(
        f'[providers.{name}]\napi_url = "{cloud.url}"\napi_key_env = "GPUBOX_TEST_KEY"\n'
        f'[hosts.box]\nprovider = "{name}"\n{WANTS[name]}{extra}'
    )
    return load_hosts(tmp_path).get("box")


@pytest.mark.parametrize("fake", [FakeVast, FakeRunPod], ids=["vast", "runpod"])
def test_an_instance_stops_itself_with_its_own_key_and_only_itself(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, fake: type[FakeCloud]
) -> None:
    with fake(api_key="account-key") as cloud:
        mine, other = cloud.add_instance(), cloud.add_instance()  # type: ignore[attr-defined]
        host = _host(tmp_path, cloud)
        assert self_stop_mode(host) == "instance" and guardian_can_act(host)
        plan = provider_stop_plan(host, str(mine))
        assert "account-key" not in repr(plan)
        id_env, key_env = plan["id_env"], plan["key_env"]

        # Without the key the cloud gives the instance: refused, and nothing sent.
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert not ok and f"${key_env}" in text and not cloud.requests_for("stop")

        # The key of another instance: the cloud refuses it for this one.
        clean_env.setenv(key_env, cloud.instance_key(other))
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert not ok and "refused the stop" in text and cloud.instance_key(other) not in text
        assert cloud.instances[mine].stopped_at is None

        # The cloud says this is another instance than gpubox recorded: never stop that one.
        clean_env.setenv(key_env, cloud.instance_key(mine))
        clean_env.setenv(id_env, str(other))
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert not ok and f"not {mine}" in text

        clean_env.setenv(id_env, str(mine))
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert ok, text
        assert text == plan["done"].replace("{id}", str(mine))
        assert cloud.instances[mine].stopped_at is not None and cloud.instances[other].stopped_at is None
        stop = cloud.requests_for("stop")[-1]
        assert stop.scoped_to == cloud._coerce_id(mine)  # signed by the instance's own key
        # gpubox's own client reads the stop from the cloud's record: no longer billing.
        seen = host.spec.api(host.provider_settings())
        os.environ["GPUBOX_TEST_KEY"] = "account-key"
        try:
            found = seen.instance(str(mine))
        finally:
            del os.environ["GPUBOX_TEST_KEY"]
        assert found is not None and found.phase == "stopped" and not found.billing


def test_the_instance_key_may_not_do_anything_else(tmp_path: Path) -> None:
    with FakeVast(api_key="account-key") as vast:
        mine = vast.add_instance()
        import httpx

        listing = httpx.get(
            f"{vast.url}/api/v1/instances/", headers={"Authorization": f"Bearer {vast.instance_key(mine)}"}
        )
        assert listing.status_code == 403
        gone = httpx.delete(
            f"{vast.url}/api/v0/instances/{mine}/",
            headers={"Authorization": f"Bearer {vast.instance_key(mine)}"},
        )
        assert gone.status_code == 403 and mine in vast.instances


def test_lambda_needs_the_users_key_placed_on_the_host_and_terminates(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    with FakeLambda(api_key="account-key") as cloud:
        mine = cloud.add_instance()
        host = _host(tmp_path, cloud)
        assert self_stop_mode(host) is None and not guardian_can_act(host)  # `up` asks first
        assert not guardian_can_act(_host(tmp_path, cloud, 'self_stop = "off"\n'))
        host = _host(tmp_path, cloud, 'self_stop = "key"\n')
        assert guardian_can_act(host)
        plan = provider_stop_plan(host, str(mine))
        assert plan["key_file"] and not plan["keeps_disk"] and "account-key" not in repr(plan)
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert not ok and 'self_stop = "key"' in text

        agent._write_secret(str(tmp_path / "api-key"), "account-key")
        assert stat.S_IMODE((tmp_path / "api-key").stat().st_mode) == 0o600
        ok, text = agent._provider_stop(plan, str(tmp_path))
        assert ok, text
        assert mine not in cloud.instances and text == f"terminated lambda instance {mine} through its API"


@pytest.mark.parametrize("refused", [False, True], ids=["noted", "note-refused"])
def test_a_vast_guardian_leaves_its_stop_time_in_the_label_and_up_takes_it_back(
    tmp_path: Path, clean_env: pytest.MonkeyPatch, refused: bool
) -> None:
    with FakeVast(api_key="account-key") as cloud:
        name = "gpubox-box-0a1b2c"
        mine = cloud.add_instance(name=name)
        cloud.label_refused = refused
        host = _host(tmp_path, cloud)
        plan = provider_stop_plan(host, str(mine), name)
        clean_env.setenv("CONTAINER_API_KEY", cloud.instance_key(mine))
        ok, text = agent._provider_stop(plan, str(tmp_path), 1_765_000_000.25)
        assert ok, text
        assert cloud.instances[mine].stopped_at is not None  # stopped whether or not the note was taken
        (note,) = cloud.requests_for("label")
        assert note.scoped_to == mine and cloud.requests_for("stop")[-1].scoped_to == mine

        clean_env.setenv("GPUBOX_TEST_KEY", "account-key")
        api = host.spec.api(host.provider_settings())
        found = api.instance(str(mine))
        assert found is not None and found.phase == "stopped" and found.name == name
        if refused:
            assert found.stopped_at is None
            assert text.endswith("so the ledger counts until a gpubox last held it") and "HTTP 403" in text
            return
        assert text == f"stopped vast instance {mine} through its API (its disk kept)"
        assert cloud.instances[mine].name == f"{name} stopped@1765000000.25"
        assert found.stopped_at == 1_765_000_000.25

        api.resume(str(mine), 1, name)  # type: ignore[attr-defined]
        assert cloud.instances[mine].name == name
        again = api.instance(str(mine))
        assert again is not None and again.stopped_at is None and again.name == name
