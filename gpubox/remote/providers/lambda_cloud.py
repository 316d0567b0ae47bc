"""Lambda Cloud's REST API (v1): instance types with prices and regions with capacity, launch, list, terminate.

Lambda asks clients to keep to about one request per second, and one launch per 12 seconds; gpubox paces
itself to that (per process) and backs off on 429 as well.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from gpubox.errors import ProviderError
from gpubox.remote.providers.base import Instance, InstancePhase, Offer
from gpubox.remote.providers.cloud import ApiClient, OfferQuery

if TYPE_CHECKING:
    import httpx

    from gpubox.config import HostConfig, ProviderSettings

_PHASES: dict[str, InstancePhase] = {
    "booting": "booting",
    "active": "running",
    "unhealthy": "running",
    "terminating": "stopping",
    "terminated": "terminated",
}


def _error_text(response: httpx.Response, body: Any) -> tuple[str | None, str]:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or "").rstrip(".")
        suggestion = str(error.get("suggestion") or "").strip()
        text = f"{message}; {suggestion[:1].lower()}{suggestion[1:]}" if suggestion else message
        return str(error.get("code") or "") or None, text or f"HTTP {response.status_code}"
    return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _gpu_words(description: str) -> tuple[str, float | None]:
    """ "A100 (40 GB SXM4)" → ("A100 SXM4", 40.0); "H100 (80 GB PCIe)" → ("H100 PCIe", 80.0)."""
    match = re.fullmatch(r"\s*(.*?)\s*\(\s*(\d+(?:\.\d+)?)\s*GB\s*(.*?)\s*\)\s*", description)
    if not match:
        return description.strip(), None
    model, memory, form = match.groups()
    return f"{model} {form}".strip(), float(memory)


class LambdaApi:
    name = "lambda"

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.client = ApiClient(settings, error_text=_error_text, pace={"default": 1.0, "launch": 12.0})

    # -- offers

    def _types(self) -> dict[str, Any]:
        body = self.client.call("GET", "/instance-types", what="listing instance types")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ProviderError(
                "lambda: listing instance types: unexpected answer (no data)", provider=self.name
            )
        return data

    def offers(self, query: OfferQuery) -> list[Offer]:
        offers = []
        for type_name, entry in self._types().items():
            kind = entry.get("instance_type") or {}
            specs = kind.get("specs") or {}
            count = int(specs.get("gpus") or 0)
            cents = kind.get("price_cents_per_hour")
            if count == 0 or not isinstance(cents, int | float):
                continue  # CPU-only machines are not what gpubox rents
            gpu, memory = _gpu_words(str(kind.get("gpu_description") or type_name))
            detail = f"{specs.get('vcpus', '?')} vCPU, {specs.get('memory_gib', '?')} GiB RAM"
            for region in entry.get("regions_with_capacity_available") or []:
                offer = Offer(
                    provider=self.name,
                    gpu=gpu,
                    gpu_count=count,
                    price_per_hour=round(cents / 100, 2),
                    region=str(region.get("name", "")),
                    offer_id=f"{type_name}@{region.get('name', '')}",
                    gpu_memory_gb=memory,
                    instance_type=str(kind.get("name") or type_name),
                    detail=detail,
                )
                if query.matches(offer):
                    offers.append(offer)
        return offers

    def describe_shortage(self, query: OfferQuery) -> str:
        """Why nothing matched, in Lambda's terms: the type exists but has no capacity, or no such type."""
        types = self._types()
        if query.instance_type:
            entry = types.get(query.instance_type)
            if entry is None:
                return f'lambda has no instance type "{query.instance_type}"'
            if not entry.get("regions_with_capacity_available"):
                return f"lambda has no capacity for {query.instance_type} in any region right now"
        return ""

    # -- instances

    def launch(self, host: HostConfig, offer: Offer, name: str) -> str:
        type_name, _, region = offer.offer_id.partition("@")
        body = {
            "region_name": region,
            "instance_type_name": type_name,
            "ssh_key_names": [host.ssh_key_name],
            "file_system_names": [],
            "quantity": 1,
            "name": name,
        }
        try:
            answer = self.client.call(
                "POST",
                "/instance-operations/launch",
                json=body,
                what=f"launching {type_name} in {region}",
                idempotent=False,
                pace="launch",
            )
        except ProviderError as exc:
            if exc.code == "instance-operations/launch/insufficient-capacity":
                raise ProviderError(
                    f"lambda has no capacity for {type_name} in {region} right now; "
                    "`gpubox offers --provider lambda` shows where there is",
                    provider=self.name,
                    code=exc.code,
                    status=exc.status,
                ) from None
            if exc.code == "global/quota-exceeded":
                raise ProviderError(
                    f"lambda refused the launch: your account's quota is used up ({exc}); terminate an instance "
                    "or ask Lambda to raise the quota",
                    provider=self.name,
                    code=exc.code,
                    status=exc.status,
                ) from None
            raise
        ids = (answer.get("data") or {}).get("instance_ids") if isinstance(answer, dict) else None
        if not ids:
            raise ProviderError("lambda: the launch answer named no instance", provider=self.name)
        return str(ids[0])

    def _instance(self, raw: dict[str, Any]) -> Instance:
        kind = raw.get("instance_type") or {}
        specs = kind.get("specs") or {}
        cents = kind.get("price_cents_per_hour")
        status = str(raw.get("status") or "")
        ip = raw.get("ip") or None
        gpu, _memory = _gpu_words(str(kind.get("gpu_description") or kind.get("name") or ""))
        return Instance(
            provider=self.name,
            instance_id=str(raw.get("id")),
            name=str(raw.get("name") or ""),
            phase=_PHASES.get(status, "unknown"),
            price_per_hour=round(cents / 100, 2) if isinstance(cents, int | float) else None,
            ssh_host=str(ip) if ip else None,
            ssh_port=22 if ip else None,
            gpu=gpu,
            gpu_count=int(specs.get("gpus") or 0),
            region=str((raw.get("region") or {}).get("name") or ""),
            status_text=status,
        )

    def instances(self) -> list[Instance]:
        body = self.client.call("GET", "/instances", what="listing instances")
        return [self._instance(raw) for raw in (body.get("data") or []) if isinstance(raw, dict)]

    def instance(self, instance_id: str) -> Instance | None:
        body = self.client.call(
            "GET", f"/instances/{instance_id}", what=f"asking about instance {instance_id}", missing_ok=True
        )
        if body is None:
            return None
        raw = body.get("data")
        return self._instance(raw) if isinstance(raw, dict) else None

    def terminate(self, instance_id: str) -> None:
        self.client.call(
            "POST",
            "/instance-operations/terminate",
            json={"instance_ids": [instance_id]},
            what=f"terminating instance {instance_id}",
            missing_ok=True,
        )
