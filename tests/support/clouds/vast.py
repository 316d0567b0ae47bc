"""A fake vast.ai API (https://console.vast.ai) on 127.0.0.1.

Routes: ``POST /api/v0/bundles/`` (offer search), ``PUT /api/v0/asks/{offer_id}/`` (rent an offer),
``GET /api/v1/instances/`` (paginated list), ``GET /api/v0/instances/`` (old list),
``GET /api/v0/instances/{id}/``, ``DELETE /api/v0/instances/{id}/``, ``PUT /api/v0/instances/{id}/`` with
``{"state": "stopped"}`` (stop, the disk kept) or ``"running"``, or with ``{"label": ...}`` (``vastai label
instance``). A trailing slash is optional.
Auth: ``Authorization: Bearer <key>`` or ``?api_key=<key>``: the account's key, or an instance's own
``CONTAINER_API_KEY`` (:meth:`FakeCloud.instance_key`), which may only show, stop or label that instance (else
403). vast does not document what an instance's key may do beyond stopping it: ``label_refused`` makes every
label request fail, for the guardian's way without it.
Errors are ``{"success": false, "error", "msg"}``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from functools import partial
from operator import itemgetter
from typing import Any, ClassVar

from tests.support.clouds.base import FakeCloud, FakeInstance, RecordedRequest, Response, Route

#: GPU facts used to fill offers: gpu_name -> (gpu_ram MB, compute_cap, total_flops per GPU).
GPU_FACTS: dict[str, tuple[int, int, float]] = {
    "GTX 1080 Ti": (11264, 610, 11.3),
    "Tesla V100": (16384, 700, 15.7),
    "RTX 3090": (24576, 860, 35.6),
    "RTX A6000": (49140, 860, 38.7),
    "A40": (46068, 860, 37.4),
    "RTX 4090": (24564, 890, 82.6),
    "L40S": (46068, 890, 91.6),
    "RTX 6000Ada": (49140, 890, 91.1),
    "A100 PCIE": (81920, 800, 19.5),
    "A100 SXM4": (40960, 800, 19.5),
    "H100 SXM": (81559, 900, 66.9),
    "H100 NVL": (95830, 900, 60.0),
    "H200": (143771, 900, 66.9),
    "RTX 5090": (32607, 1200, 104.8),
}

#: Search keys that are not offer filters.
RESERVED_KEYS = {
    "order",
    "type",
    "limit",
    "allocated_storage",
    "disable_bundling",
    "extra_ids",
    "select_cols",
}
#: Query field aliases, as the vast CLI has them.
FIELD_ALIASES = {"dph": "dph_total", "cuda_vers": "cuda_max_good", "datacenter": "hosting_type"}


def make_offer(
    offer_id: int,
    gpu_name: str,
    num_gpus: int,
    dph_total: float,
    *,
    geolocation: str = "Sweden, SE",
    driver_version: str = "550.54.14",
    cuda_max_good: float = 12.4,
    reliability: float = 0.995,
    verified: bool = True,
    datacenter: bool = False,
    external: bool = False,
    rented: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A complete offer dict with realistic fields; ``extra`` overrides or adds any field."""
    gpu_ram, compute_cap, flops = GPU_FACTS.get(gpu_name, (24576, 860, 30.0))
    storage_cost = 0.1  # $/GB-month, billed on top of dph_base
    offer: dict[str, Any] = {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "bundle_id": offer_id + 7_000_000,
        "dph_total": dph_total,
        "dph_base": round(dph_total - 0.005 * num_gpus, 4),
        "min_bid": round(dph_total * 0.45, 4),
        "storage_cost": storage_cost,
        "inet_up_cost": 0.002,
        "inet_down_cost": 0.002,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram,
        "gpu_total_ram": gpu_ram * num_gpus,
        "gpu_frac": 1.0,
        "gpu_display_active": False,
        "compute_cap": compute_cap,
        "total_flops": round(flops * num_gpus, 1),
        "dlperf": round(flops * num_gpus * 0.9, 1),
        "cuda_max_good": cuda_max_good,
        "driver_version": driver_version,
        "reliability": reliability,
        "reliability2": reliability,
        "geolocation": geolocation,
        "hosting_type": 1 if datacenter else 0,
        "inet_down": 900.0 if datacenter else 450.0,
        "inet_up": 800.0 if datacenter else 300.0,
        "disk_space": 500.0 * num_gpus,
        "disk_bw": 2000.0,
        "cpu_cores": 16 * num_gpus,
        "cpu_cores_effective": 16.0 * num_gpus,
        "cpu_ram": 64000 * num_gpus,
        "cpu_name": "AMD EPYC 7763 64-Core Processor"
        if datacenter
        else "AMD Ryzen 9 5950X 16-Core Processor",
        "pci_gen": 4.0,
        "direct_port_count": 100,
        "public_ipaddr": f"203.0.113.{offer_id % 250 + 1}",
        "static_ip": datacenter,
        "machine_id": 10000 + offer_id % 90000,
        "host_id": 100000 + offer_id % 900000,
        "verified": verified,
        "rentable": not rented,
        "rented": rented,
        "external": external,
        "duration": 2_592_000.0,
        "start_date": None,
        "end_date": None,
        "os_version": "22.04",
        "score": round(flops * num_gpus / max(dph_total, 0.01), 2),
    }
    offer.update(extra)
    return offer


