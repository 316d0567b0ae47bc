"""What a host's guardian may do, from hosts.toml alone: whether a host gets one, whether it can stop the host
with the laptop gone, and the plan it is sent for that (PROTOCOL.md, "The guardian": run stop_command on the
host, signal the local sshd, or ask the cloud's API to stop a rented instance). The laptop's side of the
guardian's watch is :mod:`gpubox.actions.monitor`."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig

__all__ = [
    "cannot_stop_why",
    "guarded",
    "guardian_can_act",
    "guardian_key",
    "provider_stop_plan",
    "self_stop_mode",
    "settle_guardian_stops",
    "stop_action",
    "stop_plan",
]


def guardian_key(host: HostConfig) -> str:
    """The name of this laptop's guardian for *host* on the host (several laptops, or several host names for
    one machine, each keep their own)."""
    from gpubox.paths import machine_id

    return hashlib.sha1(f"{machine_id()}:{host.name}".encode()).hexdigest()[:16]


def self_stop_mode(host: HostConfig) -> str | None:
    """How a rented host's guardian stops it (hosts.toml ``self_stop``, else the cloud's own instance key
    where it gives one): ``instance``, ``key``, ``off``; None where nothing is decided (Lambda not asked yet)."""
    if host.self_stop is not None:
        return host.self_stop
    call = host.spec.self_stop
    return "instance" if call is not None and call.key_env else None


def guardian_can_act(host: HostConfig) -> bool:
    """Whether the host's guardian can stop it alone: it runs stop_command there, stops `local`'s sshd, or
    stops a rented instance through its cloud's API (with the instance's own key, or the user's placed there)."""
    if host.stop_command or host.spec.runs_own_sshd:
        return True
    if not host.spec.rents or host.spec.self_stop is None:
        return False
    mode = self_stop_mode(host)
    return mode == "key" or (mode == "instance" and bool(host.spec.self_stop.key_env))


def cannot_stop_why(host: HostConfig) -> str:
    """Why a host's guardian cannot stop it alone (where :func:`guardian_can_act` is false)."""
    if host.spec.rents:
        mode = self_stop_mode(host)
        if mode == "off":
            return 'self_stop = "off": the guardian may not stop it, so it keeps billing while the laptop is away'
        return (
            f'{host.provider} gives an instance no key of its own to stop itself with; `self_stop = "key"` in '
            "hosts.toml lets its guardian use your API key (placed on the host in a 0600 file)"
        )
    return "no stop_command for this ssh host: it keeps running (and billing)"


def guarded(host: HostConfig, hosts: HostsConfig | None) -> bool:
    """Whether *host* gets a guardian: it has an autostop, a budget or a deadline."""
    budget = host.budget_usd is not None or (hosts is not None and hosts.total_budget_usd is not None)
    return bool(host.autostop_minutes) or bool(host.max_hours) or budget


def stop_action(host: HostConfig) -> str:
    """What stopping *host* means, in words, when this laptop does it."""
    if host.stop_command:
        return "run stop_command on the host"
    if host.spec.runs_own_sshd:
        return "stop the local sshd"
    if not host.spec.stops_on_down:
        return "warn only (no stop_command for this ssh host)"
    return "terminate the instance"


def stop_plan(host: HostConfig) -> dict[str, Any]:
    """How the guardian stops *host* (PROTOCOL.md, "The guardian"): run stop_command there, signal the local
    sshd, stop a rented instance through its cloud's API, or nothing it can do alone (``why`` says so)."""
    plan: dict[str, Any] = {"action": stop_action(host)}
    if host.stop_command:
        plan |= {"kind": "command", "command": host.stop_command}
    elif host.spec.runs_own_sshd:
        from gpubox.remote.providers.local import LocalSshd

        sshd = LocalSshd()
        server = sshd.running()
        plan |= {
            "kind": "signal" if server else "none",
            "pid": server.pid if server else None,
            "match": str(sshd.folder / "sshd_config"),
            "what": "the local sshd",
            "why": "the local sshd is not running",
        }
    elif host.spec.rents and guardian_can_act(host):
        plan |= _provider_plan(host)
    else:
        plan |= {"kind": "none", "why": cannot_stop_why(host)}
    return plan


def _provider_plan(host: HostConfig) -> dict[str, Any]:
    from gpubox.remote.providers.cloud import CloudProvider

    record = CloudProvider.recorded(host)
    if host.spec.self_stop is None or record is None:
        return {"kind": "none", "why": f"no {host.provider} instance recorded for {host.name}"}
    return provider_stop_plan(host, record.instance_id, record.name)


def provider_stop_plan(host: HostConfig, instance_id: str, name: str = "") -> dict[str, Any]:
    """How a rented host's guardian stops instance *instance_id* (gpubox's *name* for it) through the cloud's
    API with the laptop gone (kind ``provider``): which request, to which URL, with which key (the variable
    holding it, or the file gpubox placed: never the key itself)."""
    call = host.spec.self_stop
    assert call is not None, f"{host.provider} has no self-stop call"
    by_key = self_stop_mode(host) == "key"
    return {
        "kind": "provider",
        "provider": host.provider,
        "instance_id": instance_id,
        "url": host.provider_settings().api_url,
        "method": call.method,
        "path": call.path,
        "body": dict(call.body),
        "key_env": "" if by_key else call.key_env,
        "id_env": call.id_env,
        "key_file": by_key,
        "keeps_disk": call.keeps_disk,
        "done": call.done,
        "name": name,
        "note": dict(call.stop_note) if call.stop_note is not None and name else None,
        "action": (
            f"stop it through the {host.provider} API (its disk kept)"
            if call.keeps_disk
            else f"terminate it through the {host.provider} API"
        ),
    }


def settle_guardian_stops(hosts: HostsConfig, *, ask_providers: bool = True) -> list[str]:
    """Close the ledger where a host's guardian stopped it while no gpubox held it, at the time it did so, once
    (a second look changes nothing): for the built-in `local` host from the guardian's own record on this
    machine; for a rented host from its provider's record (*ask_providers*), for an ssh host when `up` next
    connects (the guardian's record is on the host). Returns what it found, in words."""
    from gpubox.state import open_state

    said = []
    with open_state() as state:
        held = {s.host for s in state.supervisors() if s.alive()}
    for host in hosts.hosts.values():
        if host.name in held:
            continue  # its holder sees the guardian's stop itself
        if host.spec.on_this_machine and guarded(host, hosts):
            found = _local_stop_record(host)
            if found is not None:
                with open_state() as state:
                    if state.record_guardian_stop(
                        host.name, float(found["at"]), f"{found.get('reason')} (by the guardian)"
                    ):
                        said.append(
                            f"{host.name}: its guardian stopped it ({found.get('why')}: {found.get('done')})"
                        )
        elif host.spec.rents and ask_providers:
            from gpubox.remote.providers import provider_for

            with open_state() as state:
                recorded = state.current_instance(host.name)
            if recorded is not None:
                status = provider_for(host).status(host)  # settles an instance stopped meanwhile
                if status.state == "stopped":
                    said.append(f"{host.name}: {status.detail}")
    return said


def _local_stop_record(host: HostConfig) -> dict[str, Any] | None:
    import json
    from pathlib import Path

    from gpubox import paths

    folder = (paths.local_host_home() or Path.home()) / ".gpubox" / "guardian" / guardian_key(host)
    for name in ("stopped.json", "stopping.json"):
        try:
            found = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and isinstance(found.get("at"), int | float) and found.get("ok"):
            return found
    return None
