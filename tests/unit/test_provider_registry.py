"""The provider registry is the one list of providers: every spec in it is checked here, so a cloud added with
one module and one registry line (see gpubox/remote/providers/registry.py) is tested without touching this file.

Each spec: its classes import and keep their contracts, every key it takes validates through hosts.toml, the
keys it requires are refused when missing and the keys it does not take are refused when present, a cloud has
what renting needs (key variable, URL, user), and a cloud's API class talks to its fake server
(tests/support/clouds).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tests.support.clouds as fake_clouds
from gpubox.config import ProviderSettings, load_hosts
from gpubox.config.hosts import HOST_FIELDS
from gpubox.errors import ConfigError
from gpubox.remote.providers import Offer, provider_for
from gpubox.remote.providers.base import Provider
from gpubox.remote.providers.cloud import CloudApi, OfferQuery
from gpubox.remote.providers.registry import (
    CLOUD_NAMES,
    PROVIDER_NAMES,
    SPECS,
    Capability,
    ProviderSpec,
    provider_spec,
)

CLOUDS = [spec for spec in SPECS if spec.rents]

# A valid value for every hosts.toml host key, as TOML; a new key needs one here.
SAMPLES = {
    "provider": None,  # written by the test itself
    "hostname": '"box.example.com"',
    "port": "2222",
    "user": '"me"',
    "identity_file": '"~/.ssh/id_ed25519"',
    "proxy_jump": '"jump@bastion:22"',
    "accept_new": "true",
    "connect_timeout": "10",
    "keepalive_seconds": "30",
    "remote_dir": '"~/work"',
    "python": '"python3.12"',
    "price_per_hour": "1.5",
    "budget_usd": "50",
    "on_budget": '"warn"',
    "autostop_minutes": "30",
    "autostop_gpu_percent": "10",
    "max_hours": "12",
    "stall_minutes": "20",
    "stop_command": '"sudo poweroff"',
    "self_stop": '"key"',
    "gpu": '"A100"',
    "gpu_count": "2",
    "instance_type": '"gpu_1x_a100_sxm4"',
    "region": '"us-east-1"',
    "max_price_per_hour": "3",
    "ssh_key_name": '"me"',
    "image": '"nvidia/cuda:12.4.1-runtime-ubuntu22.04"',
    "disk_gb": "50",
    "cloud_type": '"community"',
    "launch_timeout": "300",
}


def _ids(spec: ProviderSpec) -> str:
    return spec.name


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _host(project: Path, spec: ProviderSpec, keys: set[str]) -> str:
    lines = [f'[hosts.box]\nprovider = "{spec.name}"'] + [f"{key} = {SAMPLES[key]}" for key in sorted(keys)]
    (project / "hosts.toml").write_text("\n".join(lines) + "\n")
    return "box"


def _keeps_contract(thing: object, protocol: type) -> None:
    """*thing* has each public method of *protocol*, taking the same parameters."""
    for name, method in inspect.getmembers(protocol, inspect.isfunction):
        if not name.startswith("_"):
            wanted = list(inspect.signature(method).parameters)[1:]
            assert list(inspect.signature(getattr(thing, name)).parameters) == wanted, name


def _minimal(spec: ProviderSpec) -> set[str]:
    """One key of each requirement: the least a host of *spec* needs."""
    return {requirement.keys[0] for requirement in spec.requires}


def test_the_registry_is_the_one_list() -> None:
    assert tuple(spec.name for spec in SPECS) == PROVIDER_NAMES
    assert len(set(PROVIDER_NAMES)) == len(PROVIDER_NAMES)
    assert tuple(spec.name for spec in CLOUDS) == CLOUD_NAMES
    assert all(provider_spec(spec.name) is spec for spec in SPECS)
    assert set(SAMPLES) == set(HOST_FIELDS)
    # Every key hosts.toml checks is taken by some provider.
    assert set().union(*(spec.keys for spec in SPECS)) == set(HOST_FIELDS)


def test_importing_the_registry_and_the_config_stays_light() -> None:
    code = "import gpubox.remote.providers.registry, gpubox.config, sys; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    top = {name.split(".")[0] for name in loaded.split()}
    assert top.isdisjoint({"httpx", "paramiko", "fabric", "textual", "rich"})


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_its_provider_class_keeps_the_provider_contract(spec: ProviderSpec) -> None:
    provider = spec.provider()
    assert (provider.name, provider.spec) == (spec.name, spec)
    _keeps_contract(provider, Provider)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_its_keys_validate_through_hosts_toml(project: Path, spec: ProviderSpec) -> None:
    assert spec.keys <= set(HOST_FIELDS) and "provider" in spec.keys
    _host(project, spec, _minimal(spec))
    minimal = load_hosts(project).get("box")
    assert minimal.spec is spec and provider_for(minimal).spec is spec
    _host(project, spec, spec.keys - {"provider"})
    every = load_hosts(project).get("box")
    assert every.user == ("me" if "user" in spec.keys else None)
    for requirement in spec.requires:
        assert requirement.needs and set(requirement.keys) <= spec.keys
        _host(project, spec, _minimal(spec) - set(requirement.keys))
        with pytest.raises(ConfigError) as missing:
            load_hosts(project)
        assert str(missing.value) == f"hosts.toml:1: hosts.box: a {spec.name} host needs {requirement.needs}"
    for key in set(HOST_FIELDS) - spec.keys:
        _host(project, spec, _minimal(spec) | {key})
        with pytest.raises(ConfigError, match=f'hosts.box.{key}: not used by provider "{spec.name}"'):
            load_hosts(project)


@pytest.mark.parametrize("spec", SPECS, ids=_ids)
def test_a_cloud_has_what_renting_needs_and_no_other_has_it(project: Path, spec: ProviderSpec) -> None:
    assert all(reason for reason in spec.unsupported.values())
    if not spec.rents:
        assert (spec.api_key_env, spec.api_url, spec.api_class, spec.default_user) == ("", "", "", None)
        return
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*", spec.api_key_env)
    assert re.fullmatch(r"https://[^\s/]+(/\S*)?", spec.api_url) and not spec.api_url.endswith("/")
    assert spec.default_user and spec.stops_on_down and not spec.runs_own_sshd and not spec.on_this_machine
    _host(project, spec, _minimal(spec))
    settings = load_hosts(project).get("box").provider_settings()
    assert settings == ProviderSettings(spec.name, spec.api_key_env, spec.api_url, source=settings.source)


@pytest.mark.parametrize("spec", CLOUDS, ids=_ids)
def test_its_api_class_keeps_the_cloud_api_contract(spec: ProviderSpec) -> None:
    api = spec.api(ProviderSettings.default(spec.name))
    assert (api.name, api.settings.name) == (spec.name, spec.name)
    _keeps_contract(api, CloudApi)
    # A capability declared is a method there, and one declared missing is not.
    assert hasattr(api, "describe_shortage") is spec.supports(Capability.SHORTAGE_REASON)
    # A cloud that can start a stopped instance again says how; one that cannot never leaves one stopped.
    assert hasattr(api, "resume") is spec.supports(Capability.RESUME)
    assert spec.supports(Capability.RESUME) is (spec.self_stop is not None and spec.self_stop.keeps_disk)


@pytest.mark.parametrize("spec", CLOUDS, ids=_ids)
def test_its_api_class_talks_to_its_fake_server(spec: ProviderSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes = [
        kind
        for kind in vars(fake_clouds).values()
        if isinstance(kind, type) and issubclass(kind, fake_clouds.FakeCloud) and spec.name == kind.PROVIDER
    ]
    assert len(fakes) == 1, f"tests/support/clouds has no fake {spec.name} server (PROVIDER = {spec.name!r})"
    monkeypatch.setenv("GPUBOX_TEST_REGISTRY_KEY", "registry-key")
    with fakes[0](api_key="registry-key", boot_seconds=0) as cloud:
        api = spec.api(ProviderSettings(spec.name, "GPUBOX_TEST_REGISTRY_KEY", cloud.url))
        offers = api.offers(OfferQuery(cloud_type="all"))
        assert offers and all(isinstance(o, Offer) and o.provider == spec.name for o in offers)
        assert api.instances() == []
