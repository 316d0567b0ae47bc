"""`gpubox cost`: what each host has cost, with budgets and totals, from the local ledger."""

from __future__ import annotations

import argparse

from gpubox.actions.guardian import settle_guardian_stops
from gpubox.actions.sweep import sweep_costs
from gpubox.cli.output import load_hosts, out, print_json
from gpubox.cost import cost_report, parse_since, render_cost
from gpubox.fmt import format_usd
from gpubox.remote.providers import host_price
from gpubox.state import open_state

__all__ = ["cmd_cost"]


def cmd_cost(args: argparse.Namespace) -> int:

    since = parse_since(args.since) if args.since is not None else None
    hosts = load_hosts()
    # A host its guardian stopped while no gpubox held it bills until then, not until now.
    settled = settle_guardian_stops(hosts)
    with open_state() as state:
        document = cost_report(state, hosts, host_price, since=since)
    # Each sweep's trials at their share of their host's price (all time: a sweep's budget is all time too).
    document["sweeps"] = sweep_costs()
    if args.json:
        print_json(document)
        return 0
    for line in settled:
        out(f"· {line}")
    for line in render_cost(document, all_runs=args.all):
        out(line)
    if document["sweeps"]:
        out("")
        out("sweeps:")
    for sweep in document["sweeps"]:
        spent = "?" if sweep["spent_usd"] is None else format_usd(sweep["spent_usd"])
        budget = (
            "" if sweep["max_cost_usd"] is None else f" of max_cost_usd {format_usd(sweep['max_cost_usd'])}"
        )
        out(f"  {sweep['name']} ({sweep['state']}, {sweep['trials']} trials): {spent}{budget}")
    return 0
