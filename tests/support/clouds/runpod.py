"""A fake RunPod GraphQL API (https://api.runpod.io/graphql) on 127.0.0.1, executed by graphql-core.

``POST /graphql`` with ``{"query", "variables"?, "operationName"?}``. Auth: ``Authorization: Bearer <key>`` or
``?api_key=<key>``; otherwise HTTP 401 ``{"errors": [{"message": "Unauthorized"}]}``. GraphQL errors (syntax,
validation, capacity, quota, unknown pod) come back with HTTP 200 as
``{"data": ..., "errors": [{"message", "locations", "path", "extensions": {"code"}}]}``.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, ClassVar

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    build_schema,
    execute_sync,
    parse,
    validate,
)
from graphql.language import DocumentNode

from tests.support.clouds.base import FakeCloud, FakeInstance, RecordedRequest, Response, Route

SCHEMA_SDL = """
type Query {
  gpuTypes(input: GpuTypeFilter): [GpuType]
  myself: User
  pod(input: PodFilter!): Pod
}

type Mutation {
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput): Pod
  podTerminate(input: PodTerminateInput): Boolean
  podStop(input: PodStopInput): Pod
  podResume(input: PodResumeInput): Pod
}

input GpuTypeFilter { id: String }
input PodFilter { podId: String! }
input PodTerminateInput { podId: String! }
input PodStopInput { podId: String! }
input PodResumeInput { podId: String! gpuCount: Int! }

input GpuLowestPriceInput {
  gpuCount: Int
  minDisk: Int
  minMemoryInGb: Int
  minVcpuCount: Int
  secureCloud: Boolean
  compliance: [String]
  dataCenterId: String
  globalNetwork: Boolean
  countryCode: String
  supportPublicIp: Boolean
  allowedCudaVersions: [String]
  includeAiApi: Boolean
}

type GpuType {
  id: String
  displayName: String
  manufacturer: String
  memoryInGb: Int
  secureCloud: Boolean
  communityCloud: Boolean
  securePrice: Float
  communityPrice: Float
  secureSpotPrice: Float
  communitySpotPrice: Float
  maxGpuCount: Int
  maxGpuCountSecureCloud: Int
  maxGpuCountCommunityCloud: Int
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}

type LowestPrice {
  gpuName: String
  gpuTypeId: String
  minimumBidPrice: Float
  uninterruptablePrice: Float
  stockStatus: String
  minVcpu: Float
  minMemory: Float
  maxUnreservedGpuCount: Int
}

type User {
  id: String
  email: String
  clientBalance: Float
  currentSpendPerHr: Float
  pods: [Pod]
}

type Pod {
  id: String
  name: String
  costPerHr: Float
  adjustedCostPerHr: Float
  desiredStatus: String
  gpuCount: Int
  vcpuCount: Float
  memoryInGb: Float
  volumeInGb: Float
  containerDiskInGb: Int
  volumeMountPath: String
  imageName: String
  dockerArgs: String
  env: [String]
  ports: String
  lastStatusChange: String
  uptimeSeconds: Int
  podType: String
  runtime: PodRuntime
  machine: PodMachine
  machineId: String
}

type PodRuntime {
  uptimeInSeconds: Int
  ports: [PodPort]
  gpus: [PodGpu]
}

type PodPort {
  ip: String
  isIpPublic: Boolean
  privatePort: Int
  publicPort: Int
  type: String
}

type PodGpu {
  id: String
  gpuUtilPercent: Int
  memoryUtilPercent: Int
}

type PodMachine {
  podHostId: String
  gpuDisplayName: String
  location: String
}

enum CloudTypeEnum { ALL SECURE COMMUNITY }

input EnvironmentVariableInput { key: String, value: String }

