"""How quickly a run answers: `gpubox run` to its first line of output, and one poll of `gpubox runs`.

Both on the built-in `local` host with the env already built, next to the anchor of a bare
`ssh host 'echo …'` (a fresh OpenSSH connection running one command) in the same run.

    .venv/bin/python bench/runs.py [--repeat 10] [--runs 200] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish

SECTION = "## Runs (bench/runs.py)"


def until_line(argv: list[str], marker: str, cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line:
            elapsed = time.perf_counter() - started
            break
    else:
        raise RuntimeError(f"{argv} never printed {marker!r}")
    process.wait(60)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    gpubox = str(Path(sys.executable).with_name("gpubox"))
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-runs-") as folder:
        work = Path(folder)
        env = dict(os.environ, GPUBOX_HOME=str(work / "home"))
        os.environ["GPUBOX_HOME"] = env["GPUBOX_HOME"]
        project = work / "proj"
        project.mkdir()
        (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{work / "remote"}"\n')
        (project / ".gitignore").write_text("hosts.toml\n")
        (project / "requirements.txt").write_text("# no packages: the env is a plain venv\n")
        subprocess.run(
            [gpubox, "run", "-f", "--", "true"], cwd=project, env=env, check=True, capture_output=True
        )

        from gpubox.remote.providers.local import LocalSshd
        from gpubox.remote.sshd import SshdFiles

        server = LocalSshd().running()
        assert server is not None
        files = SshdFiles.in_folder(LocalSshd().folder)
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{server.port} {files.host_public_key}\n")
        ssh = [
            "ssh",
            "-p",
            str(server.port),
            "-i",
            str(files.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            "-o",
            "BatchMode=yes",
            "127.0.0.1",
        ]
        first_line, anchor = [], []
        for index in range(options.repeat):
            marker = f"first-line-{index}"
            first_line.append(until_line([gpubox, "run", "-f", "--", "echo", marker], marker, project, env))
            anchor.append(until_line([*ssh, f"echo {marker}"], marker, project, env))

        # Record many runs straight through the agent (starting 200 via the CLI would only time the CLI again).
        from gpubox.config import load_hosts, load_project
        from gpubox.remote.session import connect_host
        from gpubox.train.runs import start_run

        host = load_hosts(project).get("local")
        session = connect_host(host, load_project(project).name, probe=False)
        try:
            for _ in range(options.runs):
                start_run(session, ["true"])
        finally:
            session.close()
        polls = []
        listed = 0
        for _ in range(options.repeat):
            started = time.perf_counter()
            answer = subprocess.run(
                [gpubox, "runs", "--all", "--json"], cwd=project, env=env, check=True, capture_output=True
            )
            polls.append(time.perf_counter() - started)
            # The host keeps every run of every project in ~/.gpubox/runs: count what it really listed.
            listed = len(json.loads(answer.stdout)["runs"])
        LocalSshd().stop()

    run_median, anchor_median, poll_median = (statistics.median(x) for x in (first_line, anchor, polls))
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Median of {options.repeat} each.",
        f"Command: `.venv/bin/python bench/runs.py --repeat {options.repeat} --runs {options.runs} --write`",
        "",
        "| measure | gpubox | anchor: `ssh host 'echo …'` | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| `gpubox run -f -- echo …` to its first line (env cached, nothing to sync) | {run_median:.3f} s | "
        f"{anchor_median:.3f} s | {run_median / anchor_median:.2f}× | < 0.5 s |",
        f"| `gpubox runs --all --json` listing {listed} runs | {poll_median:.3f} s | "
        f"{anchor_median:.3f} s | {poll_median / anchor_median:.2f}× | < 0.3 s |",
        "",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
