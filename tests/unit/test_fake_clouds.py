"""The fake Lambda, vast.ai and RunPod servers answer like the published APIs: talk to them with plain httpx."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.support.clouds import FakeLambda, FakeRunPod, FakeVast, make_offer
from tests.support.clouds.lambda_cloud import (
    INSUFFICIENT_CAPACITY,
    INVALID_API_KEY,
    NOT_FOUND,
    QUOTA_EXCEEDED,
)
from tests.support.clouds.runpod import NO_CAPACITY, QUOTA

KEY = "secret-key-123"
BOOT = 0.15


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# ===================================================================== Lambda


@pytest.fixture
def fake_lambda() -> Iterator[FakeLambda]:
    with FakeLambda(api_key=KEY, ssh_host="127.0.0.9", boot_seconds=BOOT) as cloud:
        yield cloud


@pytest.fixture
def lam(fake_lambda: FakeLambda) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_lambda.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def lambda_launch(client: httpx.Client, **overrides: Any) -> httpx.Response:
    body = {
        "region_name": "us-east-1",
        "instance_type_name": "gpu_1x_a10",
        "ssh_key_names": ["gpubox-test"],
        "name": "gpubox-1",
        **overrides,
    }
    return client.post("/instance-operations/launch", json=body)


def test_lambda_auth_bearer_basic_and_rejections(fake_lambda: FakeLambda) -> None:
    assert fake_lambda.url.endswith("/api/v1")
    url = f"{fake_lambda.url}/instances"
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).json() == {"data": []}
    assert httpx.get(url, auth=(KEY, "")).status_code == 200
    for kwargs in (
        {},
        {"headers": {"Authorization": "Bearer wrong"}},
        {"auth": ("wrong", "")},
        {"auth": (KEY, "x")},
    ):
        response = httpx.get(url, **kwargs)
        assert response.status_code == 401
        assert response.json() == {
            "error": {
                "code": "global/invalid-api-key",
                "message": "API key was invalid, expired, or deleted.",
                "suggestion": "Check your API key or create a new one, then try again.",
            }
        }
    assert response.json() == INVALID_API_KEY
    basic = fake_lambda.requests[1]
    assert basic.header("authorization") == "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    assert all(KEY not in r.path + r.query for r in fake_lambda.requests)


def test_lambda_instance_types(fake_lambda: FakeLambda, lam: httpx.Client) -> None:
    data = lam.get("/instance-types").json()["data"]
    a100 = data["gpu_1x_a100_sxm4"]
    assert a100["instance_type"] == {
        "name": "gpu_1x_a100_sxm4",
        "description": "1x A100 (40 GB SXM4)",
        "gpu_description": "A100 (40 GB SXM4)",
        "price_cents_per_hour": 129,
        "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 512, "gpus": 1},
    }
    assert {"name": "us-east-1", "description": "Virginia, USA"} in a100["regions_with_capacity_available"]
    assert data["gpu_8x_v100"]["instance_type"]["price_cents_per_hour"] == 440
    assert data["gpu_1x_h100_pcie"]["instance_type"]["gpu_description"] == "H100 (80 GB PCIe)"
    assert data["gpu_1x_h100_sxm5"]["regions_with_capacity_available"] == []
    fake_lambda.capacity_available = False
    data = lam.get("/instance-types").json()["data"]
    assert all(entry["regions_with_capacity_available"] == [] for entry in data.values())


def test_lambda_launch_boot_list_terminate(fake_lambda: FakeLambda, lam: httpx.Client) -> None:
    response = lambda_launch(lam)
    assert response.status_code == 200
    (instance_id,) = response.json()["data"]["instance_ids"]
    assert len(instance_id) == 32 and int(instance_id, 16) >= 0
    booting = lam.get(f"/instances/{instance_id}").json()["data"]
    assert booting["status"] == "booting" and booting["ip"] is None
    active = wait_for(
        lambda: (d := lam.get(f"/instances/{instance_id}").json()["data"])["status"] == "active" and d
    )
    assert active["ip"] == "127.0.0.9"
    assert active["name"] == "gpubox-1"
    assert active["region"] == {"name": "us-east-1", "description": "Virginia, USA"}
    assert active["instance_type"]["price_cents_per_hour"] == 75
    assert active["ssh_key_names"] == ["gpubox-test"] and active["file_system_names"] == []
    assert {"hostname", "jupyter_token", "jupyter_url", "private_ip"} <= active.keys()
    assert [i["id"] for i in lam.get("/instances").json()["data"]] == [instance_id]

    done = lam.post("/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert done.status_code == 200
    (terminated,) = done.json()["data"]["terminated_instances"]
    assert terminated["id"] == instance_id and terminated["status"] == "terminating"
    assert lam.get("/instances").json() == {"data": []}
    gone = lam.get(f"/instances/{instance_id}")
    assert gone.status_code == 404
    assert gone.json() == {
        "error": {"code": "global/object-does-not-exist", "message": "Specified instance does not exist."}
    }
    again = lam.post("/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert again.status_code == 404 and again.json() == NOT_FOUND
    assert [r.operation for r in fake_lambda.requests][:2] == ["launch", "get_instance"]
    assert fake_lambda.terminated[instance_id].terminated_at is not None


def test_lambda_launch_errors(fake_lambda: FakeLambda, lam: httpx.Client) -> None:
    bad_key = lambda_launch(lam, ssh_key_names=["laptop"])
    assert bad_key.status_code == 400
    assert bad_key.json()["error"]["code"] == "global/invalid-parameters"
    assert "laptop" in bad_key.json()["error"]["message"]
    two_keys = lambda_launch(lam, ssh_key_names=["gpubox-test", "gpubox-test"])
    assert two_keys.status_code == 400 and two_keys.json()["error"]["code"] == "global/invalid-parameters"
    assert lambda_launch(lam, instance_type_name="gpu_9x_nope").status_code == 400
    sold_out = lambda_launch(lam, instance_type_name="gpu_1x_h100_sxm5")
    assert sold_out.status_code == 400 and sold_out.json() == INSUFFICIENT_CAPACITY
    assert sold_out.json()["error"]["message"] == "Not enough capacity to fulfill launch request."
    fake_lambda.capacity_available = False
    assert lambda_launch(lam).json()["error"]["code"] == "instance-operations/launch/insufficient-capacity"
    fake_lambda.capacity_available = True
    fake_lambda.quota_exceeded = True
    quota = lambda_launch(lam)
    assert quota.status_code == 400 and quota.json() == QUOTA_EXCEEDED
    assert quota.json()["error"]["message"] == "Quota exceeded"
    assert fake_lambda.instances == {}


def test_lambda_fail_next_and_terminate_fails(fake_lambda: FakeLambda, lam: httpx.Client) -> None:
    fake_lambda.fail_next("list_types", 429, retry_after=2, count=2)
    for _ in range(2):
        limited = lam.get("/instance-types")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        assert limited.json() == {
            "error": {"code": "global/too-many-requests", "message": "Too many requests"}
        }
    assert lam.get("/instance-types").status_code == 200

    fake_lambda.fail_next("launch", 502, body="<html><body>502 Bad Gateway</body></html>")
    proxy = lambda_launch(lam)
    assert proxy.status_code == 502 and proxy.headers["content-type"].startswith("text/html")
    fake_lambda.fail_next("get_instance", 503)
    assert lam.get("/instances/abc").json() == {
        "error": {"code": "global/unknown", "message": "An unknown error occurred"}
    }

    instance_id = fake_lambda.add_instance(name="other-laptop", gpu="gpu_1x_h100_pcie", price_per_hour=2.49,
                                           started_at=time.time() - 3600)  # fmt: skip
    listed = lam.get(f"/instances/{instance_id}").json()["data"]
    assert listed["status"] == "active" and listed["instance_type"]["price_cents_per_hour"] == 249
    fake_lambda.terminate_fails = True
    failed = lam.post("/instance-operations/terminate", json={"instance_ids": [instance_id]})
    assert failed.status_code == 500
    assert failed.json() == {"error": {"code": "global/unknown", "message": "An unknown error occurred"}}
    assert lam.get(f"/instances/{instance_id}").json()["data"]["status"] == "active"
    assert fake_lambda.billed_dollars() == pytest.approx(2.49, rel=0.01)
    fake_lambda.set_status(instance_id, "unhealthy")
    assert lam.get("/instances").json()["data"][0]["status"] == "unhealthy"
    with pytest.raises(ValueError, match="unknown operation"):
        fake_lambda.fail_next("lunch", 500)


def test_lambda_rate_limits(lam: httpx.Client, fake_lambda: FakeLambda) -> None:
    fake_lambda.boot_seconds = 0
    fake_lambda.rate_limit_per_second = 4
    assert lam.get("/instances").status_code == 200
    limited = lam.get("/instances")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json()["error"]["code"] == "global/too-many-requests"
    time.sleep(0.26)
    assert lam.get("/instances").status_code == 200

    fake_lambda.rate_limit_per_second = None
    fake_lambda.launch_min_interval = 12
    assert lambda_launch(lam).status_code == 200
    too_soon = lambda_launch(lam)
    assert too_soon.status_code == 429 and too_soon.headers["Retry-After"] in {"11", "12"}
    assert len(fake_lambda.instances) == 1
    statuses = [r.status for r in fake_lambda.requests_for("launch")]
    assert statuses == [200, 429]


def test_lambda_ssh_keys(lam: httpx.Client) -> None:
    assert [k["name"] for k in lam.get("/ssh-keys").json()["data"]] == ["gpubox-test"]
    added = lam.post("/ssh-keys", json={"name": "laptop", "public_key": "ssh-ed25519 AAAA laptop"})
    assert added.json()["data"]["name"] == "laptop"
    assert lambda_launch(lam, ssh_key_names=["laptop"]).status_code == 200


# ===================================================================== vast.ai


@pytest.fixture
def fake_vast() -> Iterator[FakeVast]:
    with FakeVast(api_key=KEY, ssh_host="127.0.0.8", ssh_port=40022, boot_seconds=BOOT) as cloud:
        yield cloud


@pytest.fixture
def vast(fake_vast: FakeVast) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_vast.url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


BASE_QUERY = {
    "verified": {"eq": True},
    "external": {"eq": False},
    "rentable": {"eq": True},
    "rented": {"eq": False},
    "type": "on-demand",
}


def search(client: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    response = client.post("/api/v0/bundles/", json={**BASE_QUERY, **query})
    assert response.status_code == 200, response.text
    offers: list[dict[str, Any]] = response.json()["offers"]
    return offers


def test_vast_auth(fake_vast: FakeVast) -> None:
    url = f"{fake_vast.url}/api/v0/instances/"
    assert httpx.get(url, headers={"Authorization": f"Bearer {KEY}"}).json() == {"instances": []}
    assert httpx.get(url, params={"api_key": KEY}).status_code == 200
    for kwargs in ({}, {"params": {"api_key": "nope"}}, {"headers": {"Authorization": "Bearer nope"}}):
        response = httpx.get(url, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 401
        assert response.json() == {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"}


def test_vast_search_operators_order_limit(vast: httpx.Client) -> None:
    offers = search(
        vast, num_gpus={"eq": 1}, gpu_name={"eq": "RTX_4090"}, order=[["dph_total", "asc"]], limit=64
    )
    assert [o["dph_total"] for o in offers] == [0.4]  # the cheaper ones are unverified or external
    offer = offers[0]
    assert offer["gpu_name"] == "RTX 4090" and offer["ask_contract_id"] == offer["id"]
    assert offer["gpu_ram"] == 24564 and offer["compute_cap"] == 890 and offer["cuda_max_good"] == 12.8
    assert isinstance(offer["driver_version"], str) and 0 <= offer["reliability2"] <= 1
    assert {"dph_base", "min_bid", "gpu_total_ram", "geolocation", "hosting_type", "inet_down", "disk_space",
            "direct_port_count", "machine_id", "host_id"} <= offer.keys()  # fmt: skip

    everything = vast.post("/api/v0/bundles/", json={}).json()["offers"]
    assert len(everything) == 16
    assert {o["gpu_name"] for o in everything} >= {"RTX 3090", "A100 PCIE", "H100 SXM", "L40S", "RTX A6000"}
    old = next(o for o in everything if o["gpu_name"] == "GTX 1080 Ti")
    assert old["compute_cap"] == 610 and old["cuda_max_good"] == 11.4

    cheap = search(vast, dph_total={"lte": 0.5}, order=[["dph_total", "desc"]])
    assert [o["dph_total"] for o in cheap] == sorted((o["dph_total"] for o in cheap), reverse=True)
    assert all(o["dph_total"] <= 0.5 and o["verified"] and not o["external"] for o in cheap)
    assert {o["num_gpus"] for o in search(vast, num_gpus={"gte": 2, "lt": 8})} == {2, 4}
    assert {o["num_gpus"] for o in search(vast, num_gpus={"gt": 4})} == {8}
    picked = search(vast, gpu_name={"in": ["H100_SXM", "L40S"]}, num_gpus={"neq": 8})
    assert sorted(o["gpu_name"] for o in picked) == ["H100 SXM", "L40S"]
    assert all(o["gpu_name"] != "RTX 3090" for o in search(vast, gpu_name={"notin": ["RTX 3090"]}))
    assert all(o["compute_cap"] > 610 and o["hosting_type"] == 1 for o in search(vast, compute_cap={"gt": 610},
                                                                                   datacenter={"eq": True}))  # fmt: skip
    two = search(vast, order=[["num_gpus", "desc"], ["dph_total", "asc"]], limit=2)
    assert [(o["num_gpus"], o["dph_total"]) for o in two] == [(8, 16.0), (4, 1.6)]
    bad = vast.post("/api/v0/bundles/", json={"num_gpus": {"like": 1}})
    assert bad.status_code == 400 and bad.json()["success"] is False


def test_vast_rent_boot_show_destroy(fake_vast: FakeVast, vast: httpx.Client) -> None:
    offer_id = search(vast, gpu_name={"eq": "RTX 3090"}, num_gpus={"eq": 1})[0]["id"]
    body = {"client_id": "me", "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime", "env": {"-p 8080:8080": "1"},
            "price": None, "disk": 32.0, "label": "gpubox-a", "onstart": "touch /ok", "runtype": "ssh_direct"}  # fmt: skip
    created = vast.put(f"/api/v0/asks/{offer_id}/", json=body)
    assert created.status_code == 200
    assert created.json()["success"] is True
    instance_id = created.json()["new_contract"]
    assert isinstance(instance_id, int)
    assert all(o["id"] != offer_id for o in search(vast))
    again = vast.put(f"/api/v0/asks/{offer_id}/", json=body)
    assert again.status_code == 400
    assert again.json() == {
        "success": False,
        "error": "no_such_ask",
        "msg": "Instance type no longer available.",
    }

    loading = vast.get(f"/api/v0/instances/{instance_id}/").json()["instances"]
    assert (
        loading["actual_status"] == "loading" and loading["ssh_host"] is None and loading["ssh_port"] is None
    )
    running = wait_for(
        lambda: (
            (i := vast.get(f"/api/v0/instances/{instance_id}/").json()["instances"])["actual_status"]
            == "running"
            and i
        )
    )
    assert (running["ssh_host"], running["ssh_port"]) == ("127.0.0.8", 40022)
    assert (
        running["label"] == "gpubox-a" and running["dph_total"] == 0.25 and running["gpu_name"] == "RTX 3090"
    )
    assert running["image_uuid"] == body["image"] and running["intended_status"] == "running"
    assert isinstance(running["start_date"], float) and running["compute_cap"] == 860
    assert [i["id"] for i in vast.get("/api/v1/instances/").json()["instances"]] == [instance_id]

    fake_vast.set_status(instance_id, "exited")
    assert vast.get("/api/v0/instances/").json()["instances"][0]["actual_status"] == "exited"
    fake_vast.set_status(instance_id, None)

    fake_vast.terminate_fails = True
    failed = vast.delete(f"/api/v0/instances/{instance_id}/")
    assert failed.status_code == 500 and failed.json()["error"] == "server_error"
    assert instance_id in fake_vast.instances
    fake_vast.terminate_fails = False
    assert vast.delete(f"/api/v0/instances/{instance_id}/").json() == {"success": True}
    missing = vast.get(f"/api/v0/instances/{instance_id}/")
    assert missing.status_code == 404 and missing.json()["error"] == "no_such_instance"
    assert vast.delete(f"/api/v0/instances/{instance_id}/").status_code == 404
    assert any(o["id"] == offer_id for o in search(vast))  # the machine is free again


def test_vast_capacity_quota_and_fail_next(fake_vast: FakeVast, vast: httpx.Client) -> None:
    body = {"client_id": "me", "image": "ubuntu:22.04", "disk": 10}
    fake_vast.capacity_available = False
    assert vast.put("/api/v0/asks/5101011/", json=body).json()["error"] == "no_such_ask"
    assert vast.put("/api/v0/asks/999/", json=body).status_code == 400
    fake_vast.capacity_available = True
    fake_vast.quota_exceeded = True
    quota = vast.put("/api/v0/asks/5101011/", json=body)
    assert quota.status_code == 403
    assert quota.json() == {
        "success": False,
        "error": "insufficient_credit",
        "msg": "Your account lacks credit; see the billing page.",
    }
    fake_vast.quota_exceeded = False
    fake_vast.fail_next("launch", 429, retry_after=1)
    limited = vast.put("/api/v0/asks/5101011/", json=body)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json() == {
        "success": False,
        "error": "too_many_requests",
        "msg": "API requests too frequent",
    }
    assert vast.put("/api/v0/asks/5101011/", json=body).json()["success"] is True
    assert fake_vast.requests[-1].body["image"] == "ubuntu:22.04"


def test_vast_pagination_and_catalog(fake_vast: FakeVast, vast: httpx.Client) -> None:
    ids = [fake_vast.add_instance(name=f"box{n}", gpu="RTX 4090", price_per_hour=0.4) for n in range(5)]
    first = vast.get("/api/v1/instances/", params={"limit": 2}).json()
    assert [i["id"] for i in first["instances"]] == ids[:2] and first["next_token"]
    second = vast.get("/api/v1/instances/", params={"limit": 2, "after_token": first["next_token"]}).json()
    third = vast.get("/api/v1/instances/", params={"limit": 2, "after_token": second["next_token"]}).json()
    assert [i["id"] for i in second["instances"] + third["instances"]] == ids[2:]
    assert third["next_token"] is None
    assert len(vast.get("/api/v1/instances/").json()["instances"]) == 5
    assert vast.get("/api/v0/instances/").json()["instances"][0]["actual_status"] == "running"

    fake_vast.set_catalog(
        [make_offer(1, "RTX 4090", 1, 0.123), make_offer(2, "RTX 4090", 1, 0.5, rented=True)]
    )
    assert [o["dph_total"] for o in search(vast)] == [0.123]


# ===================================================================== RunPod


@pytest.fixture
def fake_runpod() -> Iterator[FakeRunPod]:
    with FakeRunPod(api_key=KEY, ssh_host="127.0.0.7", ssh_port=41022, boot_seconds=BOOT) as cloud:
        yield cloud


@pytest.fixture
def gql(fake_runpod: FakeRunPod) -> Iterator[Callable[..., httpx.Response]]:
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as client:

        def post(query: str, variables: dict[str, Any] | None = None, **extra: Any) -> httpx.Response:
            return client.post(
                fake_runpod.graphql_url, json={"query": query, "variables": variables, **extra}
            )

        yield post


PRICES = """
query Prices($id: String, $count: Int) {
  gpuTypes(input: {id: $id}) {
    id displayName memoryInGb securePrice communityPrice secureSpotPrice maxGpuCount
    one: lowestPrice(input: {gpuCount: 1}) { uninterruptablePrice minimumBidPrice stockStatus }
    many: lowestPrice(input: {gpuCount: $count}) { uninterruptablePrice stockStatus }
  }
}
"""

DEPLOY = """
mutation Deploy($input: PodFindAndDeployOnDemandInput) {
  podFindAndDeployOnDemand(input: $input) { id machineId costPerHr desiredStatus machine { podHostId } }
}
"""

PODS = """
fragment PodFields on Pod {
  id name costPerHr desiredStatus gpuCount imageName
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } gpus { id } }
  machine { gpuDisplayName }
}
query { myself { id pods { ...PodFields } } }
"""


def deploy_input(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "gpubox-r",
        "imageName": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        "cloudType": "SECURE",
        "gpuTypeId": "NVIDIA GeForce RTX 4090",
        "gpuCount": 1,
        "startSsh": True,
        "supportPublicIp": True,
        "ports": "22/tcp",
        "env": [{"key": "GPUBOX", "value": "1"}],
        **overrides,
    }


def test_runpod_auth(fake_runpod: FakeRunPod) -> None:
    query = {"query": "{ myself { id } }"}
    url = fake_runpod.graphql_url
    assert url == fake_runpod.url + "/graphql"
    assert httpx.post(url, json=query, headers={"Authorization": f"Bearer {KEY}"}).json()["data"]["myself"][
        "id"
    ]
    assert httpx.post(url, json=query, params={"api_key": KEY}).status_code == 200
    for kwargs in ({}, {"params": {"api_key": "nope"}}, {"headers": {"Authorization": "Bearer nope"}}):
        response = httpx.post(url, json=query, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 401
        assert response.json() == {"errors": [{"message": "Unauthorized"}]}


def test_runpod_gpu_types_variables_and_aliases(
    fake_runpod: FakeRunPod, gql: Callable[..., httpx.Response]
) -> None:
    response = gql(PRICES, {"id": "NVIDIA H100 80GB HBM3", "count": 8})
    assert response.status_code == 200 and "errors" not in response.json()
    (h100,) = response.json()["data"]["gpuTypes"]
    assert h100["displayName"] == "H100 SXM" and h100["memoryInGb"] == 80
    assert h100["securePrice"] == 2.69 and h100["communityPrice"] is None
    assert h100["one"] == {"uninterruptablePrice": 2.69, "minimumBidPrice": 1.75, "stockStatus": "High"}
    assert h100["many"] == {"uninterruptablePrice": 21.52, "stockStatus": "High"}
    everything = gql(PRICES, {"count": 2}).json()["data"]["gpuTypes"]
    assert {g["displayName"] for g in everything} >= {
        "RTX 4090",
        "A100 PCIe",
        "H100 PCIe",
        "L40S",
        "RTX A6000",
    }
    assert [g["one"]["stockStatus"] for g in everything if g["displayName"] == "RTX 3090"] == [None]
    fake_runpod.capacity_available = False
    assert all(g["one"]["stockStatus"] is None for g in gql(PRICES).json()["data"]["gpuTypes"])


def test_runpod_deploy_boot_list_terminate(
    fake_runpod: FakeRunPod, gql: Callable[..., httpx.Response]
) -> None:
    deployed = gql(DEPLOY, {"input": deploy_input(gpuCount=2)}).json()
    assert "errors" not in deployed
    pod = deployed["data"]["podFindAndDeployOnDemand"]
    assert pod["costPerHr"] == 1.18 and pod["desiredStatus"] == "RUNNING" and pod["machine"]["podHostId"]
    pod_id = pod["id"]

    booting = gql("query One($id: String!) { pod(input: {podId: $id}) { id runtime { uptimeInSeconds } } }",
                  {"id": pod_id}).json()  # fmt: skip
    assert booting["data"]["pod"] == {"id": pod_id, "runtime": None}

    def listed() -> dict[str, Any] | None:
        (only,) = gql(PODS).json()["data"]["myself"]["pods"]
        return only if only["runtime"] else None

    running = wait_for(listed)
    assert running["gpuCount"] == 2 and running["machine"]["gpuDisplayName"] == "RTX 4090"
    assert len(running["runtime"]["gpus"]) == 2
    ports = running["runtime"]["ports"]
    ssh = [p for p in ports if p["privatePort"] == 22 and p["isIpPublic"]]
    assert ssh == [
        {"ip": "127.0.0.7", "isIpPublic": True, "privatePort": 22, "publicPort": 41022, "type": "tcp"}
    ]
    assert any(p["privatePort"] == 8888 and not p["isIpPublic"] for p in ports)

    terminated = gql(f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}').json()
    assert terminated == {"data": {"podTerminate": None}}
    assert gql(PODS).json()["data"]["myself"]["pods"] == []
    assert gql(f'{{ pod(input: {{podId: "{pod_id}"}}) {{ id }} }}').json() == {"data": {"pod": None}}
    unknown = gql(f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}').json()
    assert unknown["errors"][0]["message"] == "Pod not found"
    assert unknown["errors"][0]["path"] == ["podTerminate"]
    assert [r.operation for r in fake_runpod.requests][:3] == ["launch", "get_instance", "list_instances"]


def test_runpod_errors(fake_runpod: FakeRunPod, gql: Callable[..., httpx.Response]) -> None:
    invalid = gql("{ myself { pods { id notAField } } }")
    assert invalid.status_code == 200
    assert invalid.json()["data"] is None
    assert "notAField" in invalid.json()["errors"][0]["message"]
    assert invalid.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert gql("{ myself { ").json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    missing_var = gql("query Q($id: String!) { pod(input: {podId: $id}) { id } }", {})
    assert missing_var.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"

    no_stock = gql(DEPLOY, {"input": deploy_input(gpuTypeId="NVIDIA GeForce RTX 3090")}).json()
    assert no_stock["data"] == {"podFindAndDeployOnDemand": None}
    assert no_stock["errors"][0]["message"] == NO_CAPACITY
    assert no_stock["errors"][0]["path"] == ["podFindAndDeployOnDemand"]
    old_cuda = gql(DEPLOY, {"input": deploy_input(allowedCudaVersions=["11.8"])}).json()
    assert old_cuda["errors"][0]["message"] == NO_CAPACITY
    secure_only = gql(DEPLOY, {"input": deploy_input(gpuTypeId="NVIDIA H200", cloudType="COMMUNITY")}).json()
    assert secure_only["errors"][0]["message"] == NO_CAPACITY
    fake_runpod.capacity_available = False
    assert gql(DEPLOY, {"input": deploy_input()}).json()["errors"][0]["message"] == NO_CAPACITY
    fake_runpod.capacity_available = True
    fake_runpod.quota_exceeded = True
    assert gql(DEPLOY, {"input": deploy_input()}).json()["errors"][0]["message"] == QUOTA
    assert fake_runpod.instances == {}


def test_runpod_fail_next_and_terminate_fails(
    fake_runpod: FakeRunPod, gql: Callable[..., httpx.Response]
) -> None:
    fake_runpod.fail_next("launch", 429, retry_after=3)
    assert gql(PRICES).status_code == 200  # other root fields are not affected
    limited = gql(DEPLOY, {"input": deploy_input()})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json() == {"errors": [{"message": "Too many requests"}]}
    pod_id = gql(DEPLOY, {"input": deploy_input()}).json()["data"]["podFindAndDeployOnDemand"]["id"]

    fake_runpod.fail_next("list_instances", 502)
    assert gql(PODS).status_code == 502
    assert gql(PODS).status_code == 200

    fake_runpod.terminate_fails = True
    failed = gql(f'mutation {{ podTerminate(input: {{podId: "{pod_id}"}}) }}')
    assert failed.status_code == 500 and "errors" in failed.json()
    assert pod_id in fake_runpod.instances

    other = fake_runpod.add_instance(name="elsewhere", gpu="L40S", price_per_hour=0.86)
    names = {p["name"]: p for p in gql(PODS).json()["data"]["myself"]["pods"]}
    assert names["elsewhere"]["id"] == other and names["elsewhere"]["costPerHr"] == 0.86
    assert names["elsewhere"]["runtime"] is not None
