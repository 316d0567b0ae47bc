"""What the three cloud providers share: an HTTP client that paces, retries and keeps the API key to itself,
and the provider side of a rented host (the instance gpubox recorded for it).

Each provider's own module (``lambda_cloud``, ``vast``, ``runpod``) only translates between its API and
:class:`Offer` / :class:`Instance`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gpubox.errors import (
    GpuboxError,
    ProviderAuthFailed,
    ProviderError,
    ProviderUnreachable,
    UsageError,
)
from gpubox.remote.providers.base import ConnectSpec, Instance, InstanceStatus, Offer

if TYPE_CHECKING:
    import httpx

    from gpubox.config import HostConfig, ProviderSettings
    from gpubox.remote.providers.registry import ProviderSpec
    from gpubox.state import InstanceRecord

__all__ = [
    "INSTANCE_PREFIX",
    "ApiClient",
    "CloudApi",
    "CloudProvider",
    "ExplainsShortage",
    "OfferQuery",
    "Resumes",
    "forget_vanished",
    "guardian_due",
    "host_from_instance_name",
    "instance_name",
    "settle_ended",
    "settle_stopped",
]

INSTANCE_PREFIX = "gpubox-"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 5
RETRY_AFTER_CAP = 30.0


def instance_name(host: str) -> str:
    """The name (label) gpubox gives an instance it launches: how it finds its own machines again, even after
    the laptop's state is gone."""
    import secrets

    return f"{INSTANCE_PREFIX}{host}-{secrets.token_hex(3)}"


def host_from_instance_name(name: str) -> str | None:
    """The host an instance was launched for, from its gpubox name; None for instances gpubox did not name."""
    if not name.startswith(INSTANCE_PREFIX):
        return None
    rest = name[len(INSTANCE_PREFIX) :]
    host, _, suffix = rest.rpartition("-")
    if not host or len(suffix) != 6 or any(c not in "0123456789abcdef" for c in suffix):
        return None
    return host


@dataclass(frozen=True)
class OfferQuery:
    """What to look for; every field is optional and matched loosely (GPU names vary between providers)."""

    gpu: str | None = None
    gpu_count: int | None = None
    max_price: float | None = None
    region: str | None = None
    instance_type: str | None = None
    cloud_type: str = "secure"

    @classmethod
    def for_host(cls, host: HostConfig) -> OfferQuery:
        return cls(
            gpu=host.gpu,
            # An instance type (Lambda's) picks its GPU count itself, unless a GPU is named as well.
            gpu_count=host.gpu_count if (host.gpu or not host.instance_type) else None,
            max_price=host.max_price_per_hour,
            region=host.region,
            instance_type=host.instance_type,
            cloud_type=host.cloud_type,
        )

    def matches(self, offer: Offer) -> bool:
        if self.gpu and not gpu_matches(self.gpu, offer.gpu):
            return False
        if self.gpu_count is not None and offer.gpu_count != self.gpu_count:
            return False
        if self.max_price is not None and offer.price_per_hour > self.max_price + 1e-9:
            return False
        if self.region and self.region.lower() not in offer.region.lower():
            return False
        return not (self.instance_type and offer.instance_type != self.instance_type)


def _words(text: str) -> list[str]:
    import re

    text = text.lower().replace("geforce", " ").replace("nvidia", " ").replace("tesla", " ")
    return re.findall(r"[a-z]+|\d+", text)


def gpu_matches(wanted: str, offered: str) -> bool:
    """ "A100" matches "A100 SXM4 40 GB" and "NVIDIA A100 80GB PCIe"; "RTX 4090" matches "RTX_4090";
    "H100 SXM" does not match "H100 PCIe". Every word asked for must be in the offer, in any order."""
    have = _words(offered)
    return all(word in have for word in _words(wanted))


class CloudApi(Protocol):
    """One provider's API, in gpubox's terms."""

    name: str
    settings: ProviderSettings

    def offers(self, query: OfferQuery) -> list[Offer]: ...

    def launch(self, host: HostConfig, offer: Offer, name: str) -> str:
        """Rent *offer* for *host* under *name*; return the new instance id as soon as the provider gives it."""

    def instances(self) -> list[Instance]:
        """Every instance in the account (gpubox's and others')."""

    def instance(self, instance_id: str) -> Instance | None:
        """The instance, or None when the provider no longer knows it."""

    def terminate(self, instance_id: str) -> None:
        """End the instance (raise ProviderError if the provider refuses); an unknown id is not an error."""


