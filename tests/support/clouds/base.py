"""What the three fake clouds share: a threaded HTTP server on 127.0.0.1 (or *listen*), recorded requests, fault
knobs, and each instance's own key (the one the cloud gives the instance to act on itself).

Each provider module (``lambda_cloud``, ``vast``, ``runpod``) subclasses :class:`FakeCloud` and supplies its
auth check, its routes and its error bodies. Everything a test can change (knobs, catalogs, instances) is
guarded by one lock, so tests may flip knobs while a client is talking to the server from another thread.

Request handling order, the same for every provider:

1. the request is recorded in :attr:`FakeCloud.requests`;
2. ``rate_limit_per_second`` (when set) answers 429 + ``Retry-After`` to requests that come too fast;
3. a request without the right API key gets the provider's 401;
4. the route is found (unknown paths get the provider's 404);
5. a pending :meth:`FakeCloud.fail_next` for that operation answers its status and body;
6. ``launch_min_interval`` answers 429 to a launch that follows the previous accepted launch too closely;
7. the provider handles the request.
"""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, unquote, urlsplit

#: The operation names accepted by :meth:`FakeCloud.fail_next` (``"list_types"`` is an alias of ``"offers"``).
OPERATIONS = ("offers", "launch", "list_instances", "get_instance", "terminate", "stop")
_ALIASES = {"list_types": "offers"}


@dataclass
class RecordedRequest:
    """One request as the fake received it. Header names are lower-cased; ``body`` is parsed JSON when the
    body was JSON, the raw text when it was not, ``None`` when empty."""

    time: float  # time.monotonic() on arrival
    method: str
    path: str  # without the query string, percent-decoded
    query: str  # raw query string
    headers: dict[str, str]
    body: Any
    operation: str | None = None  # filled once routed ("launch", "offers", ... or another provider name)
    status: int | None = None  # the HTTP status the fake answered
    scoped_to: Any = None  # the instance whose own key signed the request (None: the account's key)

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; str -> text/html; bytes -> as is; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Route:
    operations: tuple[str, ...]  # operation names used by fail_next (first one is recorded)
    handler: Callable[[RecordedRequest], Response]


@dataclass
class FakeInstance:
    """An instance the fake account holds. ``gpu`` is the provider's own name for what was rented (Lambda: the
    instance type name; vast: ``gpu_name``; RunPod: ``gpuTypeId``). ``details`` holds provider-specific data."""

    id: Any
    name: str | None
    gpu: str
    num_gpus: int
    price_per_hour: float
    started_at: float  # epoch seconds
    ready_at: float  # time.monotonic() when booting ends
    region: str | None = None
    ssh_host: str | None = None  # None: the cloud's current ssh_host
    ssh_port: int | None = None  # None: the cloud's current ssh_port
    status: str | None = None  # a forced provider status (set_status); None: booting/running by time
    terminated_at: float | None = None  # epoch seconds
    stopped_at: float | None = None  # epoch seconds: stopped (disk kept), the GPU no longer billed
    resumed_at: float | None = None  # epoch seconds: started again after a stop (billing from then)
    earlier_seconds: float = 0.0  # billed seconds of the runs before the last stop
    details: dict[str, Any] = field(default_factory=dict)
    key: str = field(default_factory=lambda: "instance-" + secrets.token_hex(16))
    """The key the cloud gives the instance itself (vast's CONTAINER_API_KEY, RunPod's pod RUNPOD_API_KEY):
    it may act on this instance only."""

    @property
    def booting(self) -> bool:
        return time.monotonic() < self.ready_at

    def cost(self, now: float | None = None) -> float:
        """Dollars billed so far: price × the hours it ran (from ``started_at``, or its last start again, to its
        stop, termination or now, plus the runs before a stop)."""
        ends = [t for t in (self.terminated_at, self.stopped_at) if t is not None]
        end = min(ends) if ends else (now or time.time())
        began = self.resumed_at if self.resumed_at is not None else self.started_at
        return self.price_per_hour * (self.earlier_seconds + max(0.0, end - began)) / 3600.0


@dataclass
class _Failure:
    operation: str
    status: int
    body: Any
    remaining: int
    retry_after: float | str | None
    delay: float = 0.0


def format_retry_after(value: float | str) -> str:
    """Whole seconds as ``"2"``; fractions as given (``"0.2"``, not standard HTTP, keeps tests fast)."""
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


