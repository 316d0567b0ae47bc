"""vast.ai's API: a marketplace of offers (each a machine someone rents out, with its driver and CUDA), rented by
accepting an offer; instances listed (v1, paginated) and destroyed.

Offers say the machine's compute capability, driver version and highest CUDA, so gpubox can judge them fully
before renting.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from gpubox.errors import ProviderError
from gpubox.remote.providers.base import Instance, InstancePhase, Offer
from gpubox.remote.providers.cloud import ApiClient, OfferQuery
from gpubox.remote.providers.registry import STOPPED_MARK

if TYPE_CHECKING:
    import httpx

    from gpubox.config import HostConfig, ProviderSettings

DEFAULT_IMAGE = "nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"
DEFAULT_DISK_GB = 32
_SEARCH_LIMIT = 100
_BROAD_LIMIT = 1000
_MAX_PAGES = 40
# vast names GPUs by family, model and form factor ("RTX 4090", "A100 PCIE", "A100 SXM4"); what people type
# ("4090", "A100") means any of them.
_FAMILIES = ("", "RTX ", "GTX ", "Tesla ", "Quadro ", "RTX A")
_FORMS = ("", " PCIE", " SXM", " SXM4", " SXM5", " NVL", " 80GB", " 40GB", " Ti")

_PHASES: dict[str, InstancePhase] = {
    "running": "running",
    "loading": "booting",
    "created": "booting",
    "scheduling": "booting",
    "exited": "stopped",
    "stopped": "stopped",
    "offline": "unknown",
}


def _error_text(response: httpx.Response, body: Any) -> tuple[str | None, str]:
    if isinstance(body, dict):
        code = body.get("error")
        message = body.get("msg") or body.get("message") or body.get("error")
        if message:
            return (str(code) if code else None), str(message)
    return None, f"HTTP {response.status_code} {response.reason_phrase}".strip()


def _capability(value: Any) -> str | None:
    """vast's compute_cap is the capability times 100 (860 → "8.6")."""
    if isinstance(value, int | float) and value > 0:
        whole = int(value)
        return f"{whole // 100}.{(whole % 100) // 10}"
    return None


def _number_text(value: Any) -> str | None:
    if isinstance(value, int | float) and value > 0:
        return f"{value:g}"
    return None


