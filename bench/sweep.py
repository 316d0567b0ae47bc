"""A 16-trial sweep on two hosts against the same 16 runs one after another, and the scheduling overhead.

Two hosts: network namespaces with their own sshd when run as root (tests/support/netns.py), else two loopback
sshds. Each trial sleeps through its epochs (so two hosts can overlap however few cores the machine has) and
prints the time it started as its first line. The anchor is what a user without sweeps does: a shell loop of
`gpubox run -f` with the same 16 parameter sets, one after another, on the first host. Overhead per trial: from
a slot freeing (the previous run on that host ended) to the next trial's first log line there.

    .venv/bin/python bench/sweep.py [--trials 16] [--epochs 4] [--pause 0.5] [--write]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

from tests.support.netns import NetnsLab, netns_unavailable_reason  # noqa: E402
from tests.support.sshd import SshServer  # noqa: E402

SECTION = "## Sweep on two hosts (bench/sweep.py)"

TRIAL = """
import argparse, time
print("first", repr(time.time()), flush=True)
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float)
p.add_argument("--units", type=int)
p.add_argument("--epochs", type=int)
p.add_argument("--pause", type=float)
a = p.parse_args()
for epoch in range(a.epochs):
    time.sleep(a.pause)
    print(f"Epoch {epoch + 1}/{a.epochs}")
    print(f"val_accuracy: {(1 - abs(a.lr - 0.01)) * a.units / 128 * (epoch + 1) / a.epochs:.6f}", flush=True)