class FakeCloud:
    """Base of the fake providers. Use as a context manager or call :meth:`start`/:meth:`stop`.

    Knobs (plain attributes; safe to change at any time):

    - ``capacity_available`` (True): False makes launches fail with the provider's insufficient-capacity error
      and hides availability in the catalog.
    - ``quota_exceeded`` (False): True makes launches fail with the provider's quota/credit error.
    - ``terminate_fails`` (False): True makes terminate answer a 500 error; the instance keeps running and
      billing.
    - ``resume_capacity`` (True): False: the machine holding a stopped instance has no GPU free for it, and
      starting it again fails as the provider says so (RunPod).
    - ``rate_limit_per_second`` (None): when set, a request arriving sooner than ``1/rate`` seconds after the
      previous accepted request gets 429 with the provider's body and an integer ``Retry-After``.
    - ``launch_min_interval`` (0): a launch sooner than this many seconds after the previous accepted launch
      gets 429 (Lambda really allows one launch per 12 s).
    - ``boot_seconds`` (0.5): how long a launched instance stays booting (no IP, no ports).
    - ``ssh_host`` / ``ssh_port``: the SSH endpoint reported for running instances (read at request time, so
      changing them after a launch moves existing instances too, unless the instance has its own).
    """

    PROVIDER: ClassVar[str] = "fake"
    DEFAULT_SSH_PORT: ClassVar[int] = 22
    STOPPED_STATUS: ClassVar[str] = "stopped"
    """The provider's status word for a stopped instance."""

    def __init__(
        self,
        api_key: str = "test-api-key",
        *,
        ssh_host: str = "127.0.0.1",
        ssh_port: int | None = None,
        boot_seconds: float = 0.5,
        rate_limit_per_second: float | None = None,
        launch_min_interval: float = 0.0,
        listen: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.listen = listen
        """The address the server listens on (a namespace host's uplink gateway, for a guardian to reach)."""
        self.ssh_host = ssh_host
        self.ssh_port = self.DEFAULT_SSH_PORT if ssh_port is None else ssh_port
        self.boot_seconds = boot_seconds
        self.rate_limit_per_second = rate_limit_per_second
        self.launch_min_interval = launch_min_interval
        self.on_launch: Callable[[FakeInstance], None] | None = None
        """Called with each instance the API launches, as it starts (a test gives its sshd the instance's
        variables: its id, its own key)."""
        self.capacity_available = True
        self.quota_exceeded = False
        self.resume_capacity = True
        self.terminate_fails = False
        self.lock = threading.RLock()
        self.instances: dict[Any, FakeInstance] = {}
        self.terminated: dict[Any, FakeInstance] = {}
        self.requests: list[RecordedRequest] = []
        self._failures: list[_Failure] = []
        self._last_accepted: float | None = None
        self._last_launch: float | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            return self
        server = _Server((self.listen, 0), _Handler)
        server.cloud = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.PROVIDER}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"fake {self.PROVIDER} server is not started")
        return int(self._server.server_address[1])

    @property
    def root_url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL a client configures as ``api_url``."""
        return self.root_url

    # ----------------------------------------------------------------- knobs

    def fail_next(
        self,
        operation: str,
        status: int,
        body: Any = None,
        count: int = 1,
        retry_after: float | str | None = None,
        *,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests of ``operation`` with ``status`` and ``body`` (default: the
        provider's usual error body for that status; a ``str`` body is sent as text/html, like a proxy's error
        page). ``retry_after`` adds a ``Retry-After`` header. ``delay`` sleeps that long before answering.
        Calls queue up: two calls fail the next requests in the order they were made.
        Operations: ``offers`` (alias ``list_types``), ``launch``, ``list_instances``, ``get_instance``,
        ``terminate`` (plus provider extras, see the subclass)."""
        op = self._check_operation(operation)
        if count < 1:
            raise ValueError("count must be >= 1")
        with self.lock:
            self._failures.append(_Failure(op, status, body, count, retry_after, delay))

    def delay_next(self, operation: str, seconds: float, count: int = 1) -> None:
        """Answer the next ``count`` requests of ``operation`` normally, but only after ``seconds``."""
        op = self._check_operation(operation)
        with self.lock:
            self._failures.append(_Failure(op, 0, None, count, None, seconds))

    def clear_failures(self) -> None:
        with self.lock:
            self._failures.clear()

    def set_status(self, instance_id: Any, status: str | None) -> None:
        """Force an instance's provider status (e.g. Lambda "unhealthy", vast "exited", RunPod "EXITED");
        ``None`` goes back to the booting/running-by-time behaviour."""
        with self.lock:
            self.instances[self._coerce_id(instance_id)].status = status

    def finish_booting(self, instance_id: Any | None = None) -> None:
        """End the boot period now for one instance, or for all."""
        with self.lock:
            targets = (
                self.instances.values()
                if instance_id is None
                else [self.instances[self._coerce_id(instance_id)]]
            )
            for instance in targets:
                instance.ready_at = min(instance.ready_at, time.monotonic())

    def remove_instance(self, instance_id: Any) -> None:
        """Make an instance vanish as if terminated elsewhere (another laptop, the web console)."""
        with self.lock:
            instance = self.instances.pop(self._coerce_id(instance_id))
            instance.terminated_at = time.time()
            self.terminated[instance.id] = instance

    def billed_dollars(self) -> float:
        """Everything billed so far, running and terminated instances together."""
        with self.lock:
            now = time.time()
            return sum(i.cost(now) for i in [*self.instances.values(), *self.terminated.values()])

    def stop_instance(self, instance_id: Any) -> FakeInstance:
        """Stop an instance as the cloud does (the GPU no longer billed, the disk kept): its status becomes
        :attr:`STOPPED_STATUS` and :attr:`FakeInstance.stopped_at` now. Stopping a stopped one changes nothing."""
        with self.lock:
            instance = self.instances[self._coerce_id(instance_id)]
            if instance.stopped_at is None:
                instance.stopped_at = time.time()
                instance.status = self.STOPPED_STATUS
            return instance

    def resume_instance(self, instance_id: Any) -> FakeInstance:
        """Start a stopped instance again as the cloud does: billed from now, booting for ``boot_seconds``.
        Starting a running one changes nothing."""
        with self.lock:
            instance = self.instances[self._coerce_id(instance_id)]
            if instance.stopped_at is not None:
                began = instance.resumed_at if instance.resumed_at is not None else instance.started_at
                instance.earlier_seconds += max(0.0, instance.stopped_at - began)
                instance.resumed_at, instance.stopped_at, instance.status = time.time(), None, None
                instance.ready_at = time.monotonic() + self.boot_seconds
            return instance

    def requests_for(self, operation: str) -> list[RecordedRequest]:
        op = _ALIASES.get(operation, operation)
        with self.lock:
            return [r for r in self.requests if r.operation == op]

    # ----------------------------------------------------------------- for subclasses

    def _coerce_id(self, instance_id: Any) -> Any:
        return instance_id

    def _check_operation(self, operation: str) -> str:
        op = _ALIASES.get(operation, operation)
        if op not in self._operations():
            raise ValueError(
                f"unknown operation {operation!r} for fake {self.PROVIDER}: {sorted(self._operations())}"
            )
        return op

    def _operations(self) -> Iterable[str]:
        return OPERATIONS

    def _new_instance(
        self,
        *,
        instance_id: Any,
        name: str | None,
        gpu: str,
        num_gpus: int,
        price_per_hour: float,
        started_at: float | None,
        booting: bool,
        region: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> FakeInstance:
        now_wall, now_mono = time.time(), time.monotonic()
        if started_at is None:
            started_at = now_wall
        ready_at = now_mono + self.boot_seconds if booting else now_mono - max(0.0, now_wall - started_at)
        instance = FakeInstance(
            id=instance_id,
            name=name,
            gpu=gpu,
            num_gpus=num_gpus,
            price_per_hour=price_per_hour,
            started_at=started_at,
            ready_at=ready_at,
            region=region,
            details=details or {},
        )
        with self.lock:
            self.instances[instance_id] = instance
        if booting and self.on_launch is not None:
            self.on_launch(instance)
        return instance

    def _terminate(self, instance: FakeInstance) -> None:
        with self.lock:
            self.instances.pop(instance.id, None)
            instance.terminated_at = time.time()
            self.terminated[instance.id] = instance

    def _endpoint(self, instance: FakeInstance) -> tuple[str, int]:
        host = instance.ssh_host if instance.ssh_host is not None else self.ssh_host
        port = instance.ssh_port if instance.ssh_port is not None else self.ssh_port
        return host, port

    def _authorized(self, request: RecordedRequest) -> bool:
        raise NotImplementedError

    def _key_of(self, request: RecordedRequest) -> str:
        """The key a request carries (``Authorization: Bearer`` or ``?api_key=``), "" when none."""
        scheme, _, value = (request.header("authorization") or "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return (request.params.get("api_key") or [""])[0]

    def _account_or_instance_key(self, request: RecordedRequest) -> bool:
        """The account's key, or an instance's own key (then :attr:`RecordedRequest.scoped_to` names it)."""
        key = self._key_of(request)
        if not key:
            return False
        if secrets.compare_digest(key, self.api_key):
            return True
        with self.lock:
            for instance in [*self.instances.values(), *self.terminated.values()]:
                if secrets.compare_digest(key, instance.key):
                    request.scoped_to = instance.id
                    return True
        return False

    def instance_key(self, instance_id: Any) -> str:
        """The key the cloud gives instance *instance_id* to act on itself."""
        with self.lock:
            return self.instances[self._coerce_id(instance_id)].key

    def _unauthorized(self) -> Response:
        raise NotImplementedError

    def _error(self, status: int, message: str | None = None) -> Response:
        """The provider's default error response for ``status``."""
        raise NotImplementedError

    def _bad_json(self) -> Response:
        return self._error(400, "Request body is not valid JSON")

    def _route(self, request: RecordedRequest) -> Route | Response:
        raise NotImplementedError

    # ----------------------------------------------------------------- dispatch

    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> Response:
        split = urlsplit(target)
        body: Any = None
        bad_json = False
        if raw:
            text = raw.decode("utf-8", "replace")
            try:
                body = json.loads(text)
            except ValueError:
                body, bad_json = text, True
        request = RecordedRequest(
            time=time.monotonic(),
            method=method,
            path=unquote(split.path),
            query=split.query,
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
        )
        with self.lock:
            self.requests.append(request)
        try:
            response = self._respond(request, bad_json)
        except Exception as exc:  # a bug in the fake: answer 500 and keep serving
            response = self._error(500, f"fake {self.PROVIDER} crashed: {exc!r}")
        request.status = response.status
        return response

    def _respond(self, request: RecordedRequest, bad_json: bool) -> Response:
        wait = self._rate_limited()
        if wait is not None:
            return self._with_retry_after(self._error(429), wait)
        if not self._authorized(request):
            return self._unauthorized()
        route = self._route(request)
        if isinstance(route, Response):
            return route
        request.operation = route.operations[0] if route.operations else None
        if bad_json:
            return self._bad_json()
        delay = 0.0
        failure = self._take_failure(route.operations)
        if failure is not None:
            if failure.status == 0:  # delay_next
                delay = failure.delay
            else:
                response = (
                    self._error(failure.status)
                    if failure.body is None
                    else Response(failure.status, failure.body)
                )
                if failure.retry_after is not None:
                    response.headers["Retry-After"] = format_retry_after(failure.retry_after)
                response.delay = failure.delay
                return response
        if "launch" in route.operations and self.launch_min_interval > 0:
            with self.lock:
                now = time.monotonic()
                if self._last_launch is not None and now - self._last_launch < self.launch_min_interval:
                    wait = self.launch_min_interval - (now - self._last_launch)
                    return self._with_retry_after(self._error(429), wait)
                self._last_launch = now
        response = route.handler(request)
        response.delay = max(response.delay, delay)
        return response

    def _with_retry_after(self, response: Response, wait: float) -> Response:
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    def _rate_limited(self) -> float | None:
        with self.lock:
            rate = self.rate_limit_per_second
            now = time.monotonic()
            if rate:
                interval = 1.0 / rate
                if self._last_accepted is not None and now - self._last_accepted < interval:
                    return interval - (now - self._last_accepted)
            self._last_accepted = now
            return None

    def _take_failure(self, operations: tuple[str, ...]) -> _Failure | None:
        with self.lock:
            for failure in self._failures:
                if failure.operation in operations:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self._failures.remove(failure)
                    return failure
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    cloud: FakeCloud


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        response = self.server.cloud._dispatch(self.command, self.path, dict(self.headers.items()), raw)
        if response.delay:
            time.sleep(response.delay)
        if isinstance(response.body, (dict, list)):
            data, ctype = json.dumps(response.body).encode(), "application/json"
        elif isinstance(response.body, str):
            data, ctype = response.body.encode(), "text/html; charset=utf-8"
        elif isinstance(response.body, bytes):
            data, ctype = response.body, "application/octet-stream"
        else:
            data, ctype = b"", "application/json"
        self.send_response(response.status)
        headers = {"Content-Type": ctype, **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass
