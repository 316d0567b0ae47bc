"""Where hosts come from: machines you already have (``ssh``) and the built-in ``local`` host."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.remote.providers.base import ConnectSpec, InstanceStatus, Provider

if TYPE_CHECKING:
    from gpubox.config import HostConfig

__all__ = ["ConnectSpec", "InstanceStatus", "Provider", "provider_for"]


def provider_for(host: HostConfig) -> Provider:
    if host.provider == "local":
        from gpubox.remote.providers.local import LocalProvider

        return LocalProvider()
    from gpubox.remote.providers.ssh import SshProvider

    return SshProvider()
