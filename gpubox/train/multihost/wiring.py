"""How the workers of a multi-host run find each other: ``TF_CONFIG`` and the torchrun variables.

Where the other workers reach a host: the IP gpubox connects to when hosts.toml (or ``~/.ssh/config``) gives
one that is not a loopback address; otherwise (a DNS name, an alias, the ``local`` host) the address the host
itself sends from toward another worker, which its agent finds with a UDP ``connect`` (no packet is sent).
Each worker listens on a TCP port its agent found free a moment before (``MASTER_PORT`` is a second one on
worker 0): a port taken in between makes the worker fail to start, and the run fails like any other.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gpubox.errors import GpuboxError, UsageError
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig
    from gpubox.remote.session import HostSession

__all__ = ["host_port", "pick_hosts", "wire", "worker_env"]


def pick_hosts(spec: str, hosts: HostsConfig, *, single: str | None = None) -> list[HostConfig]:
    """The hosts named by ``--hosts a,b`` in worker order; one-line usage errors for anything else."""
    if single is not None:
        raise UsageError("--host and --hosts do not go together: --hosts a,b names every host of the run")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(names) < 2:
        raise UsageError(
            f"--hosts needs two or more hosts, comma-separated (got {spec!r}); for one host use --host"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--hosts names {', '.join(repeated)} more than once: one worker per host")
    return [hosts.get(name) for name in names]


def host_port(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def worker_env(
    index: int, cluster: Sequence[str], master_addr: str, master_port: int, run_id: str
) -> dict[str, str]:
    """The environment of worker *index* of *cluster* (``host:port`` per worker)."""
    ips = [address.rsplit(":", 1)[0].strip("[]") for address in cluster]
    tf_config = {"cluster": {"worker": list(cluster)}, "task": {"type": "worker", "index": index}}
    return {
        "TF_CONFIG": json.dumps(tf_config, separators=(",", ":")),
        "GPUBOX_MULTIHOST_RUN": run_id,
        "GPUBOX_NODE_RANK": str(index),
        "GPUBOX_NUM_NODES": str(len(cluster)),
        "GPUBOX_NODE_IPS": ",".join(ips),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(len(cluster)),
        "RANK": str(index),
    }


def _routable_ip(text: str) -> str | None:
    """*text* when it is an IP address other workers could use (not loopback, not 0.0.0.0)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_unspecified:
        return None
    return str(address)


def _seen_from_here(hostname: str) -> str | None:
    """An address of *hostname* as this machine resolves it, to aim the other host's route lookup at."""
    direct = _routable_ip(hostname)
    if direct is not None:
        return direct
    try:
        found = socket.getaddrinfo(hostname, None, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    for _family, _type, _proto, _name, sockaddr in found:
        candidate = _routable_ip(str(sockaddr[0]))
        if candidate is not None:
            return candidate
    return None


def wire(sessions: Sequence[HostSession]) -> tuple[list[str], str, int]:
    """Each worker's ``address:port``, and MASTER_ADDR/MASTER_PORT (a second free port on worker 0)."""
    endpoints = [session.spec.endpoint.hostname for session in sessions]
    seen = [_seen_from_here(name) for name in endpoints]
    cluster: list[str] = []
    master_port = 0
    for index, session in enumerate(sessions):
        toward = next((seen[j] for j in range(len(sessions)) if j != index and seen[j]), None)
        info = calls.node_info(session.agent, toward=toward, ports=2 if index == 0 else 1)
        address = _routable_ip(endpoints[index]) or info.get("address")
        if not address:
            raise GpuboxError(
                f"cannot tell which address the other workers can reach {session.host.name} on: give it "
                "by IP in hosts.toml (hostname = ...)"
            )
        ports = [int(p) for p in info.get("ports", [])]
        cluster.append(host_port(str(address), ports[0]))
        if index == 0:
            master_port = ports[1]
    master_addr = cluster[0].rsplit(":", 1)[0].strip("[]")
    return cluster, master_addr, master_port
