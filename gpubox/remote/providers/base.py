"""The small contract every provider keeps, whether it rents machines or just knows where one is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from gpubox.config import HostConfig
    from gpubox.remote.connection import Endpoint

InstanceState = Literal["running", "stopped", "external"]


@dataclass(frozen=True)
class InstanceStatus:
    state: InstanceState
    """``external``: a machine gpubox does not run or rent (an ``ssh`` host); its state is the host's own."""
    detail: str = ""


@dataclass(frozen=True)
class Offer:
    """A machine a provider would rent out (filled by the cloud providers)."""

    provider: str
    gpu: str
    gpu_count: int
    price_per_hour: float
    region: str = ""


@dataclass(frozen=True)
class ConnectSpec:
    """How to open SSH to a host, including keys gpubox already trusts because it made them."""

    endpoint: Endpoint
    trusted_host_keys: tuple[str, ...] = ()


class Provider(Protocol):
    name: str

    def offers(self, host: HostConfig) -> list[Offer]:
        """Machines this provider could start for *host*; empty for providers that rent nothing."""

    def launch(self, host: HostConfig) -> InstanceStatus:
        """Make the host exist and accept SSH (rent it, start it); a no-op where it already does."""

    def status(self, host: HostConfig) -> InstanceStatus: ...

    def live_price_per_hour(self, host: HostConfig) -> float | None:
        """What the provider charges for *host* now, in US dollars per hour (cloud providers read it from their
        API); None where it does not know, and gpubox falls back to price_per_hour or its catalog."""

    def terminate(self, host: HostConfig) -> str:
        """Stop paying for / running the host where gpubox owns it; return what was done, in words."""

    def connect_spec(self, host: HostConfig) -> ConnectSpec: ...
