"""How fast the gpubox command answers: `gpubox --help` and `gpubox status` next to `python -c pass`.

Each command runs --runs times (default 20) in a fresh process, in the same run and on the same machine, so
the ratio to a bare interpreter start is comparable across machines. `status` runs against an empty
GPUBOX_HOME (no hosts.toml, so only the built-in local host) and answers from the state database without
connecting anywhere. Peer CLIs are timed too when they are installed (`sky`, `dstack`).

    .venv/bin/python bench/cli_startup.py [--runs 20] [--write]

--write replaces this benchmark's section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish

SECTION = "## CLI start-up (bench/cli_startup.py)"
TARGET_HELP_S = 0.15


def time_command(argv: list[str], runs: int, env: dict[str, str], cwd: str) -> list[float]:
    samples = []
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)  # warm the page cache
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=True)
        samples.append(time.perf_counter() - started)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    options = parser.parse_args()

    python = sys.executable
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as project:
        env = dict(os.environ, GPUBOX_HOME=home)
        # The installed entry point is what users type; fall back to -m when it is not on disk.
        script = Path(python).with_name("gpubox")
        gpubox = [str(script)] if script.exists() else [python, "-m", "gpubox"]
        cases: list[tuple[str, list[str]]] = [
            ("python -c pass", [python, "-c", "pass"]),
            ("gpubox --help", [*gpubox, "--help"]),
            ("gpubox status", [*gpubox, "status"]),
        ]
        for peer in ("sky", "dstack"):
            found = shutil.which(peer)
            if found:
                cases.append((f"{peer} --help", [found, "--help"]))
        medians: dict[str, float] = {}
        rows = []
        for label, argv in cases:
            samples = time_command(argv, options.runs, env, project)
            medians[label] = statistics.median(samples)
            rows.append((label, medians[label], max(samples)))

    baseline = medians["python -c pass"]
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Runs per command: {options.runs}.",
        f"Command: `.venv/bin/python bench/cli_startup.py --runs {options.runs} --write`",
        "",
        "| command | median | slowest | × `python -c pass` |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, median, slowest in rows:
        lines.append(
            f"| `{label}` | {median * 1000:.0f} ms | {slowest * 1000:.0f} ms | {median / baseline:.2f}× |"
        )
    help_median = medians["gpubox --help"]
    verdict = (
        "met" if help_median < TARGET_HELP_S else f"missed by {(help_median - TARGET_HELP_S) * 1000:.0f} ms"
    )
    lines += [
        "",
        f"Target `gpubox --help` < {TARGET_HELP_S * 1000:.0f} ms: {verdict}. For scale (design.md, same kind of "
        "2-core machine): `sky --help` ≈ 1.9 s, `dstack --help` ≈ 1.1 s.",
        "",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
