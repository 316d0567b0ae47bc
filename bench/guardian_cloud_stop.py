"""How soon a rented host's guardian asks its cloud to stop it once the host is idle, with the laptop gone.

A vast.ai instance (the fake cloud of tests/support/clouds, on this machine) whose SSH host is a network
namespace: `gpubox up` rents it, a short run keeps it busy, the laptop's gpubox is SIGKILLed and its link to the
host cut (the host keeps its own way to the cloud's API). Measured: from the run's end (the host idle, its time
on the host) to the cloud receiving the stop call, signed by the instance's own key. The anchor, in the same
run, is what the configuration promises: the autostop window plus one of the guardian's looks.

Needs root (network namespaces).

    .venv/bin/python bench/guardian_cloud_stop.py [--repeat 3] [--minutes 0.1] [--write]
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
sys.path.insert(0, str(Path(__file__).parents[1]))
from _results import machine, publish

SECTION = "## Guardian: idle to the cloud's stop call with the laptop gone (bench/guardian_cloud_stop.py)"


def wait(predicate, timeout: float = 120.0, step: float = 0.02):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(step)
    raise RuntimeError("timed out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0.1, help="autostop_minutes (0.1: a 6 s window)")
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    gpubox = str(Path(sys.executable).with_name("gpubox"))
    window = options.minutes * 60
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-cloud-guardian-") as folder:
        work = Path(folder)
        host_home = work / "host-home"
        (host_home / ".gpubox").mkdir(parents=True)
        os.environ.update(GPUBOX_HOME=str(work / "home"), GPUBOX_LOCAL_HOME=str(host_home))
        from gpubox.remote.agent.host import sample_seconds
        from gpubox.state import open_state
        from tests.support.clouds import FakeVast
        from tests.support.netns import NetnsLab

        poll = sample_seconds(window)
        with NetnsLab(1, work / "lab") as lab:
            (host,) = lab.hosts
            with FakeVast(
                api_key="bench-account-key", ssh_host=host.ip, ssh_port=22, listen=host.uplink()
            ) as cloud:
                cloud.on_launch = lambda instance: host.server.set_env(
                    {"CONTAINER_API_KEY": instance.key, "CONTAINER_ID": str(instance.id)}
                )
                env = dict(os.environ, GPUBOX_BENCH_VAST_KEY=cloud.api_key)
                project = work / "proj"
                project.mkdir()
                (project / "hosts.toml").write_text(
                    f'[providers.vast]\napi_key_env = "GPUBOX_BENCH_VAST_KEY"\napi_url = "{cloud.url}"\n\n'
                    f'[hosts.box]\nprovider = "vast"\ngpu = "RTX 4090"\nuser = "{host.server.user}"\n'
                    f'identity_file = "{host.server.client_key}"\nremote_dir = "{work / "remote"}"\n'
                    f"autostop_minutes = {options.minutes}\n"
                )

                def gpubox_run(*args: str) -> str:
                    done = subprocess.run(
                        [gpubox, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
                    )
                    if done.returncode != 0:
                        raise RuntimeError(f"gpubox {' '.join(args)}: {done.stdout}{done.stderr}")
                    return done.stdout + done.stderr

                def holder() -> int | None:
                    with open_state() as state:
                        found = state.supervisor("box")
                    return found.pid if found else None

                gaps = []
                for _ in range(options.repeat):
                    gpubox_run("up", "box", "--yes", "--detach", "--no-services", "--no-sync", "--accept-new")
                    pid = wait(holder)
                    wait(lambda: list(host_home.glob(".gpubox/guardian/*/status.json")))
                    started = gpubox_run(
                        "run", "--host", "box", "--no-sync", "--", "sleep", str(window * 0.7)
                    )
                    run_id = re.search(r"\br-\d+\b", started)
                    assert run_id, started
                    os.kill(pid, signal.SIGKILL)
                    host.link_down()
                    asked = len(cloud.requests_for("stop"))
                    wait(lambda: len(cloud.requests_for("stop")) > asked)  # noqa: B023 (waited on here)
                    call = cloud.requests_for("stop")[-1]
                    call_at = time.time() - (time.monotonic() - call.time)
                    ended = float((host_home / ".gpubox" / "runs" / run_id.group(0) / "ended_at").read_text())
                    gaps.append(call_at - ended)
                    host.link_up()
                    status = json.loads(gpubox_run("status", "--json"))
                    row = next(h for h in status["hosts"] if h["name"] == "box")
                    assert row["instance"]["state"] == "stopped", row
                    # Terminated in the console, as its user would: the machine is free for the next trial.
                    import httpx

                    for instance_id in list(cloud.instances):
                        httpx.delete(
                            f"{cloud.url}/api/v0/instances/{instance_id}/",
                            headers={"Authorization": f"Bearer {cloud.api_key}"},
                        ).raise_for_status()
    anchor = window + poll
    median = statistics.median(gaps)
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host: a network namespace rented from the "
        f"fake vast.ai API (tests/support/clouds) on this machine; the laptop's gpubox SIGKILLed and its link cut. "
        f"autostop_minutes = {options.minutes:g} (a {window:g} s window; the guardian looks every {poll:g} s). "
        f"{options.repeat} trials; idle = the end of a run (its time on the host); stop = the cloud receiving "
        '`PUT /api/v0/instances/{id}/ {"state": "stopped"}` signed by the instance\'s own key.',
        f"Command: `sudo .venv/bin/python bench/guardian_cloud_stop.py --repeat {options.repeat} "
        f"--minutes {options.minutes:g}" + (" --write`" if options.write else "`"),
        "",
        "| measure | laptop gone | anchor: autostop window + one look | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| host idle → the cloud's stop call, median | {median:.2f} s (min {min(gaps):.2f} s, max "
        f"{max(gaps):.2f} s) | {anchor:.2f} s | {median / anchor:.2f}× |",
        f"| past the autostop window, median | {median - window:.2f} s | {poll:.2f} s | |",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
