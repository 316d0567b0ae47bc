"""RunPod's GraphQL API: GPU types with prices and stock, on-demand pods with SSH on a public port, terminate.

The key travels in the Authorization header (RunPod also takes it as a query parameter, which would put it in
every URL an error message or a proxy log shows).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gpubox.errors import ProviderError
from gpubox.remote.providers.base import Instance, InstancePhase, Offer
from gpubox.remote.providers.cloud import ApiClient, OfferQuery

if TYPE_CHECKING:
    import httpx

    from gpubox.config import HostConfig, ProviderSettings

DEFAULT_IMAGE = "runpod/base:0.6.2-cuda12.4.1"
DEFAULT_DISK_GB = 40
"""The pod's volume (``disk_gb``), where the project and its outputs live: kept while the pod is stopped."""
CONTAINER_DISK_GB = 20
"""The container disk: the system, the home folder, the project's Python environment; lost at every stop."""
VOLUME_PATH = "/workspace"

_OFFERS = """
query Offers($count: Int) {
  gpuTypes {
    id
    displayName
    memoryInGb
    secureCloud
    communityCloud
    securePrice
    communityPrice
    lowestPrice(input: {gpuCount: $count}) { uninterruptablePrice stockStatus }
  }
}
"""

_POD_FIELDS = """
fragment PodFields on Pod {
  id
  name
  costPerHr
  desiredStatus
  lastStatusChange
  gpuCount
  imageName
  runtime { uptimeInSeconds ports { ip isIpPublic privatePort publicPort type } }
  machine { gpuDisplayName }
}
"""

_PODS = "query Pods { myself { pods { ...PodFields } } }" + _POD_FIELDS
_POD = "query Pod($id: String!) { pod(input: {podId: $id}) { ...PodFields } }" + _POD_FIELDS
_DEPLOY = """
mutation Deploy($input: PodFindAndDeployOnDemandInput) {
  podFindAndDeployOnDemand(input: $input) { id costPerHr }
}
"""
_TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"
_RESUME = """
mutation Resume($input: PodResumeInput!) {
  podResume(input: $input) { id desiredStatus costPerHr }
}
"""

_NO_CAPACITY = "no longer any instances available"


