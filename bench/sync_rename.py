"""A folder rename under live sync: how long until the host matches, against rsync in the same run.

The project is the one the everyday-loop issue measured: 41 files, 25 of them in one folder (source-like sizes).
Under `gpubox sync --watch` the 25-file folder is renamed back and forth; each time is measured from the
`rename(2)` until the host holds the folder under its new name with every file and the old name is gone.
The anchor, in the same run and on the same sshd, is what a user without live sync would run after the same
rename: `rsync -a --delete -e ssh` of the project into its own copy.

Also checked on every rename: the host's files keep their inodes (renamed there, not sent again) and nothing
lands in the host's trash.

    .venv/bin/python bench/sync_rename.py [--renames 20] [--write]
"""

from __future__ import annotations

import argparse
import os
import pwd
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _results import machine, publish
from sync_vs_rsync import Bench

SECTION = "## Folder rename under live sync (bench/sync_rename.py)"
FOLDER_FILES = 25
OTHER_FILES = 16


def make_project(root: Path) -> None:
    rng = random.Random(3)
    for index in range(FOLDER_FILES):
        path = root / "models" / f"part{index // 10}" / f"layer_{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(int(rng.lognormvariate(7.3, 0.9))))
    for index in range(OTHER_FILES):
        path = root / "src" / f"module_{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(int(rng.lognormvariate(7.3, 0.9))))


def rsync_delete(bench: Bench, source: Path, target: Path) -> float:
    """The anchor: mirror the project with rsync, deleting what is gone, as after a rename without live sync."""
    started = time.perf_counter()
    subprocess.run(
        ["rsync", "-a", "--delete", "-e", bench.ssh, f"{source}/", f"127.0.0.1:{target}/"],
        env=bench.env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def inodes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def host_has(target: Path, new: str, old: str, names: set[str]) -> bool:
    try:
        return not (target / old).exists() and set(inodes(target / new)) == names
    except FileNotFoundError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renames", type=int, default=20)
    parser.add_argument("--write", action="store_true")
    options = parser.parse_args()
    if not shutil.which("rsync"):
        print("rsync is not installed (scripts/setup.sh installs it)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gpubox-bench-") as folder:
        bench = Bench(Path(folder))
        try:
            source = bench.work / "project"
            source.mkdir()
            make_project(source)
            target = bench.work / "host-gpubox"
            rsync_target = bench.work / "host-rsync"
            bench.project(source, target)
            bench.gpubox_sync(source)
            bench.rsync(source, rsync_target)
            names = set(inodes(source / "models"))
            watcher = subprocess.Popen(
                [*bench.gpubox, "sync", "--watch"],
                cwd=source,
                env=bench.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            seconds: list[float] = []
            anchor: list[float] = []
            renamed_in_place = 0
            try:
                assert watcher.stdout is not None
                while "watching" not in watcher.stdout.readline():
                    pass
                old, new = "models", "networks"
                for _ in range(options.renames):
                    before = inodes(target / old)
                    started = time.perf_counter()
                    (source / old).rename(source / new)
                    deadline = time.monotonic() + 30
                    while not host_has(target, new, old, names):
                        if time.monotonic() > deadline:
                            raise SystemExit(f"the host never matched after renaming {old} to {new}")
                        time.sleep(0.0005)
                    seconds.append(time.perf_counter() - started)
                    renamed_in_place += inodes(target / new) == before
                    time.sleep(0.3)  # let the watcher settle before the anchor runs beside it
                    anchor.append(rsync_delete(bench, source, rsync_target))
                    old, new = new, old
            finally:
                watcher.terminate()
                watcher.wait(10)
            # The host is this machine as this user: its trash is in the login home, in a folder named after
            # the host folder.
            login_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
            slugs = list((login_home / ".gpubox" / "trash").glob(f"{target.name}-*"))
            trashed = sum(1 for slug in slugs for p in slug.rglob("*") if p.is_file())
            for slug in slugs:
                shutil.rmtree(slug, ignore_errors=True)
        finally:
            from gpubox.remote.providers.local import LocalSshd

            LocalSshd().stop()
    p50 = statistics.median(seconds) * 1000
    slowest = max(seconds) * 1000
    rsync_p50 = statistics.median(anchor) * 1000
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Host = gpubox's private sshd on 127.0.0.1 "
        "(same machine).",
        f"Command: `.venv/bin/python bench/sync_rename.py --renames {options.renames} --write`",
        "",
        f"Project: {FOLDER_FILES + OTHER_FILES} files; the {FOLDER_FILES}-file folder renamed {len(seconds)} "
        "times under `gpubox sync --watch`, timed from rename(2) until the host has it under the new name.",
        "",
        "| measure | gpubox sync --watch | anchor: `rsync -a --delete -e ssh` after the rename | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| rename to host matching, p50 of {len(seconds)} | {p50:.1f} ms | {rsync_p50:.1f} ms | "
        f"{p50 / rsync_p50:.2f}× |",
        f"| slowest | {slowest:.1f} ms | {max(anchor) * 1000:.1f} ms | |",
        "",
        f"Renamed on the host, not sent again: {renamed_in_place} of {len(seconds)} renames kept every file's "
        f"inode; files in the host's trash afterwards: {trashed}.",
        "",
    ]
    publish(SECTION, lines, options.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