"""

LRS = (0.001, 0.003, 0.01, 0.03)
UNITS = (16, 32, 64, 128)


@contextlib.contextmanager
def two_hosts(folder: Path) -> Iterator[tuple[str, list[tuple[str, str, int, Path]]]]:
    """(kind, [(hostname, user, port, client key)] × 2)."""
    if netns_unavailable_reason() is None:
        with NetnsLab(2, folder / "lab") as lab:
            yield (
                "two network namespaces, each with its own sshd",
                [(h.ip, h.server.user, h.port, h.server.client_key) for h in lab.hosts],
            )
        return
    servers = [SshServer(folder / f"sshd-{i}").start() for i in range(2)]
    try:
        yield "two loopback sshds", [(s.host, s.user, s.port, s.client_key) for s in servers]
    finally:
        for server in servers:
            server.stop()


def gpubox(
    *args: str, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpubox", *args], cwd=cwd, env=env, capture_output=True, text=True, check=check
    )


def runs_by_id(project: Path, env: dict[str, str], host: str) -> dict[str, dict[str, Any]]:
    listing = json.loads(gpubox("runs", "--all", "--json", "--host", host, cwd=project, env=env).stdout)
    return {run["id"]: run for run in listing["runs"]}


def first_line_time(project: Path, env: dict[str, str], host: str, run_id: str) -> float:
    log = gpubox("logs", run_id, "--host", host, cwd=project, env=env).stdout
    return float(log.splitlines()[0].split()[1])


def overheads(starts: list[tuple[float, float, float]]) -> list[float]:
    """From each run's (first line, started_at, ended_at) on one slot, in order: slot free → next first line."""
    ordered = sorted(starts, key=lambda s: s[1])
    return [after[0] - before[2] for before, after in itertools.pairwise(ordered)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds each epoch sleeps")
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    points = [(lr, units) for lr in LRS for units in UNITS][: options.trials]
    with (
        tempfile.TemporaryDirectory(prefix="gpubox-bench-sweep-") as folder,
        two_hosts(Path(folder)) as (kind, hosts),
    ):
        work = Path(folder)
        env = dict(os.environ, GPUBOX_HOME=str(work / "home"), HOME=str(work / "user"))
        (work / "user" / ".ssh").mkdir(parents=True)
        project = work / "proj"
        project.mkdir()
        (project / ".gitignore").write_text("hosts.toml\n")
        (project / "trial.py").write_text(TRIAL)
        entries = []
        for index, (hostname, user, port, key) in enumerate(hosts):
            entries.append(
                f'[hosts.h{index}]\nhostname = "{hostname}"\nport = {port}\nuser = "{user}"\n'
                f'identity_file = "{key}"\naccept_new = true\nremote_dir = "{work / f"remote-{index}"}"\n'
            )
        (project / "hosts.toml").write_text("".join(entries))
        command = f"python3 trial.py --lr {{lr}} --units {{units}} --epochs {options.epochs} --pause {options.pause}"
        (project / "gpubox.toml").write_text(
            f'[sweep]\ncommand = "{command}"\nmetric = "val_accuracy"\ndirection = "maximize"\nsampler = "grid"\n'
            f"trials = {options.trials}\n\n[sweep.params]\nlr = {list(LRS)}\nunits = {list(UNITS)}\n"
        )
        # Warm both hosts (agent upload, first sync) so neither side pays it in the figures.
        for name in ("h0", "h1"):
            gpubox("run", "-f", "--host", name, "--", "true", cwd=project, env=env)

        # The anchor: the same runs, one after another, as a shell loop of `gpubox run -f` does.
        loop_started = time.perf_counter()
        loop_ids = []
        for lr, units in points:
            ran = gpubox(
                "run", "-f", "--host", "h0", "--", command.format(lr=lr, units=units), cwd=project, env=env
            )
            loop_ids.append(
                next(line.split()[1] for line in ran.stdout.splitlines() if line.startswith("started "))
            )
        loop_wall = time.perf_counter() - loop_started
        listed = runs_by_id(project, env, "h0")
        loop_spans = [
            (
                first_line_time(project, env, "h0", run_id),
                listed[run_id]["started_at"],
                listed[run_id]["ended_at"],
            )
            for run_id in loop_ids
        ]
        loop_gaps = overheads(loop_spans)

        sweep_started = time.perf_counter()
        result = gpubox(
            "sweep", "bench", "--hosts", "h0,h1", "--follow", "--json", cwd=project, env=env, check=False
        )
        sweep_wall = time.perf_counter() - sweep_started
        document = json.loads(result.stdout)
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(document["trials"]) == options.trials
        gaps: list[float] = []
        per_host: dict[str, int] = {}
        for host in ("h0", "h1"):
            runs = runs_by_id(project, env, host)
            spans = []
            for trial in document["trials"]:
                if trial["host"] != host:
                    continue
                run = runs[trial["run"]]
                spans.append(
                    (first_line_time(project, env, host, run["id"]), run["started_at"], run["ended_at"])
                )
            per_host[host] = len(spans)
            gaps += overheads(spans)
        trial_time = statistics.median(t["duration_s"] for t in document["trials"])

    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.0f} ms (p90 {1000 * sorted(values)[int(0.9 * (len(values) - 1))]:.0f} ms)"

    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Hosts: {kind}. "
        f"Each trial: {options.epochs} epochs of {options.pause} s (median run {trial_time:.2f} s).",
        f"Command: `.venv/bin/python bench/sweep.py --trials {options.trials} --epochs {options.epochs} "
        f"--pause {options.pause}{' --write' if options.write else ''}`",
        "",
        "| measure | `gpubox sweep` on 2 hosts | anchor: the same runs, one `gpubox run -f` after another | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| wall time, {options.trials} trials (from the command to the last result) | {sweep_wall:.1f} s | "
        f"{loop_wall:.1f} s | {sweep_wall / loop_wall:.2f}× |",
        f"| a slot freeing → the next trial's first log line, median | {ms(gaps)} | {ms(loop_gaps)} | "
        f"{statistics.median(gaps) / statistics.median(loop_gaps):.2f}× |",
        "",
        f"Trials per host: {', '.join(f'{h} {n}' for h, n in per_host.items())}. Best: trial "
        f"{document['best']['number']} {document['best']['params']} val_accuracy {document['best']['value']:.4g}. "
        "The sweep's wall time includes the scheduler's start (Optuna, the study, both hosts' sync) and `--follow`.",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
