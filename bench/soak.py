"""Soak: `gpubox up` held for --minutes with an edit every second and a training always running; does anything grow?

The host is a network-namespace host with a real sshd (root), the project a copy of examples/digits plus a src/
folder. Every second one file is rewritten with a new token and the time until the host holds exactly those bytes
is recorded (the batch latency, edit → visible on the host). The digits training runs back to back (`gpubox run`,
a few hundred epochs each) for the whole soak. At the start and then every minute the supervisor (`gpubox up
--detach`, the process holding the host) is sampled: resident memory, open file descriptors, threads; so is the
agent it talks to on the host. At the end the invariant check runs (trees identical, every run accounted for, its
log byte-identical to the host's). Not part of the test suite.

    .venv/bin/python bench/soak.py [--minutes 30] [--epochs 300] [--write] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

from tests.reliability.harness import Counters, Invariants, Workspace  # noqa: E402
from tests.support import hosthome  # noqa: E402
from tests.support.netns import NetnsHost, NetnsLab, netns_unavailable_reason  # noqa: E402

SECTION = "## Soak (bench/soak.py)"
EDIT_FILES = 50


def proc_sample(pid: int) -> dict[str, int] | None:
    """RSS (KiB), open fds and threads of *pid*, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "fds": fds,
        "threads": int(fields["Threads"].strip()),
    }