def default_vast_catalog() -> list[dict[str, Any]]:
    """Offers at the reference's median prices (§5.3), plus cheaper/riskier and old-GPU ones."""
    o = make_offer
    return [
        o(5101001, "RTX 3090", 1, 0.25, geolocation="Sweden, SE"),
        o(5101002, "RTX 3090", 2, 0.5, geolocation="Poland, PL", reliability=0.982),
        o(
            5101003,
            "RTX 4090",
            1,
            0.4,
            geolocation="Texas, US",
            driver_version="570.124.04",
            cuda_max_good=12.8,
        ),
        o(5101004, "RTX 4090", 1, 0.33, geolocation="Czechia, CZ", reliability=0.91, verified=False),
        o(
            5101005,
            "RTX 4090",
            4,
            1.6,
            geolocation="Quebec, CA",
            driver_version="565.57.01",
            cuda_max_good=12.7,
        ),
        o(
            5101006,
            "RTX A6000",
            2,
            0.91,
            geolocation="Ohio, US",
            driver_version="535.183.01",
            cuda_max_good=12.2,
        ),
        o(5101007, "A100 PCIE", 1, 0.87, geolocation="Oregon, US", datacenter=True),
        o(5101008, "A100 SXM4", 1, 0.76, geolocation="Norway, NO", datacenter=True, gpu_ram=40960),
        o(
            5101009,
            "H100 SXM",
            1,
            1.93,
            geolocation="Iceland, IS",
            datacenter=True,
            driver_version="570.124.06",
            cuda_max_good=12.8,
        ),
        o(
            5101010,
            "H100 SXM",
            8,
            16.0,
            geolocation="Virginia, US",
            datacenter=True,
            driver_version="570.124.06",
            cuda_max_good=12.8,
        ),
        o(5101011, "L40S", 1, 0.6, geolocation="Netherlands, NL", datacenter=True),
        o(
            5101012,
            "GTX 1080 Ti",
            1,
            0.1,
            geolocation="Bulgaria, BG",
            driver_version="470.256.02",
            cuda_max_good=11.4,
            reliability=0.95,
        ),
        o(
            5101013,
            "Tesla V100",
            2,
            0.43,
            geolocation="Germany, DE",
            datacenter=True,
            driver_version="535.183.01",
            cuda_max_good=12.2,
        ),
        o(
            5101014,
            "RTX 5090",
            1,
            0.51,
            geolocation="California, US",
            driver_version="575.57.08",
            cuda_max_good=12.9,
        ),
        o(5101015, "H200", 1, 2.82, geolocation="Finland, FI", datacenter=True, driver_version="570.124.06"),
        o(5101016, "RTX 4090", 1, 0.29, geolocation="Romania, RO", external=True),
    ]


def vast_error(error: str, msg: str) -> dict[str, Any]:
    return {"success": False, "error": error, "msg": msg}


INVALID_KEY = vast_error("invalid_user_key", "Invalid user key")
NO_SUCH_ASK = vast_error("no_such_ask", "Instance type no longer available.")
INSUFFICIENT_CREDIT = vast_error("insufficient_credit", "Your account lacks credit; see the billing page.")
TOO_MANY_REQUESTS = vast_error("too_many_requests", "API requests too frequent")