class Resumes(CloudApi, Protocol):
    """The API of a cloud with :attr:`~gpubox.remote.providers.registry.Capability.RESUME`."""

    def resume(self, instance_id: str, gpu_count: int, name: str = "") -> None:
        """Start the stopped instance again with what its stop kept (gpubox's *name* for it, to undo what its
        guardian noted when it stopped it); raise ProviderError with the provider's reason when it cannot now
        (its machine's GPUs rented by someone else meanwhile)."""


class ExplainsShortage(CloudApi, Protocol):
    """The API of a cloud with :attr:`~gpubox.remote.providers.registry.Capability.SHORTAGE_REASON`."""

    def describe_shortage(self, query: OfferQuery) -> str:
        """Why no offer matched *query*, in the provider's terms; "" when it cannot tell."""


# ------------------------------------------------------------------------------------------------- pacing


class RateLimit:
    """At most one request per *interval* seconds, shared by every client of the same API in this process."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if self.interval <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def push_back(self, seconds: float) -> None:
        """The server said to wait (Retry-After): nobody here asks again before then."""
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


_LIMITS: dict[tuple[str, str, str], RateLimit] = {}
_LIMITS_LOCK = threading.Lock()


def _limit(provider: str, url: str, kind: str, interval: float) -> RateLimit:
    with _LIMITS_LOCK:
        return _LIMITS.setdefault((provider, url, kind), RateLimit(interval))


# -------------------------------------------------------------------------------------------------- HTTP

ErrorText = Callable[["httpx.Response", Any], tuple[str | None, str]]
"""(code, message) from an error response and its parsed body (None when not JSON)."""


class ApiClient:
    """httpx with what every provider needs: auth from the environment, pacing, retries on 429/5xx with
    backoff (honouring Retry-After), and errors that say what went wrong without ever showing the key."""

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        error_text: ErrorText,
        pace: dict[str, float] | None = None,
        auth: str = "bearer",
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.error_text = error_text
        self.pace = pace or {}
        self.auth = auth
        self._client: httpx.Client | None = None
        self._key: str | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._key = self.settings.api_key()
            headers = {"Accept": "application/json", "User-Agent": "gpubox"}
            auth: httpx.Auth | None = None
            if self.auth == "bearer":
                headers["Authorization"] = f"Bearer {self._key}"
            else:
                auth = httpx.BasicAuth(self._key, "")
            self._client = httpx.Client(
                base_url=self.settings.api_url,
                headers=headers,
                auth=auth,
                timeout=httpx.Timeout(
                    self.settings.request_timeout, connect=min(10.0, self.settings.request_timeout)
                ),
                follow_redirects=False,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool = True,
        pace: str = "default",
        missing_ok: bool = False,
    ) -> Any:
        """Send one request and return its parsed JSON body; None for a 404 when *missing_ok*.

        A request that may have changed something (``idempotent=False``, such as a launch) is retried only
        when the server surely did not act on it: a 429, or a connection that never opened."""
        import httpx

        client = self._http()
        limit = _limit(
            self.name, self.settings.api_url, pace, self.pace.get(pace, self.pace.get("default", 0.0))
        )
        last = ""
        for attempt in range(ATTEMPTS):
            limit.wait()
            try:
                response = client.request(method, path, json=json, params=params)
            except httpx.ConnectError as exc:
                last = f"cannot connect: {self._reason(exc)}"
            except httpx.TimeoutException as exc:
                last = f"no answer within {self.settings.request_timeout:g} s ({type(exc).__name__})"
                if not idempotent:
                    raise self._maybe_acted(what, last) from None
            except httpx.HTTPError as exc:
                last = self._reason(exc)
                if not idempotent:
                    raise self._maybe_acted(what, last) from None
            else:
                body = self._body(response)
                status = response.status_code
                if status < 300:
                    if body is _NOT_JSON:
                        raise ProviderError(
                            f"{self.name}: {what}: the API answered with something that is not JSON",
                            provider=self.name,
                            status=status,
                        )
                    return body
                if status == 404 and missing_ok:
                    return None
                code, message = self.error_text(response, None if body is _NOT_JSON else body)
                message = self.redact(message)
                if status == 401:
                    raise ProviderAuthFailed(
                        f"{self.name} refused the API key in ${self.settings.api_key_env} (HTTP 401: {message}); "
                        f"check that variable holds a valid {self.name} API key"
                    )
                if status in RETRY_STATUSES:
                    last = f"HTTP {status}: {message}"
                    if status != 429 and not idempotent:
                        raise self._maybe_acted(what, last)
                    wait = _retry_after(response) if status in (429, 503) else None
                    if wait is not None:
                        limit.push_back(min(wait, RETRY_AFTER_CAP))
                        if attempt < ATTEMPTS - 1:
                            continue
                else:
                    raise ProviderError(
                        f"{self.name}: {what}: {message}", provider=self.name, code=code, status=status
                    )
            if attempt < ATTEMPTS - 1:
                time.sleep(min(8.0, 0.5 * 2**attempt) * (0.75 + random.random() / 2))
        raise ProviderUnreachable(f"{self.name}: {what} failed after {ATTEMPTS} tries ({last})")

    def _maybe_acted(self, what: str, why: str) -> GpuboxError:
        return ProviderError(
            f"{self.name}: {what} failed ({why}); the provider may have acted on it anyway: "
            "`gpubox status` lists any instance it started",
            provider=self.name,
        )

    def _reason(self, exc: Exception) -> str:
        text = str(exc) or type(exc).__name__
        return self.redact(text)

    @staticmethod
    def _body(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return _NOT_JSON


_NOT_JSON = object()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return 1.0
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 1.0


# ------------------------------------------------------------------------------------- the rented host


class CloudProvider:
    """The :class:`~gpubox.remote.providers.base.Provider` of a rented host: whatever instance gpubox
    recorded for it, checked against the provider's API."""

    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def api(self, host: HostConfig) -> CloudApi:
        from gpubox.remote.providers import cloud_api

        return cloud_api(host.provider_settings())

    @staticmethod
    def recorded(host: HostConfig) -> InstanceRecord | None:
        from gpubox.state import open_state

        with open_state() as state:
            return state.current_instance(host.name)

    def launch(self, host: HostConfig) -> InstanceStatus:
        record = self.recorded(host)
        if record is None or record.ssh_host is None:
            raise UsageError(
                f"{host.name} has no running instance: `gpubox up {host.name}` rents one (it shows the price "
                "and asks first)"
            )
        return InstanceStatus("running", f"{self.name} instance {record.instance_id}")

    def status(self, host: HostConfig) -> InstanceStatus:
        from gpubox.errors import BadInput, HostError

        record = self.recorded(host)
        if record is None:
            return InstanceStatus("stopped", f"no instance rented (`gpubox up {host.name}` rents one)")
        try:
            instance = self.api(host).instance(record.instance_id)
        except (ProviderError, HostError, BadInput) as exc:
            return InstanceStatus(
                "unknown", f"{self.name} instance {record.instance_id}, recorded as billing; {exc}"
            )
        if instance is None or not instance.billing:
            return InstanceStatus("stopped", settle_ended(host, record, instance))
        if record.stopped:
            resumed_elsewhere(host, record, instance)
        note_instance(record, instance)
        return InstanceStatus("running", describe_instance(instance, record.launched_at))

    def live_price_per_hour(self, host: HostConfig) -> float | None:
        record = self.recorded(host)
        return record.price_per_hour if record else None

    def terminate(self, host: HostConfig) -> str:
        record = self.recorded(host)
        if record is None:
            return f"{host.name}: no instance recorded, nothing to terminate"
        return terminate_recorded(self.api(host), host, record)

    def connect_spec(self, host: HostConfig) -> ConnectSpec:
        import getpass

        from gpubox import paths
        from gpubox.errors import HostUnreachable
        from gpubox.remote.connection import Endpoint

        record = self.recorded(host)
        if record is None:
            raise UsageError(
                f"{host.name} has no running instance: `gpubox up {host.name}` rents one (it shows the price "
                "and asks first)"
            )
        if record.ssh_host is None or record.ssh_port is None:
            raise HostUnreachable(
                f"{self.name} instance {record.instance_id} of {host.name} has no SSH address yet; "
                f"`gpubox up {host.name}` waits for it"
            )
        endpoint = Endpoint(
            alias=host.name,
            hostname=record.ssh_host,
            port=record.ssh_port,
            user=host.user or self.spec.default_user or getpass.getuser(),
            identity_files=(host.identity_file,) if host.identity_file else (),
        )
        # Cloud addresses are reused by the next tenant: pin each instance's key on its own, so a new machine
        # at an old address asks to be trusted instead of looking like an attack (and an attack still fails).
        pin_file = paths.state_dir() / "instances" / f"{self.name}-{record.instance_id}.known_hosts"
        return ConnectSpec(endpoint, pin_file=pin_file)


