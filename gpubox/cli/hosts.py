"""`gpubox init`, `hosts`, `status` and `offers`: the project's files, the configured hosts, what is up now, and
what could be rented."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpubox import data as data_files
from gpubox.actions.guardian import settle_guardian_stops
from gpubox.actions.hosts import autostop_text, guardian_lines, host_rows, service_url
from gpubox.actions.runmoney import money_lines
from gpubox.actions.sync import sync_lines
from gpubox.cli.output import load_hosts, load_project, out, price, print_json, table
from gpubox.config import HOSTS_FILE, PROJECT_FILE, configured_providers
from gpubox.errors import BadInput, GpuboxError, HostError, HostUnreachable, UsageError
from gpubox.fmt import either, format_duration, format_usd
from gpubox.remote.folder import known_folder
from gpubox.remote.providers import provider_for
from gpubox.remote.providers.registry import CLOUD_NAMES, provider_spec
from gpubox.remote.tunnels import tunnel_answers
from gpubox.state import open_state
from gpubox.sync.follow import behind_text
from gpubox.train.services import service_key_for

if TYPE_CHECKING:
    from gpubox.config import HostsConfig

__all__ = ["cmd_hosts", "cmd_init", "cmd_offers", "cmd_status"]


def cmd_init(args: argparse.Namespace) -> int:

    folder = os.getcwd()
    written, kept = [], []
    for name, template in ((PROJECT_FILE, "gpubox.example.toml"), (HOSTS_FILE, "hosts.example.toml")):
        target = os.path.join(folder, name)
        if os.path.exists(target):
            kept.append(name)
            continue
        text = commented_out(data_files.read_text(template), name)
        tmp = target + ".tmp"
        with open(tmp, "x") as handle:
            handle.write(text)
        os.replace(tmp, target)
        written.append(name)
    for name in written:
        out(f"wrote {name} (every setting commented out: the defaults apply until you uncomment one)")
    for name in kept:
        out(f"kept {name} (already there)")
    if HOSTS_FILE in written:
        out("`gpubox up` works right away on the built-in local host; for a machine of yours or a cloud,")
        out("uncomment a [hosts.NAME] in hosts.toml")
    return 0


def commented_out(example: str, name: str) -> str:
    """An example file as a config that works as written: every setting and table commented out (so nothing
    in it is live: no example host as the default, no stop command), its explanations kept."""
    lines = [
        f"# {name}, written by `gpubox init`. Nothing here is active yet: gpubox uses its defaults (the built-in",
        "# `local` host) until you uncomment a line. Lines starting `# [` or `# key =` are settings.",
        "",
    ]
    for line in example.splitlines():
        stripped = line.strip()
        lines.append(line if not stripped or stripped.startswith("#") else f"# {line}")
    return "\n".join(lines) + "\n"


def _orphan_check(hosts: HostsConfig) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
    """Ask each configured cloud provider for instances gpubox launched that no gpubox holds: (orphans as
    JSON, providers that could not be asked, lines to print)."""

    providers = configured_providers(hosts)
    with open_state() as state:
        renting = {record.provider for record in state.kept_instances()}
    # A cloud without its API key is asked nothing and not mentioned (`gpubox offers` or `up` on one of its
    # hosts says what is missing), unless gpubox has an instance of it on record that may be billing.
    asked = [p for p in providers if os.environ.get(p.api_key_env, "").strip() or p.name in renting]
    if not asked:
        return [], [], []
    from gpubox.provision import describe_orphans, find_orphans  # the clouds' clients: only when one is asked

    report = find_orphans(hosts, providers=asked)
    orphans = [
        {
            "provider": o.provider,
            "instance_id": o.instance.instance_id,
            "name": o.instance.name,
            "host": o.host,
            "price_per_hour": o.instance.price_per_hour,
            "started_at": o.instance.started_at,
            "gpu": o.instance.gpu,
            "status": o.instance.status_text,
            "recorded": o.recorded,
            "stopped": o.stopped,
            "why": o.why,
        }
        for o in report.orphans
    ]
    problems = [{"provider": name, "problem": problem} for name, problem in report.problems]
    return orphans, problems, describe_orphans(report)


def cmd_hosts(args: argparse.Namespace) -> int:
    project = load_project()
    hosts = load_hosts(project)
    orphans, problems, orphan_lines = _orphan_check(hosts)
    # A guardian's stop while no gpubox held the host: the ledger closes at its time (rented hosts: below).
    settle_guardian_stops(hosts, ask_providers=False)
    rows = host_rows(hosts, project=project)
    if args.json:
        print_json(
            {
                "config": str(hosts.path) if hosts.path else None,
                "hosts": rows,
                "orphans": orphans,
                "provider_problems": problems,
            }
        )
        return 0
    source = f"from {hosts.path}" if hosts.path else "no hosts.toml found: only the built-in local host"
    out(f"hosts ({source})")
    table(
        ["name", "provider", "target", "state", "gpu", "$/h"],
        [
            [
                r["name"] + (" *" if r["default"] else ""),
                r["provider"],
                r["target"],
                "up"
                if r["up"]
                else "billing, not held"
                if r["billing_now"]
                else "stopped, disk kept"
                if r["stopped_instance"]
                else "down",
                r["gpu"],
                ("~" if r["price_estimate"] else "") + price(r["price_per_hour"]),
            ]
            for r in rows
        ],
    )
    if rows:
        out(f"  gpu: judged for {rows[0]['gpu_judged_for']}")
    for line in orphan_lines:
        out(line)
    return 0


def cmd_status(args: argparse.Namespace) -> int:

    project = load_project()
    hosts = load_hosts(project)
    orphans, problems, orphan_lines = _orphan_check(hosts)
    # Asked first: an instance found stopped closes its ledger where it stopped, before the rows read it.
    instances = {name: provider_for(host).status(host) for name, host in hosts.hosts.items()}
    rows = host_rows(hosts, project=project)
    now = time.time()
    with open_state() as state:
        for row in rows:
            host = hosts.hosts[row["name"]]
            instance = instances[host.name]
            row["instance"] = {"state": instance.state, "detail": instance.detail}
            seen = state.monitor(host.name) if row["up"] else None
            autostop = (seen[1].get("autostop") if seen else None) or None
            if autostop and autostop.get("stops_at") is not None:
                # The supervisor wrote this up to a few seconds ago: count down from now.
                autostop["remaining_seconds"] = round(max(0.0, autostop["stops_at"] - now), 1)
            row["autostop"] = autostop
            row["autostop_minutes"] = host.autostop_minutes
            row["guardian"] = (seen[1].get("guardian") if seen else None) or None
            row["max_hours"] = host.max_hours
            folder = known_folder(host, project)
            row["folder"] = folder or host.remote_project_dir(project)
            row["folder_settled"] = folder is not None
            for held in row["projects"]:
                held["this_project"] = held["id"] == project.id
            row["sync"] = (seen[1].get("sync") if seen else None) or None
            # The outputs line is this project's (its own supervisor's), not the host lead's.
            ours = next((h["pid"] for h in row["projects"] if h["id"] == project.id), None) if seen else None
            own = state.monitor(host.name, ours) if ours else None
            row["outputs"] = (own[1].get("outputs") if own else None) or None
            row["runs"] = (own[1].get("runs") if own else None) or []
            row["link_lost_since"] = (own[1].get("link_lost_since") if own else None) or None
            row["services"] = [
                {
                    "name": tunnel.service,
                    "host_port": tunnel.host_port,
                    # While the link is down a tunnel holds new connections until it is back: nothing to ask.
                    "answers": not row["link_lost_since"] and tunnel_answers(tunnel.local_port),
                    "tunnel": tunnel,
                }
                for tunnel in state.live_tunnels(host.name, project.id)
            ]
            row["unheld_services"] = _unheld_services(
                seen[1].get("services") if seen else None, row["projects"]
            )
    secrets = project if args.show_secrets else None
    for row in rows:
        for service in row["services"]:
            tunnel = service.pop("tunnel")
            host = hosts.hosts[row["name"]]
            service["url"] = service_url(host, secrets, tunnel, show_secret=secrets is not None)
    if args.json:
        print_json(
            {
                "project": {"id": project.id, "name": project.name, "root": str(project.root)},
                "hosts": rows,
                "orphans": orphans,
                "provider_problems": problems,
            }
        )
        return 0
    up = [r for r in rows if r["up"] or r["instance"]["state"] in ("running", "unknown")]
    if not up:
        out("nothing is up: `gpubox up` starts the built-in local host, `gpubox up HOST` another")
        for line in orphan_lines:
            out(line)
        return 0
    for row in up:
        sup = row["supervisor"]
        held = (
            f"held by gpubox pid {sup['pid']} ({'detached' if sup['detached'] else 'foreground'}) "
            f"for {format_duration(now - sup['since'])}"
            if sup
            else "not held by any gpubox process"
        )
        out(f"{row['name']}  [{row['provider']}]  {held}")
        if row["instance"]["detail"]:
            out(f"    instance  {row['instance']['detail']}")
        if row["endpoint"]:
            out(f"    endpoint  {row['endpoint']}")
        out(f"    gpu       {row['gpu']}")
        price = "?" if row["price_per_hour"] is None else format_usd(row["price_per_hour"])
        tilde = "~" if row["price_estimate"] else ""
        line = (
            f"    cost      {tilde}{price}/h ({row['price_source']}) · {format_usd(row['spent_usd'])} so far"
        )
        for budget in row["budgets"]:
            whose = "total budget" if budget["scope"] == "*" else "budget"
            line += f" · {budget['percent']:.0f} % of {whose} {format_usd(budget['budget_usd'])}"
        out(line)
        if row["up"]:
            if row["link_lost_since"]:
                out(
                    f"    link      lost {format_duration(now - row['link_lost_since'])} ago; reconnecting "
                    "(sync waits, tunnels hold new connections until it is back)"
                )
            out(f"    autostop  {autostop_text(row['autostop'], row['autostop_minutes'])}")
            for line in guardian_lines(row["guardian"], now):
                out(f"    {line}")
            for line in sync_lines(row["sync"], row["name"]):
                out(f"    {line}")
            behind = behind_text(row["outputs"], now)
            if behind is not None:
                out(f"    outputs   {behind}")
            for line in money_lines(row["runs"]):
                out(f"    {line}")
        out(
            f"    folder    {row['folder']} (this project's{'' if row['folder_settled'] else ', made on first use'})"
        )
        if len(row["projects"]) > 1 or (row["projects"] and not row["projects"][0]["this_project"]):
            for held in row["projects"]:
                mark = (
                    "this project"
                    if held["this_project"]
                    else (held["root"] or "a project of an older gpubox")
                )
                out(
                    f"    held for  {held['name'] or '?'} ({mark}) by gpubox pid {held['pid']}: {held['folder'] or '?'}"
                )
        for service in row["services"]:
            shown = (
                ""
                if service["answers"]
                else "  (link lost: waiting for it)"
                if row["link_lost_since"]
                else "  (not answering: the supervisor starts it again)"
            )
            out(f"    {service['name']:<9} {service['url']}{shown}")
        for service in row["unheld_services"]:
            memory = f", {service['rss_bytes'] / 2**20:.0f} MiB" if service.get("rss_bytes") else ""
            out(
                f"    ! {service['name']} of {service['key']} still runs (port {service['port']}{memory}) though "
                f"its project let go of {row['name']}: the last `gpubox down {row['name']}` stops it"
            )
    for line in orphan_lines:
        out(line)
    return 0


def _unheld_services(
    services: Sequence[Mapping[str, Any]] | None, projects: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Services the host's lead saw running whose project no gpubox holds the host for any more."""
    held = {service_key_for(p["folder"]) for p in projects if p.get("folder")}
    return [dict(s) for s in services or () if s.get("key") not in held]