def _error_text(response: httpx.Response, body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        if isinstance(first, dict):
            code = (first.get("extensions") or {}).get("code")
            return (str(code) if code else None), str(first.get("message") or "")
    return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()


class RunPodApi:
    name = "runpod"

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.client = ApiClient(settings, error_text=_error_text)

    def _graphql(
        self, query: str, variables: dict[str, Any] | None = None, *, what: str, idempotent: bool = True
    ) -> dict[str, Any]:
        body = self.client.call(
            "POST",
            "/graphql",
            json={"query": query, "variables": variables or {}},
            what=what,
            idempotent=idempotent,
        )
        if not isinstance(body, dict):
            raise ProviderError(f"runpod: {what}: unexpected answer", provider=self.name)
        errors = body.get("errors")
        if errors:
            first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
            message = self.client.redact(str(first.get("message") or "unknown error"))
            code = (first.get("extensions") or {}).get("code")
            raise ProviderError(f"runpod: {what}: {message}", provider=self.name, code=code)
        data = body.get("data")
        if not isinstance(data, dict):
            raise ProviderError(f"runpod: {what}: the answer held no data", provider=self.name)
        return data

    def offers(self, query: OfferQuery) -> list[Offer]:
        count = query.gpu_count or 1
        data = self._graphql(_OFFERS, {"count": count}, what="listing GPU types")
        offers = []
        for raw in data.get("gpuTypes") or []:
            if not isinstance(raw, dict):
                continue
            lowest = raw.get("lowestPrice") or {}
            stock = lowest.get("stockStatus")
            for cloud, price_key, flag in (
                ("secure", "securePrice", "secureCloud"),
                ("community", "communityPrice", "communityCloud"),
            ):
                if query.cloud_type not in (cloud, "all") or not raw.get(flag):
                    continue
                price = raw.get(price_key)
                if not isinstance(price, int | float) or price <= 0 or not stock:
                    continue
                offer = Offer(
                    provider=self.name,
                    gpu=str(raw.get("displayName") or raw.get("id")),
                    gpu_count=count,
                    price_per_hour=round(float(price) * count, 4),
                    region=f"{cloud} cloud",
                    offer_id=f"{raw.get('id')}@{cloud}",
                    gpu_memory_gb=float(raw["memoryInGb"])
                    if isinstance(raw.get("memoryInGb"), int | float)
                    else None,
                    instance_type=str(raw.get("id")),
                    detail=f"stock {str(stock).lower()}",
                )
                if query.matches(offer) or (
                    query.gpu and offer.instance_type == query.gpu and self._rest_matches(query, offer)
                ):
                    offers.append(offer)
        return offers

    @staticmethod
    def _rest_matches(query: OfferQuery, offer: Offer) -> bool:
        """The GPU asked for by RunPod's own type id ("NVIDIA GeForce RTX 4090"): the other filters still apply."""
        return OfferQuery(
            gpu_count=query.gpu_count,
            max_price=query.max_price,
            region=query.region,
            cloud_type=query.cloud_type,
        ).matches(offer)

    def launch(self, host: HostConfig, offer: Offer, name: str) -> str:
        gpu_type, _, cloud = offer.offer_id.rpartition("@")
        variables = {
            "input": {
                "name": name,
                "imageName": host.image or DEFAULT_IMAGE,
                "cloudType": cloud.upper() if cloud in ("secure", "community") else "ALL",
                "gpuTypeId": gpu_type,
                "gpuCount": offer.gpu_count,
                # The project goes on the volume (the spec's kept_folder): a stopped pod keeps only that.
                "containerDiskInGb": CONTAINER_DISK_GB,
                "volumeInGb": host.disk_gb or DEFAULT_DISK_GB,
                "volumeMountPath": VOLUME_PATH,
                "startSsh": True,
                "supportPublicIp": True,
                "ports": "22/tcp",
            }
        }
        try:
            data = self._graphql(_DEPLOY, variables, what=f"deploying a {offer.gpu} pod", idempotent=False)
        except ProviderError as exc:
            if _NO_CAPACITY in str(exc).lower():
                raise ProviderError(
                    f"runpod has no {offer.gpu_count}× {offer.gpu} available in its {cloud} cloud right now; "
                    "`gpubox offers --provider runpod` shows what is in stock",
                    provider=self.name,
                    code="capacity",
                ) from None
            raise
        pod = data.get("podFindAndDeployOnDemand")
        if not isinstance(pod, dict) or not pod.get("id"):
            raise ProviderError("runpod: the deploy answer named no pod", provider=self.name)
        return str(pod["id"])

    def _instance(self, raw: dict[str, Any]) -> Instance:
        desired = str(raw.get("desiredStatus") or "")
        runtime = raw.get("runtime") if isinstance(raw.get("runtime"), dict) else None
        phase: InstancePhase
        if desired == "RUNNING":
            phase = "running" if runtime else "booting"
        elif desired == "EXITED":
            phase = "stopped"
        elif desired == "TERMINATED":
            phase = "terminated"
        else:
            phase = "unknown"
        ssh_host = ssh_port = None
        started = None
        if runtime:
            for port in runtime.get("ports") or []:
                if isinstance(port, dict) and port.get("privatePort") == 22 and port.get("isIpPublic"):
                    ssh_host, ssh_port = port.get("ip"), port.get("publicPort")
                    break
            uptime = runtime.get("uptimeInSeconds")
            if isinstance(uptime, int | float):
                started = time.time() - uptime
        if phase == "running" and not (ssh_host and ssh_port):
            phase = "booting"  # up, but its public SSH port is not mapped yet
        cost = raw.get("costPerHr")
        stopped_at = _status_changed_at(raw.get("lastStatusChange")) if phase == "stopped" else None
        return Instance(
            provider=self.name,
            instance_id=str(raw.get("id")),
            name=str(raw.get("name") or ""),
            phase=phase,
            price_per_hour=float(cost) if isinstance(cost, int | float) else None,
            ssh_host=str(ssh_host) if ssh_host else None,
            ssh_port=int(ssh_port) if isinstance(ssh_port, int) else None,
            started_at=started,
            gpu=str((raw.get("machine") or {}).get("gpuDisplayName") or ""),
            gpu_count=int(raw.get("gpuCount") or 0),
            status_text=desired.lower(),
            stopped_at=stopped_at,
        )

    def instances(self) -> list[Instance]:
        data = self._graphql(_PODS, what="listing pods")
        pods = (data.get("myself") or {}).get("pods") or []
        return [self._instance(raw) for raw in pods if isinstance(raw, dict)]

    def instance(self, instance_id: str) -> Instance | None:
        try:
            data = self._graphql(_POD, {"id": instance_id}, what=f"asking about pod {instance_id}")
        except ProviderError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        raw = data.get("pod")
        return self._instance(raw) if isinstance(raw, dict) else None

    def resume(self, instance_id: str, gpu_count: int, name: str = "") -> None:
        """``podResume``: the pod starts again on the machine that holds its volume, if that machine has
        *gpu_count* GPUs free; otherwise RunPod says so and the pod stays stopped."""
        self._graphql(
            _RESUME,
            {"input": {"podId": instance_id, "gpuCount": max(1, gpu_count)}},
            what=f"starting pod {instance_id} again",
        )

    def terminate(self, instance_id: str) -> None:
        try:
            self._graphql(
                _TERMINATE, {"input": {"podId": instance_id}}, what=f"terminating pod {instance_id}"
            )
        except ProviderError as exc:
            if "not found" in str(exc).lower():
                return
            raise


def _status_changed_at(text: Any) -> float | None:
    """When a pod's status last changed, from its ``lastStatusChange`` ("Exited by User: Fri Dec 04 2026
    21:30:00 GMT+0000 (Coordinated Universal Time)", or with an RFC 2822 date); None when it cannot tell."""
    import re
    from datetime import datetime
    from email.utils import parsedate_to_datetime

    if not isinstance(text, str) or ": " not in text:
        return None
    when = re.sub(r"\s*\([^)]*\)\s*$", "", text.split(": ", 1)[1]).strip()
    try:
        return parsedate_to_datetime(when).timestamp()
    except (TypeError, ValueError):
        pass
    try:
        return datetime.strptime(when, "%a %b %d %Y %H:%M:%S GMT%z").timestamp()
    except ValueError:
        return None
