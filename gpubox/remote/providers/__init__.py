"""Where hosts come from: machines you already have (``ssh``), the built-in ``local`` host, and machines
rented from Lambda Cloud, vast.ai and RunPod. :mod:`~gpubox.remote.providers.registry` lists them all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gpubox.lazy import lazy_exports
from gpubox.remote.providers.registry import provider_spec

# base.py's classes load on first use (PEP 562), not with the package: reading hosts.toml imports the registry
# below this package, and needs none of them.
if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProviderSettings
    from gpubox.cost import HourlyPrice
    from gpubox.remote.providers.base import ConnectSpec, Instance, InstanceStatus, Offer, Provider
    from gpubox.remote.providers.cloud import CloudApi

__all__ = [
    "ConnectSpec",
    "Instance",
    "InstanceStatus",
    "Offer",
    "Provider",
    "cloud_api",
    "host_price",
    "live_price",
    "provider_for",
]


def provider_for(host: HostConfig) -> Provider:
    return host.spec.provider()


def cloud_api(settings: ProviderSettings) -> CloudApi:
    """The API client of one cloud provider (its key is read from the environment when first needed)."""
    return provider_spec(settings.name).api(settings)


def live_price(host: HostConfig) -> float | None:
    """What *host*'s provider charges for it now, in US dollars per hour (for a rented host, the price gpubox
    recorded from the provider at launch: no API call); None for ssh and local hosts. Hand it to
    :func:`gpubox.cost.hourly_price`."""
    if not host.spec.rents:
        return None  # ssh and local hosts have none: their provider's module need not load (`gpubox runs`)
    return provider_for(host).live_price_per_hour(host)


def host_price(host: HostConfig, probe: Mapping[str, Any] | None = None) -> HourlyPrice:
    """What *host* costs per hour (:func:`gpubox.cost.hourly_price`), given its live price and the GPUs in
    *probe*, its last probe."""
    from gpubox.cost import hourly_price

    smi = (probe or {}).get("nvidia_smi")
    gpus = []
    if smi and smi.get("available"):  # only an nvidia-smi that answered lists GPUs (see snapshot_from_probe)
        # The GPU readers load only here, for a host with GPUs: `gpubox runs` on a CPU host never needs them.
        from gpubox.remote.gpu import snapshot_from_probe

        gpus = [gpu.name for gpu in snapshot_from_probe(smi).gpus]
    return hourly_price(host, gpus, live=live_price(host))


__getattr__ = lazy_exports(
    __name__, {name: "base" for name in ("ConnectSpec", "Instance", "InstanceStatus", "Offer", "Provider")}
)