def describe_instance(instance: Instance, launched_at: float | None = None) -> str:
    from gpubox.fmt import format_duration, format_usd

    parts = [f"{instance.provider} instance {instance.instance_id}"]
    if instance.status_text:
        parts.append(instance.status_text)
    if instance.gpu:
        parts.append(f"{instance.gpu_count}× {instance.gpu}" if instance.gpu_count > 1 else instance.gpu)
    if instance.price_per_hour is not None:
        parts.append(f"{format_usd(instance.price_per_hour)}/h")
    started = launched_at or instance.started_at
    if started:
        parts.append(f"up {format_duration(max(0.0, time.time() - started))}")
    return ", ".join(parts)


def note_instance(record: InstanceRecord, instance: Instance) -> None:
    """Keep what the provider says (address, price) in the record, for connecting without asking again. Only
    :func:`gpubox.provision.wait_for_ssh` marks it ``running``: that takes SSH answering, not the API's word."""
    from gpubox.state import open_state

    with open_state() as state:
        state.update_instance(
            record.provider,
            record.instance_id,
            ssh_host=instance.ssh_host if instance.ssh_ready else None,
            ssh_port=instance.ssh_port if instance.ssh_ready else None,
            price_per_hour=instance.price_per_hour,
        )


def guardian_due(host: str, now: float | None = None, since: float = 0.0) -> float | None:
    """When the host's guardian was due to stop it, as the last report of the gpubox that held it and died
    said: the autostop countdown (the host was idle), the deadline or the budget, whichever came first. None
    when that report showed no stop coming (the host busy: it could have stopped any time after) or a guardian
    that could not stop it. For an instance whose provider keeps no stop time (Lambda's end, a vast label
    refused), this is the ledger's best end: the guardian stops within one look (1 s) of it. A report from
    before *since* (the instance's launch) was about another instance."""
    from gpubox.state import open_state

    with open_state() as state:
        found = state.died_holder_report(host)
    if found is None or found.at < since:
        return None
    guardian = found.report.get("guardian") or {}
    if not guardian.get("acts"):
        return None
    autostop = found.report.get("autostop")
    due: list[float] = []
    if autostop is not None:
        if autostop.get("state") not in ("counting", "warned") or autostop.get("stops_at") is None:
            return None
        due.append(float(autostop["stops_at"]))
    due += [
        float(guardian[key]) for key in ("deadline_at", "budget_stop_at") if guardian.get(key) is not None
    ]
    now = time.time() if now is None else now
    return min(due) if due and found.at <= min(due) <= now else None


