"""``hosts.toml`` and ``gpubox.toml`` turned into typed, validated objects.

Both files are read with :mod:`tomllib` (exact TOML semantics); a small line locator maps every dotted key
to the line it was written on, so each error can say ``hosts.toml:7: hosts.a100.port: expected an integer
1-65535, got "22a"``. Unknown keys are errors with a did-you-mean. A file is either wholly valid or rejected:
callers never see a half-applied configuration.

``hosts.py`` reads hosts.toml, ``project.py`` gpubox.toml; ``reader.py`` is the TOML reader with its line
locator and ``checks.py`` the checks of single values they share.
"""

from gpubox.config.hosts import (
    BUILTIN_LOCAL,
    HOSTS_FILE,
    HostConfig,
    HostsConfig,
    ProviderSettings,
    configured_providers,
    hosts_file_candidates,
    load_hosts,
)
from gpubox.config.project import (
    DEFAULT_OUTPUTS,
    PROJECT_FILE,
    EnvConfig,
    ProjectConfig,
    RunConfig,
    ServiceConfig,
    SyncConfig,
    find_project_root,
    load_project,
)

__all__ = [
    "BUILTIN_LOCAL",
    "DEFAULT_OUTPUTS",
    "HOSTS_FILE",
    "PROJECT_FILE",
    "EnvConfig",
    "HostConfig",
    "HostsConfig",
    "ProjectConfig",
    "ProviderSettings",
    "RunConfig",
    "ServiceConfig",
    "SyncConfig",
    "configured_providers",
    "find_project_root",
    "hosts_file_candidates",
    "load_hosts",
    "load_project",
]
