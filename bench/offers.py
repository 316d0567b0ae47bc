"""How long `gpubox offers` takes over three clouds, against asking them one after another.

The three provider APIs are the test suite's local servers (tests/support/clouds), each made to answer its
offer listing after a set latency (default 0.8 s, about what a live marketplace search takes). The anchor, in the
same run, is asking the same three one by one, as with three separate CLIs (`gpubox offers --provider X` for
each). A third figure: one provider that never answers, with offers_timeout = 3 s, must not hold up the rest.

    .venv/bin/python bench/offers.py [--repeat 5] [--latency 0.8] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _results import machine, publish

from tests.support.clouds import FakeLambda, FakeRunPod, FakeVast

SECTION = "## Offers from three clouds (bench/offers.py)"
VARIABLES = {"lambda": "BENCH_LAMBDA_KEY", "vast": "BENCH_VAST_KEY", "runpod": "BENCH_RUNPOD_KEY"}


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{argv} failed: {result.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.8, help="seconds each offer listing takes")
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    gpubox = str(Path(sys.executable).with_name("gpubox"))
    clouds = {
        "lambda": FakeLambda(api_key="bench-lambda").start(),
        "vast": FakeVast(api_key="bench-vast").start(),
        "runpod": FakeRunPod(api_key="bench-runpod").start(),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="gpubox-bench-offers-") as folder:
            work = Path(folder)
            env = dict(os.environ, GPUBOX_HOME=str(work / "home"))
            project = work / "proj"
            project.mkdir()
            toml = "".join(
                f'[providers.{name}]\napi_key_env = "{VARIABLES[name]}"\napi_url = "{cloud.url}"\n'
                f"offers_timeout = 3\n"
                for name, cloud in clouds.items()
            )
            (project / "hosts.toml").write_text(toml)
            for name, cloud in clouds.items():
                env[VARIABLES[name]] = cloud.api_key
            together, one_by_one = [], []
            for _ in range(options.repeat):
                for cloud in clouds.values():
                    cloud.delay_next("offers", options.latency, count=2)
                together.append(timed([gpubox, "offers", "--json"], project, env))
                one_by_one.append(
                    sum(timed([gpubox, "offers", "--provider", n, "--json"], project, env) for n in clouds)
                )
            hung = []
            for _ in range(options.repeat):
                clouds["vast"].delay_next("offers", options.latency, count=1)
                clouds["runpod"].delay_next("offers", options.latency, count=1)
                clouds["lambda"].delay_next("offers", 30.0, count=1)
                hung.append(timed([gpubox, "offers", "--json"], project, env))
                clouds["lambda"].clear_failures()
    finally:
        for cloud in clouds.values():
            cloud.stop()
    parallel, sequential, stuck = (statistics.median(t) for t in (together, one_by_one, hung))
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/offers.py --repeat {options.repeat} "
        f"--latency {options.latency:g}{' --write' if options.write else ''}`.",
        f"Each cloud (local test servers) answers its offer listing after {options.latency:g} s; medians of "
        f"{options.repeat} runs, whole commands (Python start-up included).",
        "",
        "| what | gpubox offers (3 clouds at once) | anchor: the 3 asked one after another | ratio |",
        "| --- | --- | --- | --- |",
        f"| all three answer | {parallel:.2f} s | {sequential:.2f} s | {parallel / sequential:.2f}× |",
        f"| Lambda never answers (offers_timeout = 3 s) | {stuck:.2f} s | - | the other two shown, Lambda reported |",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
