"""Soak: `gpubox up` held for --minutes with an edit every second and a training always running; does anything grow?

The host is a network-namespace host with a real sshd (root), the project a copy of examples/digits plus a src/
folder. Every second one file is rewritten with a new token and the time until the host holds exactly those bytes
is recorded (the batch latency, edit → visible on the host). The digits training runs back to back (`gpubox run`,
a few hundred epochs each) for the whole soak. At the start and then every minute the supervisor (`gpubox up
--detach`, the process holding the host) is sampled: resident memory, open file descriptors, threads; so is the
agent it talks to on the host. At the end the invariant check runs (trees identical, every run accounted for, its
log byte-identical to the host's). Not part of the test suite.

With --mixed, a second thread does what a day at the laptop does besides saving, one thing every 2-4 s (seeded):
a git branch switch in the project (40 tracked files, a third of them differing), a burst of 100 files made or
removed, a one-shot command (`status --json`, `runs --json`, `logs`), a page fetched through the tunnel of a file
server the project runs as a service, or (one time in fifteen) the link dropped: every per-session sshd process of
the host killed, as when a Wi-Fi blip resets the connection. Each failure is recorded; a page that fails within
25 s of a drop is counted apart (the tunnel holds a request up to 20 s while the supervisor reconnects).

    .venv/bin/python bench/soak.py [--minutes 30] [--epochs 300] [--mixed] [--write] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

from tests.reliability.harness import Counters, Invariants, Workspace  # noqa: E402
from tests.support import hosthome  # noqa: E402
from tests.support.netns import NetnsHost, NetnsLab, netns_unavailable_reason  # noqa: E402
from tests.support.sshd import children  # noqa: E402

SECTION = "## Soak (bench/soak.py)"
MIXED_SECTION = "## Soak, mixed (bench/soak.py --mixed)"
EDIT_FILES = 50
FILES_SERVICE = (
    "[services.jupyter]\nenabled = false\n[services.tensorboard]\nenabled = false\n"
    '[services.files]\ncommand = "python3 -m http.server {port} --bind 127.0.0.1"\nport = 8321\n'
)


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
    parser.add_argument("--mixed", action="store_true", help="branch switches, bursts, one-shots, drops too")
    parser.add_argument("--seed", type=int, default=1, help="the --mixed schedule's seed")
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
    if options.mixed:
        with open(ws.project / "gpubox.toml", "a") as handle:
            handle.write("\n" + FILES_SERVICE)
        make_branches(ws.project)
    counters = Counters()
    invariants = Invariants(ws, counters)
    pid = ws.up(services=options.mixed)
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
    mixed = Mixed(ws, options.seed, stop) if options.mixed else None
    if mixed is not None:
        mixed.start()
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
        if mixed is not None:
            mixed.join()
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
        "mixed": None if mixed is None else mixed.document(),
    }
    if options.json:
        options.json.write_text(json.dumps(document, indent=1) + "\n")
    publish(MIXED_SECTION if options.mixed else SECTION, report(options, document), options.write)
    failed = bool(mixed and mixed.failures)
    return 0 if not problems and alive and not late and not failed else 1


def make_branches(project: Path) -> None:
    """A git repository in the project with two branches that differ in a third of their 40 tracked files (the
    edited files and the training's outputs stay untracked: a checkout leaves them alone)."""

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.email=soak@gpubox", "-c", "user.name=soak", *args],
            cwd=project,
            check=True,
            capture_output=True,
        )

    folder = project / "branchy"
    folder.mkdir()
    for index in range(40):
        (folder / f"m{index:02d}.py").write_text(f"VALUE = {index}\n")
    git("init", "-q", "-b", "main")
    git("add", "branchy")
    git("commit", "-qm", "main")
    git("checkout", "-qb", "other")
    for index in range(0, 40, 3):
        (folder / f"m{index:02d}.py").write_text(f"VALUE = {index} * 2  # other\n")
    (folder / "only_other.py").write_text("OTHER = True\n")
    git("add", "branchy")
    git("commit", "-qm", "other")
    git("checkout", "-q", "main")


