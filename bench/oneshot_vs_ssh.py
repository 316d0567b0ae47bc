"""One-shot commands under `gpubox up` against a fresh `ssh host true`, on the same sshd, in the same run.

With `gpubox up --detach --no-services` holding the built-in `local` host (gpubox's private sshd on 127.0.0.1),
each of these is timed end to end as a user runs it (process start, connect, the answer):

  - `gpubox run -f -- echo …` until its first output line (the env already built, nothing to sync)
  - `gpubox runs --json`
  - `gpubox logs RUN` of a finished run
  - `gpubox status --json`

next to the anchor `ssh -p PORT -i KEY -o ControlMaster=no 127.0.0.1 true` (a fresh OpenSSH connection running
one command), alternating command and anchor, A B A B; medians. Two floors are printed for scale: `gpubox --help`
(Python start-up and the CLI's import, no host) and `python -c pass`.

Everything is kept apart from the developer's own: GPUBOX_HOME (the sshd, its keys, gpubox's state) and
GPUBOX_LOCAL_HOME (the host's home: runs, envs) point into a temporary folder; the host is brought down at the
end, on failure and on Ctrl-C too.

    .venv/bin/python bench/oneshot_vs_ssh.py [--repeat 15] [--write]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import compile_gpubox, machine, publish

SECTION = "## One-shot commands vs ssh (bench/oneshot_vs_ssh.py)"
TARGET = 0.5


def until_line(argv: list[str], marker: str, cwd: Path, env: dict[str, str]) -> float:
    """Seconds from starting *argv* until it prints a line holding *marker* (then let it finish)."""
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
        process.wait(60)
        raise RuntimeError(f"{argv} never printed {marker!r} (exit {process.returncode})")
    for _ in process.stdout:
        pass
    process.wait(60)
    return elapsed


def to_exit(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    compile_gpubox()
    gpubox = str(Path(sys.executable).with_name("gpubox"))
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-oneshot-") as folder:
        work = Path(folder)
        (work / "host-home").mkdir()
        env = dict(
            os.environ, GPUBOX_HOME=str(work / "gpubox-home"), GPUBOX_LOCAL_HOME=str(work / "host-home")
        )
        os.environ.update(GPUBOX_HOME=env["GPUBOX_HOME"], GPUBOX_LOCAL_HOME=env["GPUBOX_LOCAL_HOME"])
        project = work / "proj"
        project.mkdir()
        (project / "hosts.toml").write_text(f'[hosts.local]\nremote_dir = "{work / "remote"}"\n')
        (project / ".gitignore").write_text("hosts.toml\n")
        (project / "requirements.txt").write_text("# no packages: the env is a plain venv\n")
        up = subprocess.run(
            [gpubox, "up", "local", "--detach", "--no-services"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        try:
            if up.returncode != 0:
                raise RuntimeError(f"gpubox up failed ({up.returncode}): {up.stderr.strip()}")
            rows = measure(gpubox, project, work, env, options.repeat)
            phases = breakdown(project, options.repeat)
        finally:
            subprocess.run(
                [gpubox, "down", "local", "--yes"], cwd=project, env=env, capture_output=True, timeout=120
            )
            from gpubox.remote.providers.local import LocalSshd

            LocalSshd().stop()

    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Median of {options.repeat} each, alternating "
        "command and anchor (A B A B); host = gpubox's private sshd on 127.0.0.1 held by "
        "`gpubox up --detach --no-services` (same machine, so client and host share its cores).",
        f"Command: `.venv/bin/python bench/oneshot_vs_ssh.py --repeat {options.repeat} --write`",
        "",
        "| command (under `gpubox up`) | gpubox | anchor: `ssh -o ControlMaster=no host true` | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
        "Where one command's time goes (in-process, the same calls `gpubox runs` makes; medians):",
        "",
        "| phase | median |",
        "| --- | ---: |",
        *phases,
        "",
    ]
    publish(SECTION, lines, options.write)
    return 0


def measure(gpubox: str, project: Path, work: Path, env: dict[str, str], repeat: int) -> list[str]:
    from gpubox.remote.providers.local import LocalSshd
    from gpubox.remote.sshd import SshdFiles

    server = LocalSshd().running()
    if server is None:
        raise RuntimeError("gpubox up returned but the local sshd is not running")
    files = SshdFiles.in_folder(LocalSshd().folder)
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{server.port} {files.host_public_key}\n")
    ssh_true = [
        "ssh",
        "-p",
        str(server.port),
        "-i",
        str(files.client_key),
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "127.0.0.1",
        "true",
    ]
    # Build the project's env and leave a finished run for `gpubox logs`; warm both paths once.
    subprocess.run(
        [gpubox, "run", "-f", "--", "echo", "warm"], cwd=project, env=env, check=True, capture_output=True
    )
    to_exit(ssh_true, project, env)
    listing = subprocess.run(
        [gpubox, "runs", "--json"], cwd=project, env=env, check=True, capture_output=True, text=True
    )
    runs = json.loads(listing.stdout)["runs"]
    if not runs:
        raise RuntimeError(f"gpubox runs --json listed no run after one finished: {listing.stdout}")
    finished = str(runs[0]["id"])

    commands: list[tuple[str, object]] = [
        ("`gpubox run -f -- echo …` to its first line", None),
        ("`gpubox runs --json`", [gpubox, "runs", "--json"]),
        (f"`gpubox logs RUN` (finished run `{finished}`)", [gpubox, "logs", finished]),
        ("`gpubox status --json`", [gpubox, "status", "--json"]),
        ("floor: `gpubox --help` (Python start + CLI import, no host)", [gpubox, "--help"]),
        ("floor: `python -c pass`", [sys.executable, "-c", "pass"]),
    ]
    samples: dict[str, tuple[list[float], list[float]]] = {label: ([], []) for label, _ in commands}
    for index in range(repeat):
        for label, argv in commands:
            ours, anchor = samples[label]
            if argv is None:
                marker = f"first-line-{index}"
                ours.append(until_line([gpubox, "run", "-f", "--", "echo", marker], marker, project, env))
            else:
                assert isinstance(argv, list)
                ours.append(to_exit(argv, project, env))
            anchor.append(to_exit(ssh_true, project, env))
    rows = []
    for label in samples:
        ours, anchor = samples[label]
        g, s = statistics.median(ours), statistics.median(anchor)
        target = "" if label.startswith("floor") else f"≤ {TARGET}×"
        rows.append(f"| {label} | {g * 1000:.0f} ms | {s * 1000:.0f} ms | {g / s:.2f}× | {target} |")
    return rows


def breakdown(project: Path, repeat: int) -> list[str]:
    """Time the phases of one command, riding `up`'s control socket (what the commands above do) and connecting
    on its own (what they do when nothing holds the host): imports, connect, folder, one round trip."""
    riding_imports = (
        "import gpubox.cli.runs, gpubox.actions.runs, gpubox.remote.session, gpubox.remote.control"
    )
    direct_imports = f"import paramiko, gpubox.remote.agent.client, {riding_imports[len('import ') :]}"
    python_start, riding, direct = [], [], []
    for _ in range(repeat):
        python_start.append(to_exit([sys.executable, "-c", "pass"], project, dict(os.environ)))
        riding.append(to_exit([sys.executable, "-c", riding_imports], project, dict(os.environ)))
        direct.append(to_exit([sys.executable, "-c", direct_imports], project, dict(os.environ)))

    from gpubox.config import load_hosts, load_project
    from gpubox.remote.agent import calls
    from gpubox.remote.control import open_control_agent
    from gpubox.remote.folder import settle_folder
    from gpubox.remote.session import open_connection, start_agent

    config = load_project(project)
    host = load_hosts(project).get("local")
    phases: dict[str, list[float]] = {
        "control socket: connect, handshake, the holder's spare agent handed over (`open_control_agent`)": [],
        "control socket: project folder settled (`settle_folder`)": [],
        "control socket: one agent round trip (`hello`)": [],
        "own connection: SSH connect, handshake and key auth (paramiko: `open_connection`)": [],
        "own connection: agent start: exec `sh -c`, Python start on the host, hello (`start_agent`)": [],
        "own connection: project folder settled (`settle_folder`)": [],
        "own connection: one agent round trip (`hello`)": [],
    }
    for _ in range(repeat):
        marks = [time.perf_counter()]
        held = open_control_agent(host.name, config.id)
        if held is None:
            raise RuntimeError("nothing answers on the holder's control socket")
        marks.append(time.perf_counter())
        settle_folder(held, host, config, claim=False, strict=False)
        marks.append(time.perf_counter())
        calls.hello(held)
        marks.append(time.perf_counter())
        held.close()
        time.sleep(0.3)  # the holder starts its next spare agent
        marks.append(time.perf_counter())
        connection, _spec = open_connection(host, launch=False)
        marks.append(time.perf_counter())
        agent = start_agent(connection, host)
        marks.append(time.perf_counter())
        settle_folder(agent, host, config, claim=False, strict=False)
        marks.append(time.perf_counter())
        calls.hello(agent)
        marks.append(time.perf_counter())
        agent.close()
        connection.close()
        spans = [end - begin for begin, end in itertools.pairwise(marks)]
        del spans[3]  # the pause between the two
        for samples, span in zip(phases.values(), spans, strict=True):
            samples.append(span)
    start = statistics.median(python_start)
    rows = [
        f"| Python start (`python -c pass`) | {start * 1000:.0f} ms |",
        f"| imports a command riding the socket needs (`{riding_imports}`), beyond Python start | "
        f"{(statistics.median(riding) - start) * 1000:.0f} ms |",
        f"| imports a command connecting on its own needs (`{direct_imports}`), beyond Python start | "
        f"{(statistics.median(direct) - start) * 1000:.0f} ms |",
    ]
    rows += [f"| {label} | {statistics.median(samples) * 1000:.1f} ms |" for label, samples in phases.items()]
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
