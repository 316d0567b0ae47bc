"""``Host gpubox-NAME`` entries so VS Code Remote-SSH, JetBrains Gateway and plain ``ssh`` reach gpubox hosts.

The file is meant to be pulled into ``~/.ssh/config`` with one ``Include`` line; gpubox rewrites it whole each
time. Host keys stay strict: each entry points OpenSSH at the known-hosts files gpubox trusts.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpubox import paths
from gpubox.config import HostConfig, HostsConfig
from gpubox.remote.connection import Endpoint, resolve_endpoint

__all__ = ["write_ssh_config"]


def _quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _hop(endpoint: Endpoint) -> str:
    port = "" if endpoint.port == 22 else f":{endpoint.port}"
    return f"{endpoint.user}@{endpoint.hostname}{port}"


def _ssh_entry(host: HostConfig) -> list[str]:
    endpoint = resolve_endpoint(host)
    known = f"{_quote(str(Path.home() / '.ssh' / 'known_hosts'))} {_quote(str(paths.known_hosts_file()))}"
    lines = [
        f"Host gpubox-{host.name}",
        f"    HostName {endpoint.hostname}",
        f"    Port {endpoint.port}",
        f"    User {endpoint.user}",
    ]
    lines += [f"    IdentityFile {_quote(path)}" for path in endpoint.identity_files]
    if endpoint.jumps:
        lines.append("    ProxyJump " + ",".join(_hop(hop) for hop in endpoint.jumps))
    elif endpoint.proxy_command:
        lines.append(f"    ProxyCommand {endpoint.proxy_command}")
    lines += [f"    UserKnownHostsFile {known}", "    StrictHostKeyChecking yes"]
    return lines


def _local_entry() -> list[str]:
    from gpubox.remote.providers.local import HOST_KEY_ALIAS, LocalSshd

    server = LocalSshd()
    files = server.files()
    known_hosts = server.folder / "known_hosts"
    known_hosts.write_text(f"{HOST_KEY_ALIAS} {files.host_public_key}\n")
    running = server.running()
    port = running.port if running else server.previous_port()
    lines = ["Host gpubox-local"]
    if port is None:
        lines.append("    # not started yet: run `gpubox up local`, then `gpubox ssh-config` again")
        port = 22
    elif running is None:
        lines.append("    # stopped: `gpubox up local` starts it again on this port when it is free")
    lines += [
        "    HostName 127.0.0.1",
        f"    Port {port}",
        f"    User {_current_user()}",
        f"    IdentityFile {_quote(str(files.client_key))}",
        "    IdentitiesOnly yes",
        f"    HostKeyAlias {HOST_KEY_ALIAS}",
        f"    UserKnownHostsFile {_quote(str(known_hosts))}",
        "    StrictHostKeyChecking yes",
    ]
    return lines


def _current_user() -> str:
    import getpass

    return getpass.getuser()


def write_ssh_config(hosts: HostsConfig) -> tuple[Path, list[str]]:
    """Write the Include file for every configured host; return its path and the host names in it."""
    blocks = ["# Written by `gpubox ssh-config`; rewritten each time, so edit hosts.toml instead."]
    names = []
    for host in hosts.hosts.values():
        entry = _local_entry() if host.spec.runs_own_sshd else _ssh_entry(host)
        blocks.append("\n".join(entry))
        names.append(host.name)
    path = paths.ssh_config_file()
    paths.ensure_private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(blocks) + "\n")
    os.replace(tmp, path)
    return path, names
