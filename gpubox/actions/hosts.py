"""The hosts as `gpubox hosts`, `status` and the dashboard show them: where each is, who holds it, what it costs,
its autostop countdown and its services' URLs. Reads the state database; connects only for Jupyter's token."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gpubox.actions.framework import project_framework
from gpubox.cost import budgets_for, host_spend
from gpubox.fmt import format_duration
from gpubox.remote.agent import calls
from gpubox.remote.gpu import NEWEST, load_rules
from gpubox.remote.providers import host_price
from gpubox.remote.session import connect_host
from gpubox.report import short_gpu
from gpubox.state import open_state
from gpubox.train.services import service_key

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.state import TunnelRecord

__all__ = ["autostop_text", "guardian_lines", "host_rows", "service_url", "target"]


def target(host: HostConfig) -> str:
    """Where a host is, in a few words: ``ubuntu@1.2.3.4:22 via jump``."""
    if host.spec.runs_own_sshd:
        return "private sshd on 127.0.0.1"
    if host.spec.rents:
        wanted = host.instance_type or f"{host.gpu_count}× {host.gpu}"
        return f"rented: {wanted}" + (f" in {host.region}" if host.region else "")
    where = host.hostname or host.name
    if host.user:
        where = f"{host.user}@{where}"
    if host.port:
        where += f":{host.port}"
    if host.proxy_jump:
        where += f" via {host.proxy_jump}"
    return where


def host_rows(
    hosts: HostsConfig, now: float | None = None, *, project: ProjectConfig | None = None
) -> list[dict[str, Any]]:
    """Every configured host as `gpubox hosts --json` shows it: who holds it, price, spend and budgets, and its
    GPUs judged for *project*'s framework (the newest gpubox knows without a project).

    Reads only the state database; never connects."""

    rows = []
    now = time.time() if now is None else now
    # The one rule of `gpubox check` (the project's pin, else the newest), without connecting.
    framework = project_framework(project) if project is not None else None
    release = framework.release if framework else load_rules().newest("tensorflow")
    with open_state() as state:
        ledger = state.billing()
        alerts = state.budget_alerts()
        for host in hosts.hosts.values():
            record = state.host(host.name)
            holders = state.host_supervisors(host.name)
            supervisor = holders[0] if holders else None
            price = host_price(host, record.probe if record else None)
            spend = host_spend((i for i in ledger if i.host == host.name), now)
            rented = state.current_instance(host.name) if host.spec.rents else None
            rows.append(
                {
                    "name": host.name,
                    "provider": host.provider,
                    "target": target(host),
                    "up": supervisor is not None,
                    "supervisor": None
                    if supervisor is None
                    else {
                        "pid": supervisor.pid,
                        "detached": supervisor.detached,
                        "since": supervisor.started_at,
                    },
                    "projects": [
                        {
                            "id": held.project or None,
                            "name": held.project_name if held.root else None,
                            "root": held.root,
                            "folder": held.folder,
                            "pid": held.pid,
                            "detached": held.detached,
                            "since": held.started_at,
                        }
                        for held in holders
                    ],
                    "endpoint": record.endpoint if record else None,
                    "gpu": short_gpu(record.probe if record else None, release=release),
                    "gpu_judged_for": f"{release.label} ({framework.chosen_by if framework else NEWEST})",
                    "probed_at": record.probed_at if record else None,
                    "price_per_hour": price.amount,
                    "price_source": price.source,
                    "price_estimate": price.estimate,
                    "spent_usd": round(spend.spent_usd, 4),
                    "hours": round(spend.seconds / 3600, 6),
                    "billing_now": spend.billing_now,
                    "stopped_instance": rented.instance_id if rented is not None and rented.stopped else None,
                    "budgets": [
                        {"scope": b.scope} | b.document(alerts) for b in budgets_for(host, hosts, ledger, now)
                    ],
                    "on_budget": host.on_budget,
                    "default": host.name == hosts.default_host,
                }
            )
    return rows


def autostop_text(autostop: Mapping[str, Any] | None, minutes: float) -> str:
    """The autostop line of `gpubox status` from a monitor report's ``autostop`` part (with
    ``remaining_seconds`` counted down to now)."""

    if not minutes:
        return "off (set autostop_minutes in hosts.toml)"
    if autostop is None:
        return f"after {minutes:g} min idle (no report from the holding gpubox yet)"
    phase = autostop["state"]
    if phase == "busy":
        return f"waiting: {'; '.join(autostop['busy'])} (after {minutes:g} min idle)"
    if phase == "starting":
        return f"after {minutes:g} min idle (first look at the host pending)"
    if phase == "stopped":
        return "stopped the host"
    left = format_duration(autostop["remaining_seconds"] or 0)
    action = autostop["action"]
    if phase == "warned":
        return f"idle for {format_duration(autostop['idle_seconds'])}: {action}"
    extra = f"; last activity: {autostop['last_activity']}" if autostop.get("last_activity") else ""
    if autostop.get("stalled"):
        extra += f"; {'; '.join(autostop['stalled'])} (not activity: stall_minutes)"
    return (
        f"in {left} ({autostop['gpu']}, idle {format_duration(autostop['idle_seconds'])}{extra}) → {action}"
    )


DEADLINE_WARN_SECONDS = 30 * 60


def guardian_lines(guardian: Mapping[str, Any] | None, now: float, decisions: int = 3) -> list[str]:
    """`gpubox status`'s lines about the host's guardian (from a monitor report's ``guardian`` part): who keeps
    the watch, the max_hours deadline (a warning within its last 30 minutes) and its latest decisions."""
    if not guardian:
        return []
    if guardian.get("running") is None:
        return ["guardian  starting on the host"]
    if guardian.get("error"):
        return [f"guardian  none ({guardian['error']}): only this laptop's gpubox keeps the watch"]
    who = f"pid {guardian.get('pid')} on the host" if guardian.get("running") else "not running on the host"
    if guardian.get("acts") and guardian.get("laptop_first"):
        how = (
            f"if this laptop is gone when due, it will {guardian.get('action')} itself (while the laptop holds "
            "it, the laptop brings the outputs home and terminates it)"
        )
    elif guardian.get("acts"):
        how = f"will {guardian.get('action')} itself when due, with or without this laptop"
    else:
        how = f"cannot stop it alone: {guardian.get('cannot')}"
    lines = [f"guardian  {who}; {how}"]
    deadline = guardian.get("deadline_at")
    if isinstance(deadline, int | float):
        left = deadline - now
        text = f"stops in {format_duration(max(0.0, left))} (max_hours = {guardian.get('max_hours'):g})"
        lines.append(f"{'! ' if left <= DEADLINE_WARN_SECONDS else ''}deadline  {text}, whatever it is doing")
    for index, decision in enumerate((guardian.get("decisions") or [])[-decisions:]):
        at = decision.get("at")
        stamp = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"
        lines.append(f"{'decided' if index == 0 else '':<9} {stamp} {decision.get('text')}")
    return lines


def service_url(
    host: HostConfig, project: ProjectConfig | None, tunnel: TunnelRecord, *, show_secret: bool
) -> str:
    """The local URL of a tunnelled service (from :meth:`gpubox.state.State.live_tunnels`); Jupyter's token is
    fetched from the host, and put in the URL only when asked."""
    url = f"http://127.0.0.1:{tunnel.local_port}{tunnel.path}"
    if tunnel.service != "jupyter":
        return url
    if not show_secret or project is None:
        return url + "?token=<redacted>"

    session = connect_host(host, project, probe=False, launch=False)
    try:
        # The token of the service this tunnel reaches (its project's, which may not be this one).
        listed = calls.service_list(session.agent, key=tunnel.service_key or service_key(session))
    finally:
        session.close()
    token = next((s.get("secret") for s in listed.get("services", []) if s.get("name") == "jupyter"), None)
    return url + (f"?token={token}" if token else "")
