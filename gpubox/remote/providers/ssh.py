"""Hosts you already have: reached over SSH, never started or stopped by gpubox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpubox.remote.providers.base import ConnectSpec, InstanceStatus

if TYPE_CHECKING:
    from gpubox.config import HostConfig
    from gpubox.remote.providers.registry import ProviderSpec


class SshProvider:
    def __init__(self, spec: ProviderSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def launch(self, host: HostConfig) -> InstanceStatus:
        return InstanceStatus("external", "an ssh host is running whenever its owner keeps it running")

    def status(self, host: HostConfig) -> InstanceStatus:
        return InstanceStatus("external")

    def live_price_per_hour(self, host: HostConfig) -> float | None:
        return None  # paid for elsewhere: price_per_hour in hosts.toml, or the catalog estimate

    def terminate(self, host: HostConfig) -> str:
        return f"{host.name} is an ssh host: gpubox left the machine itself running"

    def connect_spec(self, host: HostConfig) -> ConnectSpec:
        from gpubox.remote.connection import resolve_endpoint

        return ConnectSpec(resolve_endpoint(host))
