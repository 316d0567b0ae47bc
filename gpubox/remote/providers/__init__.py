"""Where hosts come from: machines you already have (``ssh``), the built-in ``local`` host, and machines
rented from Lambda Cloud, vast.ai and RunPod."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.remote.providers.base import ConnectSpec, Instance, InstanceStatus, Offer, Provider

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProviderSettings
    from gpubox.remote.providers.cloud import CloudApi

__all__ = ["ConnectSpec", "Instance", "InstanceStatus", "Offer", "Provider", "cloud_api", "provider_for"]


def provider_for(host: HostConfig) -> Provider:
    if host.provider == "local":
        from gpubox.remote.providers.local import LocalProvider

        return LocalProvider()
    if host.rented:
        from gpubox.remote.providers.cloud import CloudProvider

        return CloudProvider(host.provider)
    from gpubox.remote.providers.ssh import SshProvider

    return SshProvider()


def cloud_api(settings: ProviderSettings) -> CloudApi:
    """The API client of one cloud provider (its key is read from the environment when first needed)."""
    if settings.name == "lambda":
        from gpubox.remote.providers.lambda_cloud import LambdaApi

        return LambdaApi(settings)
    if settings.name == "vast":
        from gpubox.remote.providers.vast import VastApi

        return VastApi(settings)
    from gpubox.remote.providers.runpod import RunPodApi

    return RunPodApi(settings)