class VastApi:
    name = "vast"

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.client = ApiClient(settings, error_text=_error_text, pace={"default": 0.2})

    def offers(self, query: OfferQuery) -> list[Offer]:
        search: dict[str, Any] = {
            "verified": {"eq": True},
            "external": {"eq": False},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "order": [["dph_total", "asc"]],
            "type": "on-demand",
            "limit": _SEARCH_LIMIT,
        }
        if query.gpu_count is not None:
            search["num_gpus"] = {"eq": query.gpu_count}
        if query.max_price is not None:
            search["dph_total"] = {"lte": query.max_price}
        if not query.gpu:
            return self._search(search, query)
        model = query.gpu.replace("_", " ").strip()
        names = {family + model + form for family in _FAMILIES for form in _FORMS}
        found = self._search(search | {"gpu_name": {"in": sorted(names | {model.upper()})}}, query)
        if found:
            return found
        # A name none of the usual spellings reach: look wider and match here.
        return self._search(search | {"limit": _BROAD_LIMIT}, query)

    def _search(self, search: dict[str, Any], query: OfferQuery) -> list[Offer]:
        body = self.client.call("POST", "/api/v0/bundles/", json=search, what="searching offers")
        raw_offers = body.get("offers") if isinstance(body, dict) else None
        if not isinstance(raw_offers, list):
            raise ProviderError(
                "vast: searching offers: unexpected answer (no offers list)", provider=self.name
            )
        offers = [self._offer(raw) for raw in raw_offers if isinstance(raw, dict)]
        return [offer for offer in offers if query.matches(offer)]

    def _offer(self, raw: dict[str, Any]) -> Offer:
        memory = raw.get("gpu_ram")
        reliability = raw.get("reliability2", raw.get("reliability"))
        detail = []
        if isinstance(reliability, int | float):
            detail.append(f"reliability {reliability * 100:.1f} %")
        if raw.get("inet_down"):
            detail.append(f"{raw['inet_down']:.0f} Mb/s down")
        return Offer(
            provider=self.name,
            gpu=str(raw.get("gpu_name") or "?"),
            gpu_count=int(raw.get("num_gpus") or 0),
            price_per_hour=float(raw.get("dph_total") or 0.0),
            region=str(raw.get("geolocation") or ""),
            offer_id=str(raw.get("id")),
            gpu_memory_gb=round(memory / 1024, 1) if isinstance(memory, int | float) else None,
            compute_capability=_capability(raw.get("compute_cap")),
            cuda_max=_number_text(raw.get("cuda_max_good")),
            driver_version=str(raw["driver_version"]) if raw.get("driver_version") else None,
            detail=", ".join(detail),
        )

    def launch(self, host: HostConfig, offer: Offer, name: str) -> str:
        body = {
            "client_id": "me",
            "image": host.image or DEFAULT_IMAGE,
            "disk": host.disk_gb or DEFAULT_DISK_GB,
            "label": name,
            "runtype": "ssh_direct",
            "price": None,
            "env": {},
        }
        try:
            answer = self.client.call(
                "PUT",
                f"/api/v0/asks/{offer.offer_id}/",
                json=body,
                what=f"renting offer {offer.offer_id}",
                idempotent=False,
            )
        except ProviderError as exc:
            if exc.code == "no_such_ask":
                raise ProviderError(
                    f"vast: offer {offer.offer_id} ({offer.gpu}) was taken before gpubox could rent it; "
                    "run `gpubox up` again to take the next cheapest",
                    provider=self.name,
                    code=exc.code,
                    status=exc.status,
                ) from None
            if exc.code == "insufficient_credit":
                raise ProviderError(
                    f"vast refused the rental: {exc}", provider=self.name, code=exc.code, status=exc.status
                ) from None
            raise
        if not isinstance(answer, dict) or not answer.get("success", False) or not answer.get("new_contract"):
            code, message = _error_text_from(answer)
            raise ProviderError(
                f"vast: renting offer {offer.offer_id}: {message}", provider=self.name, code=code
            )
        return str(answer["new_contract"])

    def _instance(self, raw: dict[str, Any]) -> Instance:
        status = str(raw.get("actual_status") or "loading")
        phase = _PHASES.get(status, "unknown")
        if raw.get("intended_status") == "stopped" and phase == "running":
            phase = "stopping"
        elif raw.get("intended_status") == "running" and phase == "stopped":
            phase = "booting"  # started again, its container not up yet
        port = raw.get("ssh_port")
        started = raw.get("start_date")
        name, stopped_at = _name_and_stop(str(raw.get("label") or ""))
        return Instance(
            provider=self.name,
            instance_id=str(raw.get("id")),
            name=name,
            phase=phase,
            stopped_at=stopped_at if phase == "stopped" else None,
            price_per_hour=float(raw["dph_total"]) if isinstance(raw.get("dph_total"), int | float) else None,
            ssh_host=str(raw["ssh_host"]) if raw.get("ssh_host") else None,
            ssh_port=int(port) if isinstance(port, int) else None,
            started_at=float(started) if isinstance(started, int | float) else None,
            gpu=str(raw.get("gpu_name") or ""),
            gpu_count=int(raw.get("num_gpus") or 0),
            region=str(raw.get("geolocation") or ""),
            status_text=status,
        )

    def instances(self) -> list[Instance]:
        found: list[Instance] = []
        params: dict[str, Any] = {}
        for _page in range(_MAX_PAGES):
            body = self.client.call(
                "GET", "/api/v1/instances/", params=params or None, what="listing instances"
            )
            found.extend(
                self._instance(raw) for raw in (body.get("instances") or []) if isinstance(raw, dict)
            )
            token = body.get("next_token")
            if not token:
                return found
            params = {"after_token": token}
        raise ProviderError(f"vast: listing instances: more than {_MAX_PAGES} pages", provider=self.name)

    def instance(self, instance_id: str) -> Instance | None:
        body = self.client.call(
            "GET",
            f"/api/v0/instances/{instance_id}/",
            what=f"asking about instance {instance_id}",
            missing_ok=True,
        )
        raw = body.get("instances") if isinstance(body, dict) else None
        return self._instance(raw) if isinstance(raw, dict) else None

    def resume(self, instance_id: str, gpu_count: int, name: str = "") -> None:
        """``vastai start instance``: the same call that stopped it, with ``"running"``. A machine whose GPUs were
        rented meanwhile keeps it ``scheduling`` until they are free again (``up``'s launch_timeout tells). Its
        label goes back to *name*, without the stop time its guardian left there."""
        answer = self.client.call(
            "PUT",
            f"/api/v0/instances/{instance_id}/",
            json={"state": "running"},
            what=f"starting instance {instance_id}",
        )
        if isinstance(answer, dict) and answer.get("success") is False:
            code, message = _error_text_from(answer)
            raise ProviderError(
                f"vast: starting instance {instance_id}: {message}", provider=self.name, code=code
            )
        if name:
            # Left in place, the old stop time would be read as the time of a later stop made in the console.
            with contextlib.suppress(ProviderError):
                self.client.call(
                    "PUT",
                    f"/api/v0/instances/{instance_id}/",
                    json={"label": name},
                    what=f"labelling instance {instance_id}",
                )

    def terminate(self, instance_id: str) -> None:
        answer = self.client.call(
            "DELETE",
            f"/api/v0/instances/{instance_id}/",
            what=f"destroying instance {instance_id}",
            missing_ok=True,
        )
        if isinstance(answer, dict) and answer.get("success") is False:
            _code, message = _error_text_from(answer)
            raise ProviderError(f"vast: destroying instance {instance_id}: {message}", provider=self.name)


def _name_and_stop(label: str) -> tuple[str, float | None]:
    """gpubox's name for an instance, and the stop time its guardian left beside it in the label, if any."""
    name, mark, at = label.rpartition(STOPPED_MARK)
    if not mark:
        return label, None
    try:
        return name, float(at)
    except ValueError:
        return label, None


def _error_text_from(answer: Any) -> tuple[str | None, str]:
    if isinstance(answer, dict):
        code = answer.get("error")
        return (str(code) if code else None), str(answer.get("msg") or code or "unexpected answer")
    return None, "unexpected answer"
