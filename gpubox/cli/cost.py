"""`gpubox cost`: what each host has cost, with budgets and totals, from the local ledger."""

from __future__ import annotations

import argparse

from gpubox.cli.output import load_hosts, out, print_json
from gpubox.cost import cost_report, parse_since, render_cost
from gpubox.remote.providers import host_price
from gpubox.state import open_state

__all__ = ["cmd_cost"]


def cmd_cost(args: argparse.Namespace) -> int:

    since = parse_since(args.since) if args.since is not None else None
    hosts = load_hosts()
    with open_state() as state:
        document = cost_report(state, hosts, host_price, since=since)
    if args.json:
        print_json(document)
        return 0
    for line in render_cost(document, all_runs=args.all):
        out(line)
    return 0
