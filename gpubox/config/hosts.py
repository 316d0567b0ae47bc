"""``hosts.toml``: the hosts gpubox knows (each with its provider's keys, see
:mod:`gpubox.remote.providers.registry`), ``[defaults]`` and ``[providers.NAME]``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from gpubox import paths
from gpubox.config import checks
from gpubox.config.project import ProjectConfig, find_project_root
from gpubox.config.reader import Reader, did_you_mean
from gpubox.fmt import either
from gpubox.record import record
from gpubox.remote.providers.registry import CLOUD_NAMES, PROVIDER_NAMES, SPECS, ProviderSpec, provider_spec

HOSTS_FILE = "hosts.toml"
BUILTIN_LOCAL = "local"


# --------------------------------------------------------------------------------------------------- objects


@record
class HostConfig:
    """One host as configured (or the built-in ``local``), with defaults already applied."""

    name: str
    provider: str = "ssh"
    hostname: str | None = None
    """A DNS name, an address, or a ``Host`` alias from ``~/.ssh/config``; for ``ssh`` it defaults to the
    name."""
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    accept_new: bool = False
    """Pin an unknown host key on first use without asking (``StrictHostKeyChecking=accept-new``)."""
    connect_timeout: float = 15.0
    keepalive_seconds: int = 15
    remote_dir: str | None = None
    """The project folder on the host; ``~/gpubox/<project folder name>-<project id>`` when not set."""
    python: str = "python3"
    price_per_hour: float | None = None
    budget_usd: float | None = None
    """The most this host may cost, over all the time in gpubox's ledger; warnings at 50, 80 and 100 %."""
    on_budget: str = "stop"
    """At 100 % of a budget: ``stop`` the host like an idle one, or only ``warn``."""
    autostop_minutes: float = 0.0
    """Stop the host after it has been idle this long; 0 never does."""
    autostop_gpu_percent: float = 5.0
    """GPU utilisation (of the busiest GPU) below this counts as idle."""
    stall_minutes: float | None = None
    """A run that shows no progress this long (no log line, no new TensorBoard file) is stalled: not activity
    for autostop. None: a run that lives is always activity."""
    max_hours: float | None = None
    """Stop the host at this age (hours since `gpubox up` brought it up) whatever it is doing; warnings 30 and 5
    minutes before. Kept by the host's guardian, so it holds with the laptop gone."""
    self_stop: str | None = None
    """How a rented host's guardian stops it with the laptop gone: ``instance`` (the key the cloud gives the
    instance, vast and RunPod; the default there), ``key`` (the user's API key, placed on the host in a 0600
    file: for Lambda, whose instances carry none; asked once at `up`), ``off`` (never: the host bills on while
    the laptop is away)."""
    stop_command: str | None = None
    """How to stop an ``ssh`` host when it idles out or spends its budget (run there over SSH), e.g. ``sudo
    poweroff``; without one gpubox only warns."""
    # What to rent, for the cloud providers (lambda, vast, runpod).
    gpu: str | None = None
    """A GPU model as the offers show it ("A100", "RTX 4090", "H100 SXM"); matched loosely."""
    gpu_count: int = 1
    instance_type: str | None = None
    """Lambda's instance type name (``gpu_1x_a100_sxm4``); picks the GPU and count itself."""
    region: str | None = None
    """Lambda region name; for vast, a piece of the offer's location ("Sweden", "US")."""
    max_price_per_hour: float | None = None
    """Never rent for more than this (US dollars per hour, the whole machine)."""
    ssh_key_name: str | None = None
    """Lambda: the name of the SSH key registered in the Lambda account, put on the instance at launch."""
    image: str | None = None
    """vast and RunPod: the container image the instance runs."""
    disk_gb: int | None = None
    cloud_type: str = "secure"
    """RunPod: rent from its ``secure`` cloud, the ``community`` one, or ``all``."""
    launch_timeout: float = 600.0
    """Seconds to wait for a new instance to answer SSH before giving up (it stays recorded as billing)."""
    source: str = "<built-in>"
    api: ProviderSettings | None = field(default=None, compare=False, repr=False)
    """How to reach the provider's API, for a rented host."""

    def provider_settings(self) -> ProviderSettings:
        return self.api or ProviderSettings.default(self.provider)

    @property
    def spec(self) -> ProviderSpec:
        """What kind of host this is: rented or not, who runs its sshd, what ``down`` does to it."""
        return provider_spec(self.provider)

    def remote_project_dir(self, project: ProjectConfig | str) -> str:
        """The project's folder on this host: ``remote_dir`` when set, else ``~/gpubox/<name>-<project id>``
        (unique per project), under the folder a stopped instance keeps where that is not its whole disk
        (RunPod's ``/workspace``). Given only a name, the layout of gpubox before project ids:
        ``~/gpubox/<name>``."""
        if self.remote_dir:
            return self.remote_dir
        if isinstance(project, str):
            return legacy_project_dir(project)
        return f"{self.spec.kept_folder or '~'}/gpubox/{project.folder_name}"


