"""The small contract every provider keeps, whether it rents machines or just knows where one is."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

from gpubox.record import record

if TYPE_CHECKING:
    from pathlib import Path

    from gpubox.config import HostConfig
    from gpubox.remote.connection import Endpoint
    from gpubox.remote.providers.registry import ProviderSpec

InstanceState = Literal["running", "stopped", "external", "unknown"]


@record
class InstanceStatus:
    state: InstanceState
    """``external``: a machine gpubox does not run or rent (an ``ssh`` host); its state is the host's own.
    ``unknown``: a rented machine whose provider could not be asked just now (it counts as billing)."""
    detail: str = ""


@record
class Offer:
    """A machine a cloud provider would rent out now, in the provider's own terms made comparable."""

    provider: str
    gpu: str
    """The GPU model as the provider names it ("A100 SXM4 40 GB", "RTX 4090")."""
    gpu_count: int
    price_per_hour: float
    """US dollars per hour for the whole machine."""
    region: str = ""
    offer_id: str = ""
    """What to launch: a Lambda ``type@region``, a vast.ai ask id, a RunPod GPU type id."""
    gpu_memory_gb: float | None = None
    compute_capability: str | None = None
    """As the provider reports it ("8.6", vast only); else gpubox finds it from the GPU name."""
    cuda_max: str | None = None
    """The highest CUDA the machine's driver runs, where the provider says (vast)."""
    driver_version: str | None = None
    instance_type: str | None = None
    detail: str = ""
    """Anything else worth a glance: reliability, stock, vCPUs and memory."""


InstancePhase = Literal["booting", "running", "stopping", "stopped", "terminated", "unknown"]


@record
class Instance:
    """A rented machine as the provider's API describes it now."""

    provider: str
    instance_id: str
    name: str
    phase: InstancePhase
    price_per_hour: float | None
    ssh_host: str | None = None
    ssh_port: int | None = None
    started_at: float | None = None
    """Wall-clock time the provider says it started, where it says."""
    gpu: str = ""
    gpu_count: int = 0
    region: str = ""
    status_text: str = ""
    """The provider's own word for its state ("active", "loading", "RUNNING")."""
    stopped_at: float | None = None
    """Wall-clock time the provider says a stopped instance stopped, where it says (RunPod); the ledger closes
    there when it stopped while no gpubox held it (its guardian's stop)."""

    @property
    def billing(self) -> bool:
        """Whether this instance costs money now (a stopped vast instance still bills for its disk, but gpubox
        counts only machines that run)."""
        return self.phase in ("booting", "running", "stopping", "unknown")

    @property
    def ssh_ready(self) -> bool:
        return self.phase == "running" and bool(self.ssh_host) and bool(self.ssh_port)


@record
class ConnectSpec:
    """How to open SSH to a host, including keys gpubox already trusts because it made them."""

    endpoint: Endpoint
    trusted_host_keys: tuple[str, ...] = ()
    pin_file: Path | None = None
    """Where host keys accepted for this host are pinned (default: gpubox's known_hosts)."""


class Provider(Protocol):
    """What gpubox does with a host of one kind; built by :meth:`ProviderSpec.provider` with its spec."""

    name: str
    spec: ProviderSpec

    def launch(self, host: HostConfig) -> InstanceStatus:
        """Make the host accept SSH where that costs nothing (start the local sshd); a rented host must already
        run (``gpubox up`` rents it, after asking)."""

    def status(self, host: HostConfig) -> InstanceStatus: ...

    def live_price_per_hour(self, host: HostConfig) -> float | None:
        """What the provider charges for *host* now, in US dollars per hour (cloud providers read it from their
        API); None where it does not know, and gpubox falls back to price_per_hour or its catalog."""

    def terminate(self, host: HostConfig) -> str:
        """Stop paying for / running the host where gpubox owns it; return what was done, in words."""

    def connect_spec(self, host: HostConfig) -> ConnectSpec: ...
