"""A fake Lambda Cloud API (https://cloud.lambdalabs.com/api/v1) on 127.0.0.1.

Routes (under ``/api/v1``): ``GET /instance-types``, ``POST /instance-operations/launch``,
``GET /instances``, ``GET /instances/{id}``, ``POST /instance-operations/terminate``, ``GET /ssh-keys``,
``POST /ssh-keys``. Auth: ``Authorization: Bearer <key>`` or HTTP Basic ``<key>:``. Errors are
``{"error": {"code", "message", "suggestion"?}}``. Lambda instances always listen for SSH on port 22, so only
``ip`` (= ``ssh_host``) is reported.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from tests.support.clouds.base import FakeCloud, FakeInstance, RecordedRequest, Response, Route

#: Lambda's region names and descriptions.
REGIONS: dict[str, str] = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-west-2": "Arizona, USA",
    "us-south-1": "Texas, USA",
    "us-midwest-1": "Illinois, USA",
    "europe-central-1": "Germany",
    "asia-northeast-1": "Tokyo, Japan",
}


@dataclass
class LambdaInstanceType:
    """One entry of ``GET /instance-types``. ``regions``: where it has capacity now (empty: sold out)."""

    name: str
    gpu_description: str
    price_cents_per_hour: int
    gpus: int
    vcpus: int
    memory_gib: int
    storage_gib: int
    regions: list[str] = field(default_factory=list)
    description: str | None = None  # default: "<gpus>x <gpu_description>"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description or f"{self.gpus}x {self.gpu_description}",
            "gpu_description": self.gpu_description,
            "price_cents_per_hour": self.price_cents_per_hour,
            "specs": {
                "vcpus": self.vcpus,
                "memory_gib": self.memory_gib,
                "storage_gib": self.storage_gib,
                "gpus": self.gpus,
            },
        }


def default_lambda_catalog() -> list[LambdaInstanceType]:
    """Prices from SkyPilot's Lambda catalog (reference §5.1); specs as Lambda lists them."""
    t = LambdaInstanceType
    return [
        t("gpu_1x_a10", "A10 (24 GB PCIe)", 75, 1, 30, 200, 1400, ["us-east-1", "us-west-1"]),
        t("gpu_1x_rtx6000", "RTX 6000 (24 GB)", 50, 1, 14, 46, 512, []),
        t("gpu_1x_a6000", "RTX A6000 (48 GB)", 80, 1, 14, 100, 512, ["us-west-1"]),
        t("gpu_2x_a6000", "RTX A6000 (48 GB)", 160, 2, 28, 200, 1024, ["us-west-1"]),
        t("gpu_4x_a6000", "RTX A6000 (48 GB)", 320, 4, 56, 400, 1024, []),
        t("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 129, 1, 30, 200, 512, ["us-east-1", "us-west-2"]),
        t("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 1432, 8, 240, 1800, 19500, ["us-east-1"]),
        t("gpu_8x_v100", "Tesla V100 (16 GB)", 440, 8, 88, 448, 5800, ["us-south-1"]),
        t("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 249, 1, 26, 200, 1000, ["us-west-1", "us-east-1"]),
        t("gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 329, 1, 26, 225, 2750, []),
        t("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 2392, 8, 208, 1800, 24500, ["us-east-1"]),
        t("gpu_1x_gh200", "GH200 (96 GB)", 149, 1, 64, 432, 4000, ["us-east-1"]),
        t("gpu_2x_b200_sxm6", "B200 (180 GB SXM6)", 1038, 2, 52, 450, 5500, []),
    ]


def lambda_error(code: str, message: str, suggestion: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if suggestion is not None:
        error["suggestion"] = suggestion
    return {"error": error}


INVALID_API_KEY = lambda_error(
    "global/invalid-api-key",
    "API key was invalid, expired, or deleted.",
    "Check your API key or create a new one, then try again.",
)
NOT_FOUND = lambda_error("global/object-does-not-exist", "Specified instance does not exist.")
TOO_MANY_REQUESTS = lambda_error("global/too-many-requests", "Too many requests")
UNKNOWN_ERROR = lambda_error("global/unknown", "An unknown error occurred")
INSUFFICIENT_CAPACITY = lambda_error(
    "instance-operations/launch/insufficient-capacity",
    "Not enough capacity to fulfill launch request.",
    "Choose an instance type with more availability, or try again later.",
)
QUOTA_EXCEEDED = lambda_error(
    "global/quota-exceeded", "Quota exceeded", "Contact Support to increase your quota."
)


class FakeLambda(FakeCloud):
    """Fake Lambda Cloud. ``url`` is ``http://127.0.0.1:PORT/api/v1``.

    Extra constructor parameters: ``catalog`` (list of :class:`LambdaInstanceType`; default
    :func:`default_lambda_catalog`), ``ssh_key_names`` (the account's SSH key names, default
    ``["gpubox-test"]``), ``file_system_names`` (default none). ``ssh_port`` is fixed at 22 in what the API
    reports (Lambda reports only ``ip``); the attribute exists for symmetry.
    Extra operations for ``fail_next``: ``ssh_keys``.
    """

    PROVIDER: ClassVar[str] = "lambda"

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        catalog: list[LambdaInstanceType] | None = None,
        ssh_key_names: list[str] | None = None,
        file_system_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key, **kwargs)
        self.catalog: dict[str, LambdaInstanceType] = {}
        self.set_catalog(default_lambda_catalog() if catalog is None else catalog)
        self.ssh_keys: dict[str, str] = {
            name: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests gpubox-test"
            for name in (["gpubox-test"] if ssh_key_names is None else ssh_key_names)
        }
        self.file_system_names = list(file_system_names or [])

    @property
    def url(self) -> str:
        return f"{self.root_url}/api/v1"

    @property
    def ssh_key_names(self) -> list[str]:
        with self.lock:
            return list(self.ssh_keys)

    def set_catalog(self, catalog: list[LambdaInstanceType]) -> None:
        with self.lock:
            self.catalog = {t.name: t for t in catalog}

    def set_regions(self, type_name: str, regions: list[str]) -> None:
        """Change where one instance type has capacity (empty list: sold out)."""
        with self.lock:
            self.catalog[type_name].regions = list(regions)

    def add_instance(
        self,
        *,
        name: str | None = None,
        gpu: str = "gpu_1x_a10",
        price_per_hour: float | None = None,
        started_at: float | None = None,
        region: str | None = None,
        booting: bool = False,
        ssh_key_name: str | None = None,
    ) -> str:
        """Create an instance as if launched earlier; ``gpu`` is an instance type name from the catalog.
        ``price_per_hour`` overrides the catalog price (rounded to cents). Returns the instance id."""
        with self.lock:
            itype = self.catalog[gpu]
            cents = itype.price_cents_per_hour if price_per_hour is None else round(price_per_hour * 100)
            region = region or (itype.regions[0] if itype.regions else "us-east-1")
            key = ssh_key_name or next(iter(self.ssh_keys), "gpubox-test")
            return str(self._create(itype, region, name, [key], [], cents, started_at, booting).id)

    # ----------------------------------------------------------------- internals

    def _create(
        self,
        itype: LambdaInstanceType,
        region: str,
        name: str | None,
        ssh_key_names: list[str],
        file_system_names: list[str],
        cents: int,
        started_at: float | None,
        booting: bool,
    ) -> FakeInstance:
        type_json = itype.to_json()
        type_json["price_cents_per_hour"] = cents
        return self._new_instance(
            instance_id=uuid.uuid4().hex,
            name=name,
            gpu=itype.name,
            num_gpus=itype.gpus,
            price_per_hour=cents / 100,
            started_at=started_at,
            booting=booting,
            region=region,
            details={
                "instance_type": type_json,
                "ssh_key_names": ssh_key_names,
                "file_system_names": file_system_names,
                "private_ip": f"10.19.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}",
                "jupyter_token": secrets.token_hex(16),
            },
        )

    def _status(self, instance: FakeInstance) -> str:
        if instance.status is not None:
            return instance.status
        return "booting" if instance.booting else "active"

    def _instance_json(self, instance: FakeInstance, status: str | None = None) -> dict[str, Any]:
        current = self._status(instance)
        status = status or current
        details = instance.details
        up = current not in ("booting", "terminated")
        ip = self._endpoint(instance)[0] if up else None
        return {
            "id": instance.id,
            "name": instance.name,
            "ip": ip,
            "private_ip": details["private_ip"] if up else None,
            "status": status,
            "ssh_key_names": list(details["ssh_key_names"]),
            "file_system_names": list(details["file_system_names"]),
            "region": {
                "name": instance.region,
                "description": REGIONS.get(instance.region or "", instance.region),
            },
            "instance_type": dict(details["instance_type"]),
            "hostname": f"{ip.replace('.', '-')}.cloud.lambdalabs.com" if ip else None,
            "jupyter_token": details["jupyter_token"],
            "jupyter_url": (
                f"https://jupyter-{instance.id}.lambdaspaces.com/?token={details['jupyter_token']}"
                if up
                else None
            ),
        }

    def _authorized(self, request: RecordedRequest) -> bool:
        auth = request.header("authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return secrets.compare_digest(value.strip(), self.api_key)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            return bool(sep) and password == "" and secrets.compare_digest(user, self.api_key)
        return False

    def _unauthorized(self) -> Response:
        return Response(401, INVALID_API_KEY)

    def _error(self, status: int, message: str | None = None) -> Response:
        if status == 400:
            body = lambda_error("global/invalid-parameters", message or "Invalid request parameters.")
        elif status == 401:
            body = INVALID_API_KEY
        elif status == 403:
            body = lambda_error("global/forbidden", message or "Forbidden")
        elif status == 404:
            body = lambda_error("global/object-does-not-exist", message) if message else NOT_FOUND
        elif status == 429:
            body = TOO_MANY_REQUESTS
        elif status >= 500 and message:
            body = lambda_error("global/unknown", message)
        elif status >= 500:
            body = UNKNOWN_ERROR
        else:
            body = lambda_error("global/unknown", message or f"HTTP {status}")
        return Response(status, body)

    def _operations(self) -> tuple[str, ...]:
        return ("offers", "launch", "list_instances", "get_instance", "terminate", "ssh_keys")

    def _route(self, request: RecordedRequest) -> Route | Response:
        prefix = "/api/v1"
        if not request.path.startswith(prefix + "/"):
            return self._error(404, "Not found")
        path, method = request.path[len(prefix) :], request.method
        if path == "/instance-types" and method == "GET":
            return Route(("offers",), self._list_types)
        if path == "/instance-operations/launch" and method == "POST":
            return Route(("launch",), self._launch)
        if path == "/instance-operations/terminate" and method == "POST":
            return Route(("terminate",), self._terminate_request)
        if path == "/instances" and method == "GET":
            return Route(("list_instances",), self._list_instances)
        if path.startswith("/instances/") and method == "GET" and path.count("/") == 2:
            instance_id = path.rsplit("/", 1)[1]
            return Route(("get_instance",), lambda r: self._get_instance(instance_id))
        if path == "/ssh-keys" and method in ("GET", "POST"):
            return Route(("ssh_keys",), self._ssh_keys)
        return self._error(404, "Not found")

    # ----------------------------------------------------------------- handlers

    def _list_types(self, request: RecordedRequest) -> Response:
        with self.lock:
            data = {
                name: {
                    "instance_type": itype.to_json(),
                    "regions_with_capacity_available": [
                        {"name": r, "description": REGIONS.get(r, r)}
                        for r in (itype.regions if self.capacity_available else [])
                    ],
                }
                for name, itype in self.catalog.items()
            }
        return Response(200, {"data": data})

    def _launch(self, request: RecordedRequest) -> Response:
        body = request.body
        if not isinstance(body, dict):
            return self._error(400, "Request body must be a JSON object.")
        region = body.get("region_name")
        type_name = body.get("instance_type_name")
        keys = body.get("ssh_key_names")
        file_systems = body.get("file_system_names", [])
        quantity = body.get("quantity", 1)
        name = body.get("name")
        if not isinstance(region, str) or not region:
            return self._error(400, "region_name is required and must be a string.")
        if not isinstance(type_name, str) or not type_name:
            return self._error(400, "instance_type_name is required and must be a string.")
        if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], str):
            return self._error(400, "ssh_key_names must be a list containing exactly one SSH key name.")
        if file_systems is None:
            file_systems = []
        if (
            not isinstance(file_systems, list)
            or len(file_systems) > 1
            or not all(isinstance(f, str) for f in file_systems)
        ):
            return self._error(400, "file_system_names must be a list of at most one file system name.")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= 10:
            return self._error(400, "quantity must be an integer between 1 and 10.")
        if name is not None and (not isinstance(name, str) or len(name) > 64):
            return self._error(400, "name must be a string of at most 64 characters.")
        with self.lock:
            itype = self.catalog.get(type_name)
            if itype is None:
                return self._error(400, f"Invalid instance type name: {type_name!r}.")
            if region not in REGIONS:
                return self._error(400, f"Invalid region name: {region!r}.")
            if keys[0] not in self.ssh_keys:
                return self._error(400, f"Invalid SSH key name: {keys[0]!r} does not exist.")
            for fs in file_systems:
                if fs not in self.file_system_names:
                    return self._error(400, f"Invalid file system name: {fs!r} does not exist.")
            if self.quota_exceeded:
                return Response(400, QUOTA_EXCEEDED)
            if not self.capacity_available or region not in itype.regions:
                return Response(400, INSUFFICIENT_CAPACITY)
            ids = [
                self._create(
                    itype,
                    region,
                    name,
                    list(keys),
                    list(file_systems),
                    itype.price_cents_per_hour,
                    None,
                    True,
                ).id
                for _ in range(quantity)
            ]
        return Response(200, {"data": {"instance_ids": ids}})

    def _list_instances(self, request: RecordedRequest) -> Response:
        with self.lock:
            data = [self._instance_json(i) for i in self.instances.values()]
        return Response(200, {"data": data})

    def _get_instance(self, instance_id: str) -> Response:
        with self.lock:
            instance = self.instances.get(instance_id)
            if instance is None:
                return Response(404, NOT_FOUND)
            return Response(200, {"data": self._instance_json(instance)})

    def _terminate_request(self, request: RecordedRequest) -> Response:
        body = request.body
        ids = body.get("instance_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return self._error(400, "instance_ids must be a non-empty list of instance IDs.")
        with self.lock:
            if any(i not in self.instances for i in ids):
                return Response(404, NOT_FOUND)
            if self.terminate_fails:
                return Response(500, UNKNOWN_ERROR)
            terminated = []
            for instance_id in dict.fromkeys(ids):
                instance = self.instances[instance_id]
                terminated.append(self._instance_json(instance, status="terminating"))
                self._terminate(instance)
        return Response(200, {"data": {"terminated_instances": terminated}})

    def _ssh_keys(self, request: RecordedRequest) -> Response:
        with self.lock:
            if request.method == "GET":
                data = [
                    {"id": uuid.uuid5(uuid.NAMESPACE_DNS, n).hex, "name": n, "public_key": k}
                    for n, k in self.ssh_keys.items()
                ]
                return Response(200, {"data": data})
            body = request.body
            name = body.get("name") if isinstance(body, dict) else None
            key = body.get("public_key") if isinstance(body, dict) else None
            if not isinstance(name, str) or not name:
                return self._error(400, "name is required.")
            if name in self.ssh_keys:
                return self._error(400, f"SSH key name {name!r} is already in use.")
            key_json: dict[str, Any] = {"id": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex, "name": name}
            if key is None:  # Lambda generates a key pair and returns the private key once
                key = f"ssh-ed25519 AAAAGeneratedByFakeLambda{int(time.time())} {name}"
                key_json["private_key"] = (
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n"
                )
            elif not isinstance(key, str):
                return self._error(400, "public_key must be a string.")
            self.ssh_keys[name] = key
            key_json["public_key"] = key
            return Response(200, {"data": key_json})
