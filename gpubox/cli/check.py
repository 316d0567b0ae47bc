"""`gpubox check`: a host, or offline a saved nvidia-smi output (which must stay light: no SSH library loads)."""

from __future__ import annotations

import argparse
import sys

from gpubox.cli.output import ask_to_pin, load_hosts, load_project, out, print_json
from gpubox.errors import EXIT_FAILED, BadInput, UsageError
from gpubox.remote import gpu
from gpubox.train.env import requirements_file

__all__ = ["cmd_check"]


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
        from gpubox.actions.check import check_host  # here, so the offline check never loads paramiko

        result = check_host(host, project, requested=requested, accept_new=args.accept_new, ask=ask_to_pin())
        snapshot = result.snapshot
    if args.json:
        print_json(result.document)
    else:
        out(f"gpubox check {host_name or args.nvidia_smi} (nvidia-smi {snapshot.format})")
        for line in gpu.render_check(result):
            out(line)
    return EXIT_FAILED if result.verdict.level == "fail" else 0