def legacy_project_dir(project_name: str) -> str:
    """Where gpubox put a project before folders had the project's id (``~/gpubox/<name>``): adopted by the
    project that synced there, never by another."""
    return f"~/gpubox/{project_name}"


@record
class ProviderSettings:
    """How to talk to one cloud provider's API (``[providers.NAME]``, or its defaults)."""

    name: str
    api_key_env: str
    """The environment variable holding the API key; the key itself is never in a file gpubox reads or
    writes."""
    api_url: str
    request_timeout: float = 20.0
    offers_timeout: float = 15.0
    """The most ``gpubox offers`` waits for this provider before showing the others without it."""
    source: str = "<built-in>"

    @classmethod
    def default(cls, name: str) -> ProviderSettings:
        spec = provider_spec(name)
        return cls(name=name, api_key_env=spec.api_key_env, api_url=spec.api_url)

    def api_key(self) -> str:
        """The key from the environment; a clear error naming the variable when it is missing."""
        from gpubox.errors import BadInput

        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise BadInput(
                f"{self.name}: the API key variable {self.api_key_env} is not set; export it "
                f"(or name another variable with api_key_env in [providers.{self.name}] of hosts.toml)"
            )
        return key


@record
class HostsConfig:
    path: Path | None
    """The file these hosts came from, or None when there is none (only ``local`` then)."""
    hosts: Mapping[str, HostConfig]
    default_host: str | None = None
    total_budget_usd: float | None = None
    """``[defaults] total_budget_usd``: the budget of all hosts together."""
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    """The cloud providers in use: those with a ``[providers.NAME]`` table or a host."""

    def provider_settings(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings.default(name)

    def names(self) -> list[str]:
        return list(self.hosts)

    def get(self, name: str) -> HostConfig:
        from gpubox.errors import UsageError

        try:
            return self.hosts[name]
        except KeyError:
            known = ", ".join(self.hosts) or "none"
            hint = did_you_mean(name, self.hosts)
            raise UsageError(f"unknown host {json.dumps(name)}{hint} (configured: {known})") from None

    def pick(self, name: str | None) -> HostConfig:
        """The host a command acts on: the one named, else ``[defaults] host``, else the only one, else
        local."""
        from gpubox.errors import UsageError

        if name:
            return self.get(name)
        if self.default_host:
            return self.get(self.default_host)
        configured = [h for h in self.hosts if h != BUILTIN_LOCAL]
        if not configured:
            return self.hosts[BUILTIN_LOCAL]
        if len(configured) == 1:
            return self.hosts[configured[0]]
        raise UsageError(
            f"several hosts are configured ({', '.join(configured)}): name one, "
            f'or set [defaults] host = "NAME" in {self.path}'
        )


# ----------------------------------------------------------------------------------------------- schema

HOST_FIELDS: dict[str, checks.Check] = {
    "provider": checks.choice(*PROVIDER_NAMES),
    "hostname": checks.no_space_string("a host name, an address or an ~/.ssh/config alias"),
    "port": checks.integer(1, 65535),
    "user": checks.no_space_string("a user name"),
    "identity_file": checks.path_string,
    "proxy_jump": checks.ssh_target,
    "accept_new": checks.boolean,
    "connect_timeout": checks.number(0, above=True),
    "keepalive_seconds": checks.integer(0, 3600),
    "remote_dir": checks.nonempty_string,
    "python": checks.no_space_string("a python executable"),
    "price_per_hour": checks.number(0),
    "budget_usd": checks.number(0, above=True),
    "on_budget": checks.choice("stop", "warn"),
    "autostop_minutes": checks.minutes_or_off,
    "autostop_gpu_percent": checks.percent,
    "max_hours": checks.number(0, above=True),
    "stall_minutes": checks.number(0, above=True),
    "stop_command": checks.command,
    "self_stop": checks.choice("instance", "key", "off"),
    "gpu": checks.gpu_name,
    "gpu_count": checks.integer(1, 16),
    "instance_type": checks.no_space_string("an instance type name such as gpu_1x_a100_sxm4"),
    "region": checks.nonempty_string,
    "max_price_per_hour": checks.number(0, above=True),
    "ssh_key_name": checks.nonempty_string,
    "image": checks.no_space_string("a container image such as nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04"),
    "disk_gb": checks.integer(10, 10000),
    "cloud_type": checks.choice("secure", "community", "all"),
    "launch_timeout": checks.number(0, above=True),
}
PROVIDER_TABLE_FIELDS: dict[str, checks.Check] = {
    "api_key_env": checks.env_name,
    "api_url": checks.http_url,
    "request_timeout": checks.number(0, above=True),
    "offers_timeout": checks.number(0, above=True),
}
DEFAULTS_FIELDS: dict[str, checks.Check] = {
    "host": checks.no_space_string("a host name"),
    "total_budget_usd": checks.number(0, above=True),
} | {key: check for key, check in HOST_FIELDS.items() if key not in ("provider", "hostname", "instance_type")}


# ------------------------------------------------------------------------------------------- hosts.toml


def hosts_file_candidates(project_root: Path) -> list[Path]:
    return [project_root / HOSTS_FILE, paths.config_dir() / HOSTS_FILE]


def load_hosts(project_root: Path | None = None, *, path: Path | None = None) -> HostsConfig:
    """The hosts gpubox knows: the first hosts.toml found (project folder, then user config dir), plus
    ``local``."""
    if path is None:
        root = project_root or find_project_root()
        # One that is there but unreadable (a broken link, a folder) is an error, not a reason to look elsewhere.
        path = next((p for p in hosts_file_candidates(root) if os.path.lexists(p)), None)
    local = HostConfig(name=BUILTIN_LOCAL, provider="local")
    if path is None:
        return HostsConfig(path=None, hosts={BUILTIN_LOCAL: local})
    reader = Reader(path)
    reader.check_keys(
        (),
        reader.data,
        ("defaults", "hosts", "providers"),
        otherwise=" (hosts.toml has [defaults], [hosts.NAME] and [providers.NAME])",
    )
    providers = _provider_tables(reader)
    per_host = "only allowed in [hosts.NAME] tables, not in [defaults]"
    defaults = reader.values(
        ("defaults",),
        reader.table(("defaults",), reader.data.get("defaults", {})),
        DEFAULTS_FIELDS,
        misplaced={"provider": per_host, "hostname": per_host},
    )
    default_host = defaults.pop("host", None)
    total_budget_usd = defaults.pop("total_budget_usd", None)
    hosts_table = reader.table(("hosts",), reader.data.get("hosts", {}))
    hosts: dict[str, HostConfig] = {}
    for name, raw in hosts_table.items():
        where = ("hosts", name)
        if not checks.NAME.fullmatch(name):
            raise reader.error(where, f"invalid host name: {checks.NAME_RULE}")
        table = reader.table(where, raw)
        values = reader.values(
            where,
            table,
            HOST_FIELDS,
            misplaced={"total_budget_usd": "only allowed in [defaults] (the budget of all hosts together)"},
        )
        provider = values.get("provider", "local" if name == BUILTIN_LOCAL else "ssh")
        spec = provider_spec(provider)
        for key in values:
            if key not in spec.keys:
                raise reader.error((*where, key), _not_used(spec, key))
        merged = {k: v for k, v in defaults.items() if k in spec.keys} | values
        merged["provider"] = provider
        if "hostname" in spec.keys:
            merged.setdefault("hostname", name)
        _check_required(reader, where, spec, merged)
        if spec.rents:
            merged["api"] = providers.setdefault(provider, ProviderSettings.default(provider))
        if "identity_file" in merged:
            merged["identity_file"] = os.path.expanduser(merged["identity_file"])
        hosts[name] = HostConfig(name=name, source=f"{reader.display}:{reader.line(where) or 1}", **merged)
    hosts.setdefault(BUILTIN_LOCAL, local)
    if default_host is not None and default_host not in hosts:
        hint = did_you_mean(default_host, hosts) or f" (configured: {', '.join(hosts)})"
        raise reader.error(("defaults", "host"), f"no host named {json.dumps(default_host)}{hint}")
    return HostsConfig(
        path=path,
        hosts=hosts,
        default_host=default_host,
        total_budget_usd=total_budget_usd,
        providers=providers,
    )


def _not_used(spec: ProviderSpec, key: str) -> str:
    provider = spec.name
    if spec.runs_own_sshd:
        return f'not used by provider "{provider}" (gpubox runs that host itself)'
    if not spec.rents:
        clouds = either([f'"{name}"' for name in CLOUD_NAMES])
        return f'not used by provider "{provider}" (only for hosts gpubox rents: provider = {clouds})'
    if key == "price_per_hour":
        return f'not used by provider "{provider}": gpubox reads the price from its API (cap it with max_price_per_hour)'
    if key in ("hostname", "port", "proxy_jump"):
        return f'not used by provider "{provider}": gpubox learns the address from its API'
    if key == "stop_command":
        return f'not used by provider "{provider}": gpubox stops a rented host by terminating it'
    users = [other.name for other in SPECS if other.rents and key in other.keys]
    return f'not used by provider "{provider}"' + (f" (only by {', '.join(users)})" if users else "")


def _check_required(
    reader: Reader, where: tuple[str, ...], spec: ProviderSpec, values: dict[str, Any]
) -> None:
    """What a provider needs before gpubox can rent from it, checked when the file is read, not at launch."""
    for requirement in spec.requires:
        if not any(key in values for key in requirement.keys):
            raise reader.error(where, f"a {spec.name} host needs {requirement.needs}")


def _provider_tables(reader: Reader) -> dict[str, ProviderSettings]:
    table = reader.table(("providers",), reader.data.get("providers", {}))
    settings: dict[str, ProviderSettings] = {}
    for name, raw in table.items():
        where = ("providers", name)
        if name not in CLOUD_NAMES:
            hint = did_you_mean(name, CLOUD_NAMES) or f" (the cloud providers are {', '.join(CLOUD_NAMES)})"
            raise reader.error(where, f"unknown provider{hint}")
        values = reader.values(where, reader.table(where, raw), PROVIDER_TABLE_FIELDS)
        base = ProviderSettings.default(name)
        settings[name] = ProviderSettings(
            name=name,
            api_key_env=values.get("api_key_env", base.api_key_env),
            api_url=values.get("api_url", base.api_url),
            request_timeout=values.get("request_timeout", base.request_timeout),
            offers_timeout=values.get("offers_timeout", base.offers_timeout),
            source=f"{reader.display}:{reader.line(where) or 1}",
        )
    return settings


def configured_providers(hosts: HostsConfig) -> list[ProviderSettings]:
    """Providers with a table or a host in hosts.toml, and those whose default key variable is set."""
    names = [name for name in CLOUD_NAMES if name in hosts.providers]
    for name in CLOUD_NAMES:
        default = ProviderSettings.default(name)
        if name not in names and os.environ.get(default.api_key_env):
            names.append(name)
    return [hosts.provider_settings(name) for name in names]