def _when(at: float | None) -> str:
    """`` at 2026-12-05 02:31:09`` (local time), or "" when not known."""
    return "" if at is None else f" at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}"


def settle_ended(host: HostConfig, record: InstanceRecord, instance: Instance | None) -> str:
    """The recorded instance no longer bills (*instance*: the provider's word, None when it no longer knows
    it): a stopped one stays recorded (:func:`settle_stopped`); one that is gone has its record ended and its
    ledger closed. Says what happened."""
    if instance is not None and instance.phase == "stopped":
        return settle_stopped(host, record, instance)
    return forget_vanished(host.name, record)


def forget_vanished(host: str, record: InstanceRecord) -> str:
    """The recorded instance is gone (terminated: by its guardian, or outside gpubox). No provider gpubox rents
    from keeps a terminated instance's end time where its API shows it: the ledger ends where the host's
    guardian was due to stop it (:func:`guardian_due`), else where a gpubox last held it. Says so."""
    provider = record.provider
    due = guardian_due(host, since=record.launched_at)
    if due is not None:
        forget_instance(
            host, record, f"ended by its guardian's countdown ({provider} keeps no record of when)", at=due
        )
        return (
            f"{provider} instance {record.instance_id} is gone: ended{_when(due)} by its guardian's countdown, "
            f"the last one a gpubox here saw ({provider} does not say when)"
        )
    forget_instance(host, record, "ended outside gpubox (the provider no longer runs it)")
    return (
        f"{provider} instance {record.instance_id} is gone (ended by its guardian or outside gpubox; "
        f"{provider} does not say when: the ledger counts until a gpubox last held it)"
    )


