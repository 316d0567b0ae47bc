"""A randomized campaign of seeded fault schedules against gpubox, each ending with the invariant check.

Every schedule (tests/reliability/harness.py, ``run_schedule``) starts a fresh project on a host in a network
namespace whose project folder sits on a small tmpfs, holds it with ``gpubox up --detach`` (live sync), starts a
run and follows its log with ``gpubox logs -f``, edits the project all along, and plays one or two seeded faults:
the link down (5-30 s by default), the host's sshd killed and restarted, the local gpubox processes SIGKILLed and
started again, the host disk filled, and netem delay/loss where the kernel has it. Then it checks that local and
host trees are hash-identical (apart from ignored paths and outputs), that host outputs were never deleted, that
nothing was written outside the host project folder, the env and ~/.gpubox, that every run is accounted for and
that the followed log is byte-identical to the host's. Needs root (namespaces, tmpfs).

    .venv/bin/python bench/fault_campaign.py [--schedules 200] [--first-seed 0] [--link-down 5:30] [--write]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

from tests.reliability.harness import (  # noqa: E402
    FAULT_KINDS,
    Counters,
    ScheduleOutcome,
    SmallDisk,
    netem_unavailable_reason,
    run_schedule,
)
from tests.support import hosthome  # noqa: E402
from tests.support.netns import NetnsLab, netns_unavailable_reason  # noqa: E402

SECTION = "## Fault campaign (bench/fault_campaign.py)"


def _range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(":")
    return float(low), float(high or low)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--link-down", type=_range, default=(5.0, 30.0), help="seconds, LOW:HIGH")
    parser.add_argument("--max-faults", type=int, default=2)
    parser.add_argument("--horizon", type=float, default=36.0, help="no schedule's faults last longer")
    parser.add_argument("--json", type=Path, help="also write the counters and per-schedule outcomes here")
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    options = parser.parse_args()
    # A SIGTERM must unwind like Ctrl-C, so the namespace, its sshd and the tmpfs are removed on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    reason = netns_unavailable_reason()
    if reason:
        print(f"the fault campaign needs network namespaces: {reason}", file=sys.stderr)
        return 2
    counters = Counters()
    outcomes: list[ScheduleOutcome] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-faults-") as folder:
        work = Path(folder)
        os.environ["GPUBOX_HOME"] = str(work / "gpubox-home")
        os.environ[hosthome.ENV_VARIABLE] = str(hosthome.make_session_host_home(work / "host-home"))
        with NetnsLab(1, work / "lab") as lab, SmallDisk(work / "disk", size_mb=64) as disk:
            host = lab.hosts[0]
            host.server.restart()  # its sessions must see the tmpfs
            netem = netem_unavailable_reason(host)
            kinds = [kind for kind in FAULT_KINDS if kind != "netem" or netem is None]
            if netem:
                print(f"netem left out: {netem}")
            seeds = range(options.first_seed, options.first_seed + options.schedules)
            for number, seed in enumerate(seeds, 1):
                outcome = run_schedule(
                    host,
                    work / f"s{seed}",
                    seed,
                    counters,
                    kinds=kinds,
                    link_down_seconds=options.link_down,
                    horizon=options.horizon,
                    max_faults=options.max_faults,
                    disk=disk,
                )
                outcomes.append(outcome)
                verdict = "ok" if not outcome.problems else f"LOST: {outcome.problems[0][:400]}"
                print(
                    f"[{number}/{options.schedules}] {outcome.schedule.describe()} "
                    f"({outcome.seconds:.1f} s): {verdict}",
                    flush=True,
                )
                if options.json:
                    _dump(options.json, counters, outcomes)
    elapsed = time.monotonic() - started
    lines = _report(options, counters, outcomes, elapsed, netem)
    publish(SECTION, lines, options.write)
    return 0 if not counters.lost else 1


def _dump(path: Path, counters: Counters, outcomes: list[ScheduleOutcome]) -> None:
    document = counters.document()
    document["outcomes"] = [
        {
            "seed": o.schedule.seed,
            "faults": [f.describe() for f in o.schedule.faults],
            "seconds": round(o.seconds, 1),
            "problems": o.problems,
        }
        for o in outcomes
    ]
    path.write_text(json.dumps(document, indent=1) + "\n")


def _report(
    options: argparse.Namespace,
    counters: Counters,
    outcomes: list[ScheduleOutcome],
    elapsed: float,
    netem: str | None,
) -> list[str]:
    by_kind: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
    for outcome in outcomes:
        for result in outcome.schedule.outcomes:
            row = by_kind[result.fault.kind]
            if result.injected:
                row["injected"] += 1
                row["seconds"] += result.fault.seconds
                row["longest"] = max(row["longest"], result.fault.seconds)
            else:
                row["not injected"] += 1
        for kind in {f.kind for f in outcome.schedule.faults}:
            by_kind[kind]["schedules"] += 1
            by_kind[kind]["failed schedules"] += bool(outcome.problems)
    low, high = options.link_down
    durations = [o.seconds for o in outcomes]
    command = (
        f"`.venv/bin/python bench/fault_campaign.py --schedules {options.schedules} "
        f"--first-seed {options.first_seed} --link-down {low:g}:{high:g} --max-faults {options.max_faults} "
        f"--horizon {options.horizon:g}{' --write' if options.write else ''}`"
    )
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: one network-namespace host (veth, real "
        f"sshd), project folder on a 64 MB tmpfs. Wall time {elapsed / 60:.1f} min, "
        f"{statistics.mean(durations) if durations else 0:.1f} s per schedule on average.",
        f"Command (as root): {command}",
        "",
        f"Seeds {options.first_seed}..{options.first_seed + options.schedules - 1}, each: fresh project (80 files), "
        "`gpubox up --detach` live-syncing, one run (`job.py`, a line every 50 ms for the schedule's length, "
        "an output file) followed by `gpubox logs -f`, a seeded edit every 0.05-0.3 s (new files, rewrites, "
        f"safe-write renames, deletions, exec-bit flips), 1-{options.max_faults} faults one at a time, then "
        "the invariant check.",
        "",
        "| fault | injected | total time | longest | schedules with it | of them failed |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in FAULT_KINDS:
        row = by_kind.get(kind)
        if row is None:
            continue
        lines.append(
            f"| {kind} | {int(row['injected'])} | {row['seconds']:.0f} s | {row['longest']:.1f} s "
            f"| {int(row['schedules'])} | {int(row['failed schedules'])} |"
        )
    failed = [o for o in outcomes if o.problems]
    lines += [
        "",
        f"Faults injected: {sum(counters.faults.values())} ({', '.join(f'{k} {v}' for k, v in sorted(counters.faults.items()))}). "
        f"Checked: {counters.files_checked:,} files and {counters.bytes_compared:,} bytes compared local↔host, "
        f"{counters.outputs_checked:,} host outputs, {counters.runs_checked} runs, "
        f"{counters.log_bytes_compared:,} log bytes compared with the host's.",
        f"Lost (files, outputs, log bytes, runs, writes outside the allowed folders): "
        f"{'nothing' if not counters.lost else f'{len(counters.lost)} problems in {len(failed)} schedules'}.",
    ]
    if netem:
        lines.append(f"netem faults not played: {netem}")
    for outcome in failed[:10]:
        lines.append(f"- {outcome.schedule.describe()}: {outcome.problems[0][:300]}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
