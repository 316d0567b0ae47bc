"""How soon an idle host is stopped with the laptop gone: the guardian's stop, timed from the moment the host
went idle (the end of its last run), after the laptop's supervisor was SIGKILLed.

On the built-in `local` host (the stop is its sshd's), next to the anchor of the same stop with the laptop's
gpubox still holding the host, in the same run. Both are the autostop window plus the delay to the stop; the
table gives the delay past the window too.

    .venv/bin/python bench/guardian_stop.py [--repeat 5] [--minutes 0.05] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish

SECTION = "## Guardian: idle to stop with the laptop gone (bench/guardian_stop.py)"


def wait(predicate, timeout: float = 60.0, step: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(step)
    raise RuntimeError("timed out")


def trial(gpubox: str, project: Path, env: dict[str, str], host_home: Path, *, gone: bool) -> float:
    """Seconds from the run's end (the host idle) to the guardian's stop of the local sshd."""
    from gpubox.remote.providers.local import LocalSshd
    from gpubox.state import open_state

    def holder() -> int | None:
        with open_state() as state:
            found = state.supervisor("local")
        return found.pid if found else None

    subprocess.run(
        [gpubox, "up", "--detach", "--no-sync", "--no-services"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    pid = wait(holder)
    wait(lambda: list(host_home.glob(".gpubox/guardian/*/status.json")))
    started = subprocess.run(
        [gpubox, "run", "--no-sync", "--", "sleep", "1"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    found = re.search(r"\br-\d+\b", started.stdout + started.stderr)
    assert found, started.stdout
    if gone:
        os.kill(pid, signal.SIGKILL)
    (stopped,) = wait(lambda: list(host_home.glob(".gpubox/guardian/*/stopped.json")))
    wait(lambda: LocalSshd().running() is None)
    at = float(json.loads(stopped.read_text())["at"])
    ended = float((host_home / ".gpubox" / "runs" / found.group(0) / "ended_at").read_text())
    if not gone:
        wait(lambda: holder() is None)
    return at - ended


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=0.05, help="autostop_minutes (0.05: a 3 s window)")
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    gpubox = str(Path(sys.executable).with_name("gpubox"))
    window = options.minutes * 60
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-guardian-") as folder:
        work = Path(folder)
        host_home = work / "host-home"
        (host_home / ".gpubox").mkdir(parents=True)
        env = dict(os.environ, GPUBOX_HOME=str(work / "home"), GPUBOX_LOCAL_HOME=str(host_home))
        os.environ.update(GPUBOX_HOME=env["GPUBOX_HOME"], GPUBOX_LOCAL_HOME=str(host_home))
        project = work / "proj"
        project.mkdir()
        (project / "hosts.toml").write_text(
            f'[hosts.local]\nremote_dir = "{work / "remote"}"\nautostop_minutes = {options.minutes}\n'
        )
        gone, present = [], []
        for _ in range(options.repeat):
            gone.append(trial(gpubox, project, env, host_home, gone=True))
            present.append(trial(gpubox, project, env, host_home, gone=False))
    g, p = statistics.median(gone), statistics.median(present)
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: the built-in local host; the stop is its "
        f"sshd's. autostop_minutes = {options.minutes:g} (a {window:g} s window; the guardian looks every "
        f"{min(30.0, max(0.5, window / 6)):g} s). {options.repeat} trials each; idle = the end of a `sleep 1` run.",
        f"Command: `.venv/bin/python bench/guardian_stop.py --repeat {options.repeat} --minutes {options.minutes:g}"
        + (" --write`" if options.write else "`"),
        "",
        "| measure | laptop gone (supervisor SIGKILLed) | anchor: laptop holding the host | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| host idle → stop action, median | {g:.2f} s (max {max(gone):.2f} s) | {p:.2f} s (max {max(present):.2f} s) "
        f"| {g / p:.2f}× |",
        f"| past the autostop window, median | {g - window:.2f} s | {p - window:.2f} s | |",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
