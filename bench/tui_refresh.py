"""How long the dashboard takes to apply one refresh to the screen, and how much memory it holds.

Synthetic state of 16 hosts × 8 GPUs and 500 runs (tests/tui/synthetic.py: two runs training on each host, one
host not answering), drawn by the real app, headless, at 200×50. One refresh is what the UI thread does when
every host has answered: feed the 16 host samples to the model (GPU history, runs, events), take a snapshot,
update the tables (only the cells that changed), the detail and status lines, the log and curves, and render
the screen. Building the samples (the pollers' work, in their threads) is not counted.

    .venv/bin/python bench/tui_refresh.py [--refreshes 200] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish  # noqa: E402

from gpubox.tui.app import GpuboxApp  # noqa: E402
from tests.tui import synthetic  # noqa: E402

SECTION = "## Dashboard refresh (bench/tui_refresh.py)"
TARGET_P95_MS = 50.0
TARGET_RSS_MB = 200.0


def rss_mb() -> float:
    """Resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(refreshes: int, size: tuple[int, int]) -> tuple[list[float], float, float, int, int]:
    model, hosts = synthetic.many()
    app = GpuboxApp(hosts, synthetic.project(), model=model, live=False)
    timings: list[float] = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for tick in range(1, refreshes + 21):
            samples = synthetic.many_samples(hosts, tick)
            model.clock = lambda tick=tick: synthetic.NOW + tick  # type: ignore[misc]
            started = time.perf_counter()
            for sample in samples:
                model.apply_host(sample)
            app.refresh_view()
            # Every widget has handled what the refresh posted, then the screen is rendered (what
            # Pilot.pause does, without its idle wait).
            await pilot._wait_for_screen()
            app.screen._on_timer_update()
            elapsed = time.perf_counter() - started
            if tick > 20:  # the first refreshes fill the GPU history and Python's caches
                timings.append(elapsed * 1000)
            await asyncio.sleep(0)
        hosts_shown = app.screen.query_one("#hosts").row_count  # type: ignore[attr-defined]
        runs_shown = app.screen.query_one("#runs").row_count  # type: ignore[attr-defined]
        now = rss_mb()
    # The kernel's high-water mark lags behind VmRSS a little: the peak is at least what was just read.
    peak = max(now, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return timings, now, peak, hosts_shown, runs_shown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=200)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. Refreshes measured: "
        f"{options.refreshes} per size (after 20 warm-up ones), headless Textual app.",
        f"Command: `.venv/bin/python bench/tui_refresh.py --refreshes {options.refreshes}"
        f"{' --write' if options.write else ''}`",
        "",
        "| terminal | hosts × GPUs | runs shown | median | p95 | max | RSS at the end | peak RSS so far |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts = []
    for size in ((200, 50), (80, 24)):
        timings, now, peak, hosts_shown, runs_shown = asyncio.run(measure(options.refreshes, size))
        median, p95 = statistics.median(timings), percentile(timings, 0.95)
        lines.append(
            f"| {size[0]}×{size[1]} | {hosts_shown} × 8 | {runs_shown} | {median:.1f} ms | {p95:.1f} ms | "
            f"{max(timings):.1f} ms | {now:.1f} MB | {peak:.1f} MB |"
        )
        verdicts.append((p95 <= TARGET_P95_MS, peak < TARGET_RSS_MB, size, p95, peak))
    lines.append("")
    for fast, small, size, p95, peak in verdicts:
        lines.append(
            f"{size[0]}×{size[1]}: p95 {p95:.1f} ms (target ≤ {TARGET_P95_MS:.0f} ms): "
            f"{'met' if fast else 'MISSED'}; peak RSS {peak:.0f} MB (target < {TARGET_RSS_MB:.0f} MB): "
            f"{'met' if small else 'MISSED'}."
        )
    lines.append(
        "A refresh: 16 host samples fed to the model, a snapshot, the changed cells of the hosts and runs "
        "tables (GPU sparklines and figures of every host, progress, elapsed time and cost of the 32 running "
        "runs), the detail, log, curves and status lines, then the screen rendered. RSS is the whole "
        "process (Python, Textual, gpubox, the synthetic state)."
    )
    publish(SECTION, lines, options.write)
    return 0 if all(fast and small for fast, small, *_ in verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
