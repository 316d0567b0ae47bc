"""`gpubox check` (a host, or a saved nvidia-smi output) and `gpubox offers`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from gpubox.actions.check import check_host, requirements_file
from gpubox.cli.output import ask_to_pin, load_hosts, load_project, out, print_json, table
from gpubox.cost import format_usd
from gpubox.errors import EXIT_FAILED, BadInput, GpuboxError, HostError, HostUnreachable, UsageError
from gpubox.provision import collect_offers
from gpubox.remote import gpu

__all__ = ["cmd_check", "cmd_offers"]


def _nvidia_smi_file(name: str) -> str:

    limit = 16 << 20  # nvidia-smi -q -x for 8 GPUs is ~200 KB: more is another file, not to be read whole
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as handle:
                data = handle.read(limit + 1)
    except OSError as exc:
        raise BadInput(f"cannot read {name}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise BadInput(f"{name}: over 16 MiB, far more than any nvidia-smi output (is it the right file?)")
    return data.decode("utf-8", errors="replace")


def cmd_check(args: argparse.Namespace) -> int:

    if args.host and args.nvidia_smi:
        raise UsageError("give a HOST or --nvidia-smi FILE, not both")
    requested = gpu.parse_framework_spec(args.framework) if args.framework else None
    project = load_project()
    if args.nvidia_smi:
        snapshot = gpu.parse_nvidia_smi(_nvidia_smi_file(args.nvidia_smi))
        if snapshot.state == "query_rejected":
            raise BadInput(
                f"{args.nvidia_smi}: this nvidia-smi refused the query ({snapshot.message}); query again "
                "without that field (gpubox finds the compute capability from the GPU name)"
            )
        if snapshot.state == "unrecognized":
            raise BadInput(f"{args.nvidia_smi}: {snapshot.message}")
        host_name = None
        result = gpu.run_check(
            snapshot, host=None, requested=requested, requirements=requirements_file(project)
        )
    else:
        host = load_hosts(project).pick(args.host)
        host_name = host.name
        # Only the free local host is started: renting a machine just to inspect it is `gpubox up`'s call.
        result = check_host(host, project, requested=requested, accept_new=args.accept_new, ask=ask_to_pin())
        snapshot = result.snapshot
    if args.json:
        print_json(result.document)
    else:
        out(f"gpubox check {host_name or args.nvidia_smi} (nvidia-smi {snapshot.format})")
        for line in gpu.render_check(result):
            out(line)
    return EXIT_FAILED if result.verdict.level == "fail" else 0


def cmd_offers(args: argparse.Namespace) -> int:

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
            "no cloud provider is configured: add a [providers.lambda], [providers.vast] or [providers.runpod] "
            "table (or a host using one) to hosts.toml, or export LAMBDA_API_KEY, VAST_API_KEY or RUNPOD_API_KEY"
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