def _norm(value: Any) -> Any:
    return value.replace("_", " ") if isinstance(value, str) else value


def _compare(op: str, have: Any, want: Any) -> bool:
    try:
        if op == "eq":
            return bool(_norm(have) == _norm(want))
        if op == "neq":
            return bool(_norm(have) != _norm(want))
        if op in ("in", "notin"):
            found = _norm(have) in [_norm(w) for w in want]
            return found if op == "in" else not found
        if have is None or want is None:
            return False
        if op == "gt":
            return bool(have > want)
        if op == "gte":
            return bool(have >= want)
        if op == "lt":
            return bool(have < want)
        if op == "lte":
            return bool(have <= want)
    except TypeError:
        return False
    raise ValueError(op)


def _matches(field_name: str, op: str, want: Any, offer: dict[str, Any]) -> bool:
    return _compare(op, offer.get(field_name), want)


class FakeVast(FakeCloud):
    """Fake vast.ai. ``url`` is ``http://127.0.0.1:PORT``; the SSH endpoint reported is
    (``ssh_host``, ``ssh_port``; default port 22).

    Extra constructor parameters: ``catalog`` (offer dicts, see :func:`make_offer`; default
    :func:`default_vast_catalog`), ``page_size`` (v1 instance list default page size, 25).
    Renting an offer marks it rented, so it leaves search results until the instance is destroyed.
    Instance ids are ints; :meth:`add_instance` returns one.
    """

    PROVIDER: ClassVar[str] = "vast"

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        catalog: list[dict[str, Any]] | None = None,
        page_size: int = 25,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key, **kwargs)
        self.offers: dict[int, dict[str, Any]] = {}
        self.set_catalog(default_vast_catalog() if catalog is None else catalog)
        self.page_size = page_size
        self.label_refused = False
        """True: every ``vastai label instance`` request is refused (what the guardian does without one)."""
        self._next_id = 21_000_000 + secrets.randbelow(1_000_000)

    def set_catalog(self, offers: list[dict[str, Any]]) -> None:
        with self.lock:
            self.offers = {int(o["id"]): dict(o) for o in offers}

    def _coerce_id(self, instance_id: Any) -> Any:
        return int(instance_id)

    def add_instance(
        self,
        *,
        name: str | None = None,
        gpu: str = "RTX 4090",
        price_per_hour: float | None = None,
        started_at: float | None = None,
        num_gpus: int = 1,
        image: str = "pytorch/pytorch:latest",
        booting: bool = False,
    ) -> int:
        """Create an instance as if rented earlier (``name`` is vast's ``label``, ``gpu`` its ``gpu_name``,
        ``price_per_hour`` its ``dph_total``; default: the cheapest catalog offer for that GPU, else $0.50
        per GPU). Returns the instance id."""
        with self.lock:
            like = sorted(
                (o for o in self.offers.values() if o["gpu_name"] == gpu and o["num_gpus"] == num_gpus),
                key=lambda o: o["dph_total"],
            )
            offer = dict(like[0]) if like else make_offer(0, gpu, num_gpus, 0.5 * num_gpus)
            if price_per_hour is not None:
                offer["dph_total"] = price_per_hour
            return int(self._create(offer, name, image, 10.0, None, started_at, booting).id)

    # ----------------------------------------------------------------- internals

    def _create(
        self,
        offer: dict[str, Any],
        label: str | None,
        image: str,
        disk: float,
        onstart: str | None,
        started_at: float | None,
        booting: bool,
        extra: dict[str, Any] | None = None,
    ) -> FakeInstance:
        with self.lock:
            instance_id = self._next_id
            self._next_id += 1
        return self._new_instance(
            instance_id=instance_id,
            name=label,
            gpu=offer["gpu_name"],
            num_gpus=offer["num_gpus"],
            price_per_hour=float(offer["dph_total"]),
            started_at=started_at,
            booting=booting,
            region=offer.get("geolocation"),
            details={"offer": offer, "image": image, "disk": disk, "onstart": onstart, **(extra or {})},
        )

    def _instance_json(self, instance: FakeInstance) -> dict[str, Any]:
        offer = instance.details["offer"]
        if instance.status is not None:
            actual = instance.status
        else:
            actual = "loading" if instance.booting else "running"
        running = actual == "running"
        host, port = self._endpoint(instance)
        image = instance.details["image"]
        return {
            "id": instance.id,
            "label": instance.name,
            "actual_status": actual,
            "intended_status": "stopped" if actual in ("exited", "stopped") else "running",
            "cur_state": "stopped" if actual in ("exited", "stopped") else "running",
            "next_state": "stopped" if actual in ("exited", "stopped") else "running",
            "num_gpus": instance.num_gpus,
            "gpu_name": instance.gpu,
            "dph_total": instance.price_per_hour,
            "dph_base": offer.get("dph_base"),
            "ssh_host": host if running else None,
            "ssh_port": port if running else None,
            "ssh_idx": None,
            "public_ipaddr": host if running else None,
            "ports": {"22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]} if running else {},
            "machine_id": offer.get("machine_id"),
            "host_id": offer.get("host_id"),
            "geolocation": offer.get("geolocation"),
            "status_msg": (
                f"success, running {image}"
                if running
                else ("Pulling image, please wait..." if actual == "loading" else "Instance stopped")
            ),
            "start_date": instance.started_at,
            "duration": None,
            "cuda_max_good": offer.get("cuda_max_good"),
            "driver_version": offer.get("driver_version"),
            "compute_cap": offer.get("compute_cap"),
            "gpu_ram": offer.get("gpu_ram"),
            "gpu_totalram": offer.get("gpu_total_ram"),
            "gpu_util": 0.0 if running else None,
            "reliability2": offer.get("reliability2"),
            "disk_space": instance.details["disk"],
            "image_uuid": image,
            "image_runtype": instance.details.get("runtype", "ssh"),
            "onstart": instance.details.get("onstart"),
            "extra_env": instance.details.get("env", []),
            "inet_down": offer.get("inet_down"),
            "inet_up": offer.get("inet_up"),
            "hosting_type": offer.get("hosting_type"),
            "verification": "verified" if offer.get("verified") else "unverified",
        }

    def _authorized(self, request: RecordedRequest) -> bool:
        # An instance's CONTAINER_API_KEY is a key too, good for that instance alone (see _route).
        return self._account_or_instance_key(request)

    def _unauthorized(self) -> Response:
        return Response(401, INVALID_KEY)

    def _error(self, status: int, message: str | None = None) -> Response:
        if status == 400:
            body = vast_error("invalid_args", message or "Invalid arguments.")
        elif status == 401:
            body = INVALID_KEY
        elif status == 403:
            body = vast_error("forbidden", message or "Forbidden.")
        elif status == 404:
            body = vast_error("not_found", message or "Not found.")
        elif status == 429:
            body = TOO_MANY_REQUESTS
        elif status >= 500:
            body = vast_error("server_error", message or "Internal server error.")
        else:
            body = vast_error("error", message or f"HTTP {status}")
        return Response(status, body)

    def _route(self, request: RecordedRequest) -> Route | Response:
        path = request.path.rstrip("/")
        parts = path.strip("/").split("/")
        method = request.method
        if request.scoped_to is not None and not (
            len(parts) == 4 and parts[:3] == ["api", "v0", "instances"] and parts[3] == str(request.scoped_to)
        ):
            return self._error(403, f"This key may act on instance {request.scoped_to} only.")
        if path == "/api/v0/bundles" and method == "POST":
            return Route(("offers",), self._search)
        if len(parts) == 4 and parts[:3] == ["api", "v0", "asks"] and method == "PUT":
            offer_id = parts[3]
            return Route(("launch",), lambda r: self._rent(offer_id, r))
        if path == "/api/v1/instances" and method == "GET":
            return Route(("list_instances",), self._list_v1)
        if path == "/api/v0/instances" and method == "GET":
            return Route(("list_instances",), self._list_v0)
        if len(parts) == 4 and parts[:3] == ["api", "v0", "instances"]:
            instance_id = parts[3]
            if method == "GET":
                return Route(("get_instance",), lambda r: self._show(instance_id))
            if method == "DELETE" and request.scoped_to is not None:
                return self._error(403, "An instance's own key may not destroy it.")
            if method == "DELETE":
                return Route(("terminate",), lambda r: self._destroy(instance_id))
            if method == "PUT":
                body = request.body if isinstance(request.body, dict) else {}
                if "label" in body and "state" not in body:
                    return Route(("label",), lambda r: self._label(instance_id, r))
                starts = body.get("state") == "running"
                return Route(("resume" if starts else "stop",), lambda r: self._manage(instance_id, r))
        return self._error(404, f"No route for {method} {request.path}")

    def _lookup(self, instance_id: str) -> FakeInstance | None:
        try:
            return self.instances.get(int(instance_id))
        except ValueError:
            return None

    # ----------------------------------------------------------------- handlers

    def _search(self, request: RecordedRequest) -> Response:
        query = request.body if request.body is not None else {}
        if isinstance(query, dict) and "q" in query and isinstance(query["q"], dict):
            query = query["q"]
        if not isinstance(query, dict):
            return self._error(400, "Search query must be a JSON object.")
        filters: list[Callable[[dict[str, Any]], bool]] = []
        with self.lock:
            # With capacity_available False offers still show (a stale listing); renting them fails.
            offers = [dict(o) for o in self.offers.values() if not o.get("rented")]
        known = set(make_offer(0, "RTX 4090", 1, 1.0))
        for key, cond in query.items():
            if key in RESERVED_KEYS:
                continue
            field_name = FIELD_ALIASES.get(key, key)
            if field_name not in known:
                return self._error(400, f"Unknown search field {key!r}.")
            conds = cond if isinstance(cond, dict) else {"eq": cond}
            for op, want in conds.items():
                if op not in ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin"):
                    return self._error(400, f"Unknown operator {op!r} for field {key!r}.")
                if op in ("in", "notin") and not isinstance(want, list):
                    return self._error(400, f"Operator {op!r} for field {key!r} needs a list.")
                if field_name == "hosting_type" and isinstance(want, bool):
                    want = int(want)
                filters.append(partial(_matches, field_name, op, want))
        result = [o for o in offers if all(f(o) for f in filters)]
        order = query.get("order", [])
        if not isinstance(order, list):
            return self._error(400, "order must be a list of [field, direction] pairs.")
        for entry in reversed(order):
            if not isinstance(entry, (list, tuple)) or not entry:
                return self._error(400, "order must be a list of [field, direction] pairs.")
            field_name = FIELD_ALIASES.get(entry[0], entry[0])
            direction = entry[1] if len(entry) > 1 else "asc"
            if field_name not in known or direction not in ("asc", "desc"):
                return self._error(400, f"Invalid order entry {entry!r}.")
            present = [o for o in result if o.get(field_name) is not None]
            missing = [o for o in result if o.get(field_name) is None]
            present.sort(key=itemgetter(field_name), reverse=direction == "desc")
            result = present + missing
        limit = query.get("limit")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                return self._error(400, "limit must be a non-negative integer.")
            result = result[:limit]
        return Response(200, {"offers": result})

    def _rent(self, offer_id: str, request: RecordedRequest) -> Response:
        body = request.body if request.body is not None else {}
        if not isinstance(body, dict):
            return self._error(400, "Request body must be a JSON object.")
        image = body.get("image")
        if not isinstance(image, str) or not image:
            return self._error(400, "image is required.")
        price = body.get("price")
        disk = body.get("disk", 10.0)
        env = body.get("env", {})
        label = body.get("label")
        onstart = body.get("onstart")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
            return self._error(400, "price must be a number or null.")
        if isinstance(disk, bool) or not isinstance(disk, (int, float)) or disk <= 0:
            return self._error(400, "disk must be a positive number of GB.")
        if not isinstance(env, (dict, str)):
            return self._error(400, "env must be an object or a string.")
        if label is not None and not isinstance(label, str):
            return self._error(400, "label must be a string.")
        if onstart is not None and not isinstance(onstart, str):
            return self._error(400, "onstart must be a string.")
        with self.lock:
            try:
                offer = self.offers.get(int(offer_id))
            except ValueError:
                offer = None
            if offer is None or offer.get("rented") or not self.capacity_available:
                return Response(400, NO_SUCH_ASK)
            if self.quota_exceeded:
                return Response(403, INSUFFICIENT_CREDIT)
            if price is not None and price < offer["min_bid"]:
                return self._error(400, f"Bid price {price} is below the minimum bid {offer['min_bid']}.")
            offer["rented"], offer["rentable"] = True, False
            rented = dict(offer)
            if price is not None:
                rented["dph_total"] = float(price)
            instance = self._create(
                rented,
                label,
                image,
                float(disk),
                onstart,
                None,
                True,
                {"env": env, "runtype": body.get("runtype", "ssh"), "offer_id": offer["id"], "request": body},
            )
        return Response(200, {"success": True, "new_contract": instance.id})

    def _list_v0(self, request: RecordedRequest) -> Response:
        with self.lock:
            return Response(200, {"instances": [self._instance_json(i) for i in self.instances.values()]})

    def _list_v1(self, request: RecordedRequest) -> Response:
        params = request.params
        try:
            limit = int(params["limit"][0]) if "limit" in params else self.page_size
        except ValueError:
            return self._error(400, "limit must be an integer.")
        if limit < 1:
            return self._error(400, "limit must be positive.")
        after: int | None = None
        if "after_token" in params and params["after_token"][0]:
            try:
                after = int(base64.urlsafe_b64decode(params["after_token"][0].encode()).decode())
            except (ValueError, UnicodeDecodeError):
                return self._error(400, "Invalid after_token.")
        with self.lock:
            ordered = sorted(self.instances.values(), key=lambda i: i.id)
            if after is not None:
                ordered = [i for i in ordered if i.id > after]
            page = ordered[:limit]
            more = len(ordered) > limit
            body: dict[str, Any] = {
                "instances": [self._instance_json(i) for i in page],
                "next_token": base64.urlsafe_b64encode(str(page[-1].id).encode()).decode() if more else None,
            }
        return Response(200, body)

    def _show(self, instance_id: str) -> Response:
        with self.lock:
            instance = self._lookup(instance_id)
            if instance is None:
                return Response(404, vast_error("no_such_instance", f"Instance {instance_id} not found."))
            return Response(200, {"instances": self._instance_json(instance)})

    def _manage(self, instance_id: str, request: RecordedRequest) -> Response:
        """``PUT /api/v0/instances/{id}/`` with ``{"state": "stopped"}`` (``vastai stop instance``): the
        container stops, its disk is kept and the GPU no longer billed. ``"running"`` starts it again."""
        body = request.body if isinstance(request.body, dict) else {}
        state = body.get("state")
        if state not in ("stopped", "running"):
            return self._error(400, 'state must be "stopped" or "running".')
        with self.lock:
            instance = self._lookup(instance_id)
            if instance is None:
                return Response(404, vast_error("no_such_instance", f"Instance {instance_id} not found."))
            if state == "stopped":
                self.stop_instance(instance.id)
            else:
                self.resume_instance(instance.id)
        return Response(200, {"success": True})

    def _label(self, instance_id: str, request: RecordedRequest) -> Response:
        """``PUT /api/v0/instances/{id}/`` with ``{"label": "..."}`` (``vastai label instance``)."""
        label = request.body.get("label") if isinstance(request.body, dict) else None
        if not isinstance(label, str):
            return self._error(400, "label must be a string.")
        if self.label_refused:
            return self._error(403, "This key may not label instances.")
        with self.lock:
            instance = self._lookup(instance_id)
            if instance is None:
                return Response(404, vast_error("no_such_instance", f"Instance {instance_id} not found."))
            instance.name = label
        return Response(200, {"success": True})

    def _destroy(self, instance_id: str) -> Response:
        with self.lock:
            instance = self._lookup(instance_id)
            if instance is None:
                return Response(404, vast_error("no_such_instance", f"Instance {instance_id} not found."))
            if self.terminate_fails:
                return Response(
                    500, vast_error("server_error", "Failed to destroy instance; try again later.")
                )
            self._terminate(instance)
            offer_id = instance.details.get("offer_id")
            if offer_id in self.offers:
                self.offers[offer_id]["rented"], self.offers[offer_id]["rentable"] = False, True
        return Response(200, {"success": True})