class Mixed(threading.Thread):
    """What a day at the laptop does besides saving (see the module's docstring); every failure is kept."""

    DROP_GRACE = 25.0

    def __init__(self, ws: Workspace, seed: int, stop: threading.Event) -> None:
        super().__init__(name="mixed", daemon=True)
        self.ws = ws
        self.rng = random.Random(seed)
        self.stop = stop
        self.counts: dict[str, int] = {}
        self.failures: list[str] = []
        self.pages_during_drops = 0
        self.last_drop = -1e9
        self.branch = "main"
        self.url: str | None = None

    def run(self) -> None:
        actions = {
            "branch switch": self.switch_branch,
            "burst": self.burst,
            "one-shot": self.one_shot,
            "page": self.page,
            "drop": self.drop,
        }
        weights = [4, 3, 5, 5, 1]
        while not self.stop.wait(self.rng.uniform(2.0, 4.0)):
            name = self.rng.choices(list(actions), weights)[0]
            self.counts[name] = self.counts.get(name, 0) + 1
            try:
                actions[name]()
            except Exception as exc:  # a timeout, a command that could not start: recorded like any failure
                self.failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")

    def switch_branch(self) -> None:
        self.branch = "other" if self.branch == "main" else "main"
        result = subprocess.run(
            ["git", "checkout", "-q", self.branch], cwd=self.ws.project, capture_output=True, text=True
        )
        if result.returncode:
            self.failures.append(f"git checkout {self.branch}: {result.stderr.strip()[:200]}")

    def burst(self) -> None:
        folder = self.ws.project / "generated"
        if folder.exists():
            shutil.rmtree(folder)
        else:
            folder.mkdir()
            for index in range(100):
                (folder / f"g{index:03d}.txt").write_text(f"{self.rng.random()}\n")

    def one_shot(self) -> None:
        command = self.rng.choice([("status", "--json"), ("runs", "--json"), ("logs",)])
        result = self.ws.gpubox(*command, timeout=120)
        if result.returncode or "Traceback" in result.stderr:
            self.failures.append(
                f"gpubox {' '.join(command)}: exit {result.returncode}: {result.stderr[-200:]}"
            )

    def page(self) -> None:
        import urllib.error
        import urllib.request

        if self.url is None:
            status = json.loads(self.ws.gpubox("status", "--json", timeout=120).stdout)
            (host,) = [h for h in status["hosts"] if h["services"]]
            self.url = next(s["url"] for s in host["services"] if s["name"] == "files")
        try:
            with urllib.request.urlopen(self.url, timeout=60) as answer:
                answer.read()
        except (OSError, urllib.error.URLError) as exc:
            if time.monotonic() - self.last_drop < self.DROP_GRACE:
                self.pages_during_drops += 1
            else:
                self.failures.append(f"page {self.url}: {exc}")

    def drop(self) -> None:
        server = self.ws.host.server
        if server.proc is None:
            return
        self.last_drop = time.monotonic()
        for pid in children(server.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def document(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "failures": self.failures,
            "pages_failed_within_a_drop": self.pages_during_drops,
        }


def report(options: argparse.Namespace, document: dict[str, object]) -> list[str]:
    samples: list[dict[str, object]] = document["samples"]  # type: ignore[assignment]
    lat: dict[str, float] = document["latency_s"]  # type: ignore[assignment]
    counters: dict[str, object] = document["counters"]  # type: ignore[assignment]
    lines = [
        MIXED_SECTION if options.mixed else SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: one network-namespace host (veth, real "
        "sshd) on the same machine; other work shared the 2 cores.",
        f"Command (as root): `.venv/bin/python bench/soak.py --minutes {options.minutes:g} --epochs "
        f"{options.epochs}{f' --mixed --seed {options.seed}' if options.mixed else ''}"
        f"{' --write' if options.write else ''}`",
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
    mixed: dict[str, Any] | None = document["mixed"]  # type: ignore[assignment]
    if mixed is not None:
        done = ", ".join(
            f"{count} {name}{'es' if name.endswith('h') else 's'}" for name, count in mixed["counts"].items()
        )
        lines += [
            "",
            f"Besides (`--mixed --seed {options.seed}`): {done}. Failures: "
            f"{len(mixed['failures'])}{': ' + '; '.join(mixed['failures'][:5]) if mixed['failures'] else ''}. "
            f"Pages that failed within {Mixed.DROP_GRACE:g} s of a drop: {mixed['pages_failed_within_a_drop']}. "
            "The latency's tail is the drops': an edit made while the link is down lands after the reconnect.",
        ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
