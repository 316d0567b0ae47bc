"""Where hosts come from: machines you already have (``ssh``), the built-in ``local`` host, and machines
rented from Lambda Cloud, vast.ai and RunPod. :mod:`~gpubox.remote.providers.registry` lists them all."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.remote.providers.base import ConnectSpec, Instance, InstanceStatus, Offer, Provider
from gpubox.remote.providers.registry import provider_spec

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProviderSettings
    from gpubox.remote.providers.cloud import CloudApi

__all__ = [
    "ConnectSpec",
    "Instance",
    "InstanceStatus",
    "Offer",
    "Provider",
    "cloud_api",
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
    return provider_for(host).live_price_per_hour(host)