input PodFindAndDeployOnDemandInput {
  name: String
  imageName: String
  cloudType: CloudTypeEnum
  gpuTypeId: String
  gpuCount: Int
  volumeInGb: Int
  containerDiskInGb: Int
  minVcpuCount: Int
  minMemoryInGb: Int
  startSsh: Boolean
  startJupyter: Boolean
  supportPublicIp: Boolean
  ports: String
  env: [EnvironmentVariableInput]
  dockerArgs: String
  volumeMountPath: String
  allowedCudaVersions: [String]
  dataCenterId: String
  countryCode: String
  templateId: String
  networkVolumeId: String
  minDownload: Int
  minUpload: Int
}
"""

#: Root field -> the fail_next operation name.
ROOT_OPERATIONS = {
    "gpuTypes": "offers",
    "podFindAndDeployOnDemand": "launch",
    "myself": "list_instances",
    "pod": "get_instance",
    "podTerminate": "terminate",
    "podStop": "stop",
    "podResume": "resume",
}
#: What a pod's own key (RUNPOD_API_KEY inside the pod) may ask, and then of that pod only.
POD_KEY_FIELDS = {"pod", "podStop"}

NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."
NO_FREE_GPUS = "There are not enough free GPUs on the host machine to start this pod."
QUOTA = "You have reached the maximum number of pods allowed for your account."
DATA_CENTERS = ("US-TX-3", "US-KS-2", "CA-MTL-1", "EU-RO-1", "EU-SE-1")


@dataclass
class RunPodGpuType:
    """One ``GpuType``. A ``None`` price means that cloud does not offer it. ``stock_status`` None: no stock."""

    id: str
    display_name: str
    memory_gb: int
    secure_price: float | None
    community_price: float | None
    secure_spot_price: float | None
    community_spot_price: float | None
    max_gpu_count: int = 8
    stock_status: str | None = "High"
    cuda_version: str = "12.4"  # of the hosts it deploys on (checked against allowedCudaVersions)
    data_centers: tuple[str, ...] = field(default=DATA_CENTERS)

    def cheapest(self, cloud: str = "ALL") -> tuple[float, str] | None:
        options = []
        if cloud in ("ALL", "SECURE") and self.secure_price is not None:
            options.append((self.secure_price, "SECURE"))
        if cloud in ("ALL", "COMMUNITY") and self.community_price is not None:
            options.append((self.community_price, "COMMUNITY"))
        return min(options) if options else None


def default_runpod_catalog() -> list[RunPodGpuType]:
    """Secure on-demand and spot prices from SkyPilot's RunPod catalog (reference §5.2). Community prices and
    the RTX 3090 / RTX A6000 rows are not in the reference: they are plausible values, marked below."""
    g = RunPodGpuType
    return [
        g("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.59, 0.34, 0.29, 0.2, 8, "High"),  # community: invented
        g(
            "NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.64, 1.19, 0.82, 0.6, 8, "Medium"
        ),  # community: invented
        g(
            "NVIDIA H100 PCIe", "H100 PCIe", 80, 2.39, 1.99, 1.25, 1.0, 8, "Low", "12.8"
        ),  # community: invented
        g("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, None, 1.75, None, 8, "High", "12.8"),
        g("NVIDIA H100 NVL", "H100 NVL", 94, 3.07, None, 1.65, None, 8, "Low", "12.8"),
        g("NVIDIA H200", "H200 SXM", 141, 3.59, None, 2.29, None, 8, "Medium", "12.8"),
        g("NVIDIA L40S", "L40S", 48, 0.86, 0.79, 0.26, 0.4, 8, "High"),  # community: invented
        g("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, 0.33, 0.25, 0.17, 8, "High"),  # invented
        g("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 0.43, 0.22, 0.22, 0.11, 4, None),  # invented; no stock
        g("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", 20, 0.26, 0.2, 0.13, 0.1, 8, "High"),
    ]


def _random_id(length: int) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _gql_error(message: str, code: str) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code})


class FakeRunPod(FakeCloud):
    """Fake RunPod. ``url`` is ``http://127.0.0.1:PORT`` (GraphQL at ``url + "/graphql"``; also
    :attr:`graphql_url`). The SSH endpoint is the public ``privatePort 22`` entry of ``runtime.ports``
    (``ip`` = ``ssh_host``, ``publicPort`` = ``ssh_port``); a private 22 entry and a private http 8888 entry
    come before it, so clients must filter on ``isIpPublic``.

    Extra constructor parameters: ``catalog`` (list of :class:`RunPodGpuType`; default
    :func:`default_runpod_catalog`), ``balance`` (``myself.clientBalance``, default 25.0).
    ``quota_exceeded`` answers :data:`QUOTA` (``quota_message`` to change it).
    ``fail_next`` operations map to root fields: ``offers`` (gpuTypes), ``launch`` (podFindAndDeployOnDemand),
    ``list_instances`` (myself), ``get_instance`` (pod), ``terminate`` (podTerminate), ``stop`` (podStop) and
    ``graphql`` (any request). The status applies to the whole HTTP response. ``pod(input: {podId})`` of an
    unknown id is ``null`` (no error); ``podTerminate`` of an unknown id is a "Pod not found" error.
    A pod's own key (``RUNPOD_API_KEY`` inside it, :meth:`FakeCloud.instance_key`) may ask ``pod`` and
    ``podStop`` of that pod only (other root fields: HTTP 403; another pod: a GraphQL error).
    """

    PROVIDER: ClassVar[str] = "runpod"
    STOPPED_STATUS: ClassVar[str] = "EXITED"

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        catalog: list[RunPodGpuType] | None = None,
        balance: float = 25.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(api_key, **kwargs)
        self.catalog: dict[str, RunPodGpuType] = {}
        self.set_catalog(default_runpod_catalog() if catalog is None else catalog)
        self.balance = balance
        self.quota_message = QUOTA
        self.user_id = "user_" + _random_id(24)
        self._scope = threading.local()
        """The pod whose own key signed the request being executed (None: the account's key)."""

    @property
    def graphql_url(self) -> str:
        return f"{self.root_url}/graphql"

    def set_catalog(self, catalog: list[RunPodGpuType]) -> None:
        with self.lock:
            self.catalog = {g.id: g for g in catalog}

    def set_stock(self, gpu_type_id: str, stock_status: str | None) -> None:
        with self.lock:
            self.catalog[gpu_type_id].stock_status = stock_status

    def add_instance(
        self,
        *,
        name: str | None = None,
        gpu: str = "NVIDIA GeForce RTX 4090",
        price_per_hour: float | None = None,
        started_at: float | None = None,
        gpu_count: int = 1,
        image: str = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
        booting: bool = False,
    ) -> str:
        """Create a pod as if deployed earlier; ``gpu`` is a gpuTypeId (or displayName) from the catalog,
        ``price_per_hour`` the pod's ``costPerHr`` (default: cheapest price × gpu_count). Returns the pod id."""
        with self.lock:
            gtype = self.catalog.get(gpu) or next(g for g in self.catalog.values() if g.display_name == gpu)
            cheapest = gtype.cheapest()
            if price_per_hour is None:
                price_per_hour = round((cheapest[0] if cheapest else 0.5) * gpu_count, 4)
            inputs = {"name": name, "imageName": image, "gpuCount": gpu_count}
            return str(self._create(gtype, inputs, price_per_hour, "SECURE", started_at, booting).id)

    # ----------------------------------------------------------------- internals

    def _create(
        self,
        gtype: RunPodGpuType,
        inputs: dict[str, Any],
        cost: float,
        cloud: str,
        started_at: float | None,
        booting: bool,
    ) -> FakeInstance:
        return self._new_instance(
            instance_id=_random_id(14),
            name=inputs.get("name"),
            gpu=gtype.id,
            num_gpus=inputs.get("gpuCount") or 1,
            price_per_hour=cost,
            started_at=started_at,
            booting=booting,
            region=inputs.get("dataCenterId") or gtype.data_centers[0],
            details={
                "inputs": inputs,
                "display_name": gtype.display_name,
                "cloud": cloud,
                "machine_id": _random_id(12),
                "private_ip": f"100.65.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}",
                "http_port": 60000 + secrets.randbelow(5000),
            },
        )

    def _pod_json(self, instance: FakeInstance) -> dict[str, Any]:
        details, inputs = instance.details, instance.details["inputs"]
        status = instance.status or "RUNNING"
        up = status == "RUNNING" and not instance.booting
        uptime = int(max(0.0, time.monotonic() - instance.ready_at)) if up else 0
        runtime = None
        if up:
            host, port = self._endpoint(instance)
            runtime = {
                "uptimeInSeconds": uptime,
                "ports": [
                    {
                        "ip": details["private_ip"],
                        "isIpPublic": False,
                        "privatePort": 8888,
                        "publicPort": details["http_port"],
                        "type": "http",
                    },
                    {
                        "ip": details["private_ip"],
                        "isIpPublic": False,
                        "privatePort": 22,
                        "publicPort": 22,
                        "type": "tcp",
                    },
                    {"ip": host, "isIpPublic": True, "privatePort": 22, "publicPort": port, "type": "tcp"},
                ],
                "gpus": [
                    {"id": f"GPU-{_random_id(8)}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                    for _ in range(instance.num_gpus)
                ],
            }
        env = [f"{e.get('key')}={e.get('value')}" for e in inputs.get("env") or [] if isinstance(e, dict)]
        started = formatdate(instance.started_at, usegmt=True)
        return {
            "id": instance.id,
            "name": instance.name,
            "costPerHr": instance.price_per_hour,
            "adjustedCostPerHr": instance.price_per_hour,
            "desiredStatus": status,
            "gpuCount": instance.num_gpus,
            "vcpuCount": float(inputs.get("minVcpuCount") or 8 * instance.num_gpus),
            "memoryInGb": float(inputs.get("minMemoryInGb") or 31 * instance.num_gpus),
            "volumeInGb": float(inputs.get("volumeInGb") or 0),
            "containerDiskInGb": inputs.get("containerDiskInGb") or 20,
            "volumeMountPath": inputs.get("volumeMountPath") or "/workspace",
            "imageName": inputs.get("imageName"),
            "dockerArgs": inputs.get("dockerArgs") or "",
            "env": env,
            "ports": inputs.get("ports") or "22/tcp,8888/http",
            "lastStatusChange": (
                f"Exited by User: {formatdate(instance.stopped_at, usegmt=True)}"
                if instance.stopped_at is not None
                else f"Rented by User: {started}"
            ),
            "uptimeSeconds": uptime,
            "podType": "RESERVED",
            "runtime": runtime,
            "machine": {
                "podHostId": f"{instance.id}-{details['machine_id'][:8]}",
                "gpuDisplayName": details["display_name"],
                "location": instance.region,
            },
            "machineId": details["machine_id"],
        }

    def _authorized(self, request: RecordedRequest) -> bool:
        # A pod's own RUNPOD_API_KEY is a key too, good for that pod alone (see _route and the resolvers).
        return self._account_or_instance_key(request)

    def _unauthorized(self) -> Response:
        return Response(401, {"errors": [{"message": "Unauthorized"}]})

    def _error(self, status: int, message: str | None = None) -> Response:
        default = {
            400: "Bad request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not found",
            429: "Too many requests",
            500: "Internal server error",
            502: "Bad gateway",
            503: "Service unavailable",
            504: "Gateway timeout",
        }.get(status, f"HTTP {status}")
        return Response(status, {"errors": [{"message": message or default}]})

    def _bad_json(self) -> Response:
        return Response(
            400,
            {"errors": [{"message": "POST body is not valid JSON", "extensions": {"code": "BAD_REQUEST"}}]},
        )

    def _operations(self) -> tuple[str, ...]:
        return ("offers", "launch", "list_instances", "get_instance", "terminate", "stop", "graphql")

    def _route(self, request: RecordedRequest) -> Route | Response:
        if request.path.rstrip("/") != "/graphql":
            return self._error(404)
        if request.method != "POST":
            return Response(405, {"errors": [{"message": "Only POST is supported"}]}, {"Allow": "POST"})
        body = request.body
        query = body.get("query") if isinstance(body, dict) else None
        if not isinstance(query, str) or not query.strip():
            return Response(
                400,
                {
                    "errors": [
                        {
                            "message": "GraphQL operations must contain a non-empty `query`.",
                            "extensions": {"code": "BAD_REQUEST"},
                        }
                    ]
                },
            )
        try:
            document = parse(query)
        except GraphQLError as error:
            parse_error = error
            return Route(("graphql",), lambda r: self._errors_response([parse_error], "GRAPHQL_PARSE_FAILED"))
        operation_name = body.get("operationName") if isinstance(body, dict) else None
        if (
            request.scoped_to is not None
            and not set(_root_fields(document, operation_name)) <= POD_KEY_FIELDS
        ):
            return Response(
                403, {"errors": [{"message": f"This key may act on pod {request.scoped_to} only"}]}
            )
        ops = tuple(
            dict.fromkeys(
                ROOT_OPERATIONS[f] for f in _root_fields(document, operation_name) if f in ROOT_OPERATIONS
            )
        )
        return Route((*ops, "graphql"), lambda r: self._execute(document, body, ops, r.scoped_to))

    def _errors_response(self, errors: list[GraphQLError], code: str) -> Response:
        formatted = []
        for error in errors:
            item: dict[str, Any] = dict(error.formatted)
            item["extensions"] = {"code": code, **(item.get("extensions") or {})}
            formatted.append(item)
        return Response(200, {"data": None, "errors": formatted})

    def _execute(
        self, document: DocumentNode, body: dict[str, Any], ops: tuple[str, ...], scoped_to: Any = None
    ) -> Response:
        if "terminate" in ops and self.terminate_fails:
            return self._error(500)
        self._scope.pod = scoped_to
        errors = validate(SCHEMA, document)
        if errors:
            return self._errors_response(list(errors), "GRAPHQL_VALIDATION_FAILED")
        variables = body.get("variables")
        if variables is not None and not isinstance(variables, dict):
            return Response(400, {"errors": [{"message": "`variables` must be an object"}]})
        result = execute_sync(
            SCHEMA,
            document,
            context_value=self,
            variable_values=variables,
            operation_name=body.get("operationName"),
        )
        answer: dict[str, Any] = {"data": result.data}
        if result.errors:
            answer["errors"] = []
            for error in result.errors:
                item: dict[str, Any] = dict(error.formatted)
                item["extensions"] = {
                    "code": "BAD_USER_INPUT" if error.path is None else "INTERNAL_SERVER_ERROR"
                }
                if error.extensions:
                    item["extensions"].update(error.extensions)
                answer["errors"].append(item)
        return Response(200, answer)

    # ----------------------------------------------------------------- resolvers

    def _gpu_type_json(self, gtype: RunPodGpuType) -> dict[str, Any]:
        def lowest_price(info: Any, input: dict[str, Any] | None = None) -> dict[str, Any]:
            args = input or {}
            count = args.get("gpuCount") or 1
            secure = args.get("secureCloud")
            cloud = "ALL" if secure is None else ("SECURE" if secure else "COMMUNITY")
            spot = {
                "ALL": [p for p in (gtype.secure_spot_price, gtype.community_spot_price) if p is not None],
                "SECURE": [p for p in (gtype.secure_spot_price,) if p is not None],
                "COMMUNITY": [p for p in (gtype.community_spot_price,) if p is not None],
            }[cloud]
            cheapest = gtype.cheapest(cloud)
            with self.lock:
                in_stock = self.capacity_available
            fits = count <= gtype.max_gpu_count and cheapest is not None
            return {
                "gpuName": gtype.display_name,
                "gpuTypeId": gtype.id,
                "minimumBidPrice": round(min(spot) * count, 4) if fits and spot else None,
                "uninterruptablePrice": round(cheapest[0] * count, 4) if fits and cheapest else None,
                "stockStatus": gtype.stock_status if fits and in_stock else None,
                "minVcpu": float(8 * count) if fits else None,
                "minMemory": float(31 * count) if fits else None,
                "maxUnreservedGpuCount": gtype.max_gpu_count if in_stock and gtype.stock_status else 0,
            }

        return {
            "id": gtype.id,
            "displayName": gtype.display_name,
            "manufacturer": "Nvidia",
            "memoryInGb": gtype.memory_gb,
            "secureCloud": gtype.secure_price is not None,
            "communityCloud": gtype.community_price is not None,
            "securePrice": gtype.secure_price,
            "communityPrice": gtype.community_price,
            "secureSpotPrice": gtype.secure_spot_price,
            "communitySpotPrice": gtype.community_spot_price,
            "maxGpuCount": gtype.max_gpu_count,
            "maxGpuCountSecureCloud": gtype.max_gpu_count if gtype.secure_price is not None else 0,
            "maxGpuCountCommunityCloud": gtype.max_gpu_count if gtype.community_price is not None else 0,
            "lowestPrice": lowest_price,
        }

    def resolve_gpu_types(self, input: dict[str, Any] | None) -> list[dict[str, Any]]:
        wanted = (input or {}).get("id")
        with self.lock:
            types = [g for g in self.catalog.values() if wanted is None or g.id == wanted]
        return [self._gpu_type_json(g) for g in types]

    def resolve_myself(self) -> dict[str, Any]:
        with self.lock:
            pods = [self._pod_json(i) for i in self.instances.values()]
            return {
                "id": self.user_id,
                "email": "gpubox-test@example.com",
                "clientBalance": self.balance,
                "currentSpendPerHr": round(sum(i.price_per_hour for i in self.instances.values()), 4),
                "pods": pods,
            }

    def _own_pod_only(self, pod_id: Any) -> None:
        scoped = getattr(self._scope, "pod", None)
        if scoped is not None and pod_id != scoped:
            raise _gql_error(f"This key may act on pod {scoped} only", "FORBIDDEN")

    def resolve_pod(self, input: dict[str, Any]) -> dict[str, Any] | None:
        self._own_pod_only(input["podId"])
        with self.lock:
            instance = self.instances.get(input["podId"])
            return self._pod_json(instance) if instance is not None else None

    def resolve_stop(self, input: dict[str, Any] | None) -> dict[str, Any]:
        """``podStop``: the pod stops (EXITED), its volume kept and its GPU no longer billed; the pod's
        ``lastStatusChange`` says when."""
        pod_id = (input or {}).get("podId")
        self._own_pod_only(pod_id)
        with self.lock:
            if pod_id not in self.instances:
                raise _gql_error("Pod not found", "INTERNAL_SERVER_ERROR")
            return self._pod_json(self.stop_instance(pod_id))

    def resolve_resume(self, input: dict[str, Any] | None) -> dict[str, Any]:
        """``podResume``: a stopped pod starts again on the machine holding its volume, if that machine has
        ``gpuCount`` GPUs free (``resume_capacity``)."""
        pod_id = (input or {}).get("podId")
        with self.lock:
            instance = self.instances.get(pod_id)
            if instance is None:
                raise _gql_error("Pod not found", "INTERNAL_SERVER_ERROR")
            if instance.stopped_at is not None and not self.resume_capacity:
                raise _gql_error(NO_FREE_GPUS, "INTERNAL_SERVER_ERROR")
            return self._pod_json(self.resume_instance(pod_id))

    def resolve_deploy(self, input: dict[str, Any] | None) -> dict[str, Any]:
        args = dict(input or {})
        gpu_type_id = args.get("gpuTypeId")
        image = args.get("imageName")
        count = args.get("gpuCount") or 1
        if not gpu_type_id:
            raise _gql_error("gpuTypeId is required", "BAD_USER_INPUT")
        if not image:
            raise _gql_error("imageName is required", "BAD_USER_INPUT")
        if count < 1:
            raise _gql_error("gpuCount must be at least 1", "BAD_USER_INPUT")
        cloud = args.get("cloudType") or "ALL"
        with self.lock:
            gtype = self.catalog.get(gpu_type_id)
            if gtype is None:
                raise _gql_error(f"Invalid GPU type: {gpu_type_id}", "BAD_USER_INPUT")
            if self.quota_exceeded:
                raise _gql_error(self.quota_message, "INTERNAL_SERVER_ERROR")
            cheapest = gtype.cheapest(cloud)
            cuda = args.get("allowedCudaVersions")
            datacenter = args.get("dataCenterId")
            if (
                not self.capacity_available
                or gtype.stock_status is None
                or cheapest is None
                or count > gtype.max_gpu_count
                or (cuda and gtype.cuda_version not in cuda)
                or (datacenter and datacenter not in gtype.data_centers)
            ):
                raise _gql_error(NO_CAPACITY, "INTERNAL_SERVER_ERROR")
            price, chosen = cheapest
            args["gpuCount"] = count
            instance = self._create(gtype, args, round(price * count, 4), chosen, None, True)
            return self._pod_json(instance)

    def resolve_terminate(self, input: dict[str, Any] | None) -> None:
        pod_id = (input or {}).get("podId")
        with self.lock:
            instance = self.instances.get(pod_id)
            if instance is None:
                raise _gql_error("Pod not found", "INTERNAL_SERVER_ERROR")
            self._terminate(instance)
        return None


def _root_fields(document: DocumentNode, operation_name: Any) -> list[str]:
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if isinstance(operation_name, str):
        operations = [o for o in operations if o.name is not None and o.name.value == operation_name]
    elif len(operations) > 1:
        return []
    names: list[str] = []

    def walk(selection_set: SelectionSetNode, seen: set[str]) -> None:
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                names.append(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                walk(selection.selection_set, seen)
            elif isinstance(selection, FragmentSpreadNode) and selection.name.value not in seen:
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    walk(fragment.selection_set, seen | {selection.name.value})

    for operation in operations:
        walk(operation.selection_set, set())
    return names


def _cloud(info: Any) -> FakeRunPod:
    cloud = info.context
    assert isinstance(cloud, FakeRunPod)
    return cloud


def _build_schema() -> Any:
    schema = build_schema(SCHEMA_SDL)
    query, mutation = schema.query_type, schema.mutation_type
    assert query is not None and mutation is not None
    query.fields["gpuTypes"].resolve = lambda _root, info, input=None: _cloud(info).resolve_gpu_types(input)
    query.fields["myself"].resolve = lambda _root, info: _cloud(info).resolve_myself()
    query.fields["pod"].resolve = lambda _root, info, input: _cloud(info).resolve_pod(input)
    mutation.fields["podFindAndDeployOnDemand"].resolve = lambda _root, info, input=None: _cloud(
        info
    ).resolve_deploy(input)
    mutation.fields["podTerminate"].resolve = lambda _root, info, input=None: _cloud(info).resolve_terminate(
        input
    )
    mutation.fields["podStop"].resolve = lambda _root, info, input=None: _cloud(info).resolve_stop(input)
    mutation.fields["podResume"].resolve = lambda _root, info, input=None: _cloud(info).resolve_resume(input)
    return schema


SCHEMA = _build_schema()