def settle_stopped(host: HostConfig, record: InstanceRecord, instance: Instance) -> str:
    """The recorded instance is stopped with its disk kept (its guardian's doing with the laptop gone, or the
    console's): record it so, once, closing the ledger when the provider says it stopped (else where a gpubox
    last held it; the guardian's own record fixes that when `up` starts it again). Says how to go on."""
    from gpubox.remote.providers.registry import Capability
    from gpubox.state import open_state

    provider = record.provider
    when = instance.stopped_at if instance.stopped_at is not None else record.stopped_at
    if when is None and not record.stopped:
        when = guardian_due(host.name, since=record.launched_at)
    if not record.stopped:
        reason = f"stopped outside gpubox ({provider}'s record)"
        with open_state() as state:
            state.stop_instance(provider, record.instance_id, reason, at=when)
            if when is not None:
                state.record_guardian_stop(host.name, when, reason)
            state.close_billing(host.name, at=when, reason=reason)
    at = _when(when)
    ways = f"`gpubox down {host.name}` terminates it"
    if host.spec.supports(Capability.RESUME):
        ways = f"`gpubox up {host.name}` starts it again, " + ways
    unknown = (
        ""
        if when is not None
        else f" ({provider} does not say when: the ledger counts until a gpubox last held it)"
    )
    return (
        f"{provider} instance {record.instance_id} was stopped{at}{unknown} (by its guardian or in the "
        f"{provider} console); its disk is kept, and billed by {provider} for storage: {ways}"
    )


def resumed_elsewhere(host: HostConfig, record: InstanceRecord, instance: Instance) -> None:
    """A recorded stopped instance runs again, started outside gpubox (the console, another laptop): it
    bills again from now."""
    from gpubox.state import open_state

    with open_state() as state:
        state.resume_instance(record.provider, record.instance_id)
        state.open_billing(
            host.name,
            instance.price_per_hour if instance.price_per_hour is not None else record.price_per_hour,
            price_source=f"live price from {record.provider}",
            estimate=False,
        )


def forget_instance(
    host: HostConfig | str, record: InstanceRecord, reason: str, at: float | None = None
) -> None:
    """The instance no longer runs: end its record and its billing, at *at* where the provider says when it
    stopped (the interval of a holder that died before that bills on until then, once), else now."""
    from gpubox.state import open_state

    name = host if isinstance(host, str) else host.name
    with open_state() as state:
        state.end_instance(record.provider, record.instance_id, reason, at=at)
        if at is not None:
            state.record_guardian_stop(name, at, reason)
        state.close_billing(name, at=at, reason=reason)


def terminate_recorded(api: CloudApi, host: HostConfig | str, record: InstanceRecord) -> str:
    """Terminate a recorded instance; if the provider refuses, say so loudly and keep it recorded as billing."""
    from gpubox.errors import BadInput, HostError
    from gpubox.fmt import format_duration, format_usd
    from gpubox.state import open_state

    name = host if isinstance(host, str) else host.name
    try:
        api.terminate(record.instance_id)
    except (ProviderError, HostError, BadInput) as exc:
        with open_state() as state:
            state.update_instance(record.provider, record.instance_id, instance_state="terminate-failed")
        price = f" at {format_usd(record.price_per_hour)}/h" if record.price_per_hour is not None else ""
        raise ProviderError(
            f"could not terminate {record.provider} instance {record.instance_id} of {name}: {exc}. "
            f"IT IS STILL RUNNING AND BILLING{price}: run `gpubox down {name}` again, or terminate it in the "
            f"{record.provider} console",
            provider=record.provider,
        ) from None
    forget_instance(name, record, "terminated by gpubox")
    held = format_duration(max(0.0, time.time() - record.launched_at))
    return f"terminated {record.provider} instance {record.instance_id} of {name} after {held}"