def host_agent_pid(host: NetnsHost) -> int | None:
    """The longest-running gpubox agent in the host's namespace: the one the supervisor holds."""
    listing = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout
    agents = []
    for text in listing.split():
        try:
            command = Path(f"/proc/{text}/cmdline").read_bytes()
            started = int(Path(f"/proc/{text}/stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        if b"GPUBOX-BOOT" in command:
            agents.append((started, int(text)))
    return min(agents)[1] if agents else None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=300, help="epochs per training run (runs back to back)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    reason = netns_unavailable_reason()
    if reason:
        print(f"the soak needs a network-namespace host: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-soak-") as folder:
        work = Path(folder)
        os.environ["GPUBOX_HOME"] = str(work / "gpubox-home")
        os.environ[hosthome.ENV_VARIABLE] = str(hosthome.make_session_host_home(work / "host-home"))
        with NetnsLab(1, work / "lab") as lab:
            return soak(lab.hosts[0], work, options)


def soak(host: NetnsHost, work: Path, options: argparse.Namespace) -> int:
    ws = Workspace(host, work)
    shutil.rmtree(ws.project)
    shutil.copytree(
        REPO / "examples" / "digits", ws.project, ignore=shutil.ignore_patterns("logs", "checkpoints")
    )
    for index in range(EDIT_FILES):
        (ws.project / "src").mkdir(exist_ok=True)
        (ws.project / "src" / f"edit{index:02d}.py").write_text(f"# edit file {index}\n")
    counters = Counters()
    invariants = Invariants(ws, counters)
    pid = ws.up()
    runs: list[str] = []

    def start_training() -> None:
        result = ws.gpubox("run", "--", "python", "train.py", "--epochs", str(options.epochs), timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"gpubox run failed: {result.stderr.strip()}")
        run_id = next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("started "))
        runs.append(run_id)
        invariants.expect_run(run_id)

    stop = threading.Event()
    hiccups: list[str] = []
    """Commands of the training loop that failed and were tried again (a slow login on a shared host, say)."""

    def current_run_ended() -> bool:
        try:
            return ws.runs().get(runs[-1], {}).get("state") not in ("starting", "running")
        except Exception as exc:
            hiccups.append(f"runs: {str(exc).strip().splitlines()[-1][:200]}")
            return False

    def train_back_to_back() -> None:
        while True:
            while not stop.wait(5.0) and not current_run_ended():
                pass
            if stop.is_set():
                return
            try:
                start_training()
            except Exception as exc:
                hiccups.append(f"run: {str(exc).strip().splitlines()[-1][:200]}")

    start_training()
    trainer = threading.Thread(target=train_back_to_back, name="training")
    trainer.start()
    samples: list[dict[str, object]] = []
    latencies: list[float] = []
    late: list[float] = []

    def sample(minute: float) -> None:
        agent = host_agent_pid(host)
        row: dict[str, object] = {
            "minute": round(minute, 2),
            "supervisor": proc_sample(pid),
            "agent": proc_sample(agent) if agent else None,
            "edits": len(latencies),
            "runs": len(runs),
        }
        samples.append(row)
        print(json.dumps(row), flush=True)

    started = time.monotonic()
    end = started + options.minutes * 60
    next_sample = started
    edit = 0
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                sample((now - started) / 60)
                next_sample += 60
            rel = f"src/edit{edit % EDIT_FILES:02d}.py"
            body = f"# edit {edit} at {time.time():.6f}\nVALUE = {edit}\n".encode()
            written = time.monotonic()
            (ws.project / rel).write_bytes(body)
            target = ws.remote / rel
            while True:
                try:
                    if target.read_bytes() == body:
                        break
                except OSError:
                    pass
                if time.monotonic() - written > 60:
                    late.append(written - started)
                    break
                time.sleep(0.002)
            latencies.append(time.monotonic() - written)
            edit += 1
            time.sleep(max(0.0, written + 1.0 - time.monotonic()))
        sample((time.monotonic() - started) / 60)
        alive = ws.up_alive()
        stop.set()
        trainer.join(120)
        problems = invariants.check(converge_seconds=120)
    finally:
        stop.set()
        ws.stop_up()
    document = {
        "minutes": options.minutes,
        "edits": len(latencies),
        "late_edits": late,
        "latency_s": {
            "p50": percentile(latencies, 0.5),
            "p99": percentile(latencies, 0.99),
            "max": max(latencies),
            "mean": statistics.mean(latencies),
        },
        "samples": samples,
        "runs": runs,
        "supervisor_alive_at_end": alive,
        "counters": counters.document(),
        "problems": problems,
        "hiccups": hiccups,
        "latencies": [round(value, 5) for value in latencies],
    }
    if options.json:
        options.json.write_text(json.dumps(document, indent=1) + "\n")
    publish(SECTION, report(options, document), options.write)
    return 0 if not problems and alive and not late else 1


def report(options: argparse.Namespace, document: dict[str, object]) -> list[str]:
    samples: list[dict[str, object]] = document["samples"]  # type: ignore[assignment]
    lat: dict[str, float] = document["latency_s"]  # type: ignore[assignment]
    counters: dict[str, object] = document["counters"]  # type: ignore[assignment]
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: one network-namespace host (veth, real "
        "sshd) on the same machine; other work shared the 2 cores.",
        f"Command (as root): `.venv/bin/python bench/soak.py --minutes {options.minutes:g} --epochs "
        f"{options.epochs}{' --write' if options.write else ''}`",
        "",
        f"`gpubox up --detach` held the host for {options.minutes:g} min with an edit every second "
        f"({document['edits']} edits, each a rewrite of one of {EDIT_FILES} files) and the digits training "
        f"running back to back ({len(document['runs'])} runs of {options.epochs} epochs).",  # type: ignore[arg-type]
        "",
        "| process | measure | start | end | max |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for who, label in (("supervisor", "local `gpubox up`"), ("agent", "host agent")):
        rows = [s[who] for s in samples if s.get(who)]
        if not rows:
            continue
        for key, name in (("rss_kib", "RSS"), ("fds", "open fds"), ("threads", "threads")):
            values = [r[key] for r in rows]  # type: ignore[index]
            if key == "rss_kib":
                shown = [f"{v / 1024:.1f} MiB" for v in (values[0], values[-1], max(values))]
            else:
                shown = [str(v) for v in (values[0], values[-1], max(values))]
            lines.append(f"| {label} | {name} | {shown[0]} | {shown[1]} | {shown[2]} |")
    lines += [
        "",
        f"Batch latency (edit → bytes visible on the host), {document['edits']} edits: p50 {lat['p50'] * 1000:.1f} ms, "
        f"p99 {lat['p99'] * 1000:.1f} ms, max {lat['max'] * 1000:.1f} ms, mean {lat['mean'] * 1000:.1f} ms; "
        f"edits not visible within 60 s: {len(document['late_edits'])}.",  # type: ignore[arg-type]
        f"Invariants at the end: {counters['files_checked']} files / {counters['bytes_compared']:,} bytes compared, "
        f"{counters['runs_checked']} runs accounted for, {counters['log_bytes_compared']:,} log bytes compared; "
        f"lost: {'nothing' if not document['problems'] else document['problems']}. "
        f"Supervisor alive at the end: {'yes' if document['supervisor_alive_at_end'] else 'NO'}. "
        f"Training-loop commands that failed and were retried: {len(document['hiccups'])}.",  # type: ignore[arg-type]
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
