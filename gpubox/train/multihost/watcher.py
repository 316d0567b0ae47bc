"""The watcher a multi-host run leaves behind, so that it fails fast with nobody following it.

When a worker fails, the others would wait for it in their collectives forever, so gpubox stops them. Whoever
is watching does it: ``run -f`` and ``logs m-N -f`` while they stream, and this small detached process that
``run --hosts`` leaves behind (``python -m gpubox.train.multihost watch m-N``): it polls the parts every second
and exits once they have all ended, or after ten minutes in which no host of the run answered. A run whose
watcher could not do its job (the laptop was off) is finished by the next ``logs m-N -f`` or ``stop m-N``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from gpubox.errors import GpuboxError
from gpubox.remote.pool import SessionPool
from gpubox.train.multihost.record import MultiRun, load_run, records_dir, write_atomically
from gpubox.train.multihost.status import cached_infos, enforce, fetch_status, has_finished, remember

__all__ = ["WATCH_GIVE_UP", "WATCH_POLL", "main", "spawn_watcher", "watch"]

WATCH_POLL = 1.0
WATCH_GIVE_UP = 600.0
"""The watcher leaves after this many seconds in which no host of the run answered."""


def _watcher_file(run_id: str) -> Path:
    return records_dir() / f"{run_id}.watcher"


def spawn_watcher(run: MultiRun) -> int | None:
    """Leave a detached process that stops the other workers when one fails (see the module docstring)."""
    if os.environ.get("GPUBOX_MULTIHOST_WATCHER") == "0":  # tests of the foreground follower
        return None
    log = open(records_dir() / f"{run.id}.watch.log", "ab")  # noqa: SIM115 (handed to the child)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "gpubox.train.multihost", "watch", run.id],
            cwd=run.project or None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        log.close()
    write_atomically(_watcher_file(run.id), str(child.pid))
    return child.pid


def watch(run_id: str) -> int:
    """The watcher's loop: poll every part; when one failed, stop the rest; leave when all have ended."""
    from gpubox.config import load_hosts

    run = load_run(run_id)
    hosts = load_hosts(Path(run.project) if run.project else None)
    pool = SessionPool([hosts.get(name) for name in run.hosts], "", deadline=5.0)
    heard = time.monotonic()
    try:
        while True:
            known = cached_infos()
            if all(has_finished(known.get((p.host, p.run_id))) for p in run.parts):
                return 0
            status = fetch_status(run, pool, known=known)
            if any(info is not None for info in status.parts):
                heard = time.monotonic()
            remember(
                (p.host, i)
                for p, i in zip(run.parts, status.parts, strict=True)
                if i is not None and i.finished
            )
            if status.finished:
                return 0
            if enforce(status, pool, say=lambda line: print(time.strftime("%F %T"), line, flush=True)):
                continue
            if time.monotonic() - heard > WATCH_GIVE_UP:
                print(
                    time.strftime("%F %T"), f"no host of {run.id} answered for {WATCH_GIVE_UP:g} s: leaving"
                )
                return 1
            time.sleep(WATCH_POLL)
    finally:
        pool.close()
        with contextlib.suppress(OSError):
            _watcher_file(run_id).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) != 2 or arguments[0] != "watch":
        print("usage: python -m gpubox.train.multihost watch m-N", file=sys.stderr)
        return 2
    try:
        return watch(arguments[1])
    except GpuboxError as exc:
        print(time.strftime("%F %T"), f"gpubox: {exc}", flush=True)
        return exc.exit_code