def cmd_offers(args: argparse.Namespace) -> int:
    from gpubox.provision import collect_offers

    if args.max_price is not None and not args.max_price > 0:
        raise UsageError(f"--max-price must be a number above 0, got {args.max_price:g}")
    project = load_project()
    hosts = load_hosts(project)
    report = collect_offers(
        hosts,
        project,
        provider=args.provider,
        gpu=args.gpu,
        max_price=args.max_price,
        compatible_only=args.compatible,
        gpu_count=args.count,
    )
    if not report.asked:
        raise UsageError(
            f"no cloud provider is configured: add a {either([f'[providers.{name}]' for name in CLOUD_NAMES])} "
            "table (or a host using one) to hosts.toml, or export "
            + either([provider_spec(name).api_key_env for name in CLOUD_NAMES])
        )
    if report.problems and len(report.problems) == len(report.asked):
        # No provider answered: that is a failure, not an empty market.
        raise _offers_failure(report.problems, report.failures)
    if args.json:
        print_json(
            {
                "framework": report.framework,
                "providers": report.asked,
                "seconds": report.seconds,
                "offers": [
                    {
                        "provider": r.offer.provider,
                        "offer_id": r.offer.offer_id,
                        "gpu": r.offer.gpu,
                        "gpu_count": r.offer.gpu_count,
                        "gpu_memory_gb": r.offer.gpu_memory_gb,
                        "region": r.offer.region,
                        "price_per_hour": r.offer.price_per_hour,
                        "instance_type": r.offer.instance_type,
                        "compute_capability": r.offer.compute_capability,
                        "driver_version": r.offer.driver_version,
                        "cuda_max": r.offer.cuda_max,
                        "detail": r.offer.detail,
                        "verdict": r.verdict,
                        "reasons": list(r.reasons),
                        "host": r.host,
                    }
                    for r in report.offers
                ],
                "problems": [{"provider": name, "problem": text} for name, text in report.problems],
            }
        )
        return 0
    out(f"offers from {', '.join(report.asked)}, cheapest first; verdicts for {report.framework}")
    if report.offers:
        table(
            ["provider", "gpu", "n", "memory", "region", "$/h", "verdict", "launch as"],
            [
                [
                    r.offer.provider,
                    r.offer.gpu,
                    str(r.offer.gpu_count),
                    f"{r.offer.gpu_memory_gb:g} GB" if r.offer.gpu_memory_gb else "?",
                    r.offer.region or "-",
                    format_usd(r.offer.price_per_hour),
                    r.verdict,
                    r.host or "-",
                ]
                for r in report.offers
            ],
        )
        shown = {r.verdict for r in report.offers}
        if shown & {"warn", "fail", "unknown"}:
            out("  `gpubox offers --json` gives each verdict's reasons; --compatible hides the failing ones")
    else:
        out("  nothing matches" + (" (try without --compatible)" if args.compatible else ""))
    for name, problem in report.problems:
        out(f"  ! {name}: {problem}")
    return 0


def _offers_failure(
    problems: Sequence[tuple[str, str]], failures: Mapping[str, BaseException]
) -> GpuboxError:
    """One error for 'no provider answered': the provider's own when only one was asked, else one line naming
    each, with the exit code they share (bad input 2, unreachable or refused 3, else 1)."""

    errors = [failures.get(name) for name, _problem in problems]
    if len(problems) == 1 and isinstance(errors[0], GpuboxError):
        return errors[0]
    text = "; ".join(f"{name}: {problem}" for name, problem in problems)
    if all(isinstance(error, BadInput) for error in errors):
        return BadInput(f"no provider could be asked: {text}")
    if all(error is None or isinstance(error, HostError) for error in errors):
        return HostUnreachable(f"no provider answered: {text}")
    return GpuboxError(f"no provider answered: {text}")
