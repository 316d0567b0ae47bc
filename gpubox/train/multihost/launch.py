"""Starting a multi-host run: `gpubox run --hosts a,b` prepares every host, then starts one worker per host."""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING

from gpubox.errors import UsageError
from gpubox.remote.pool import SessionPool
from gpubox.train.multihost.logs import follow_logs
from gpubox.train.multihost.record import MultiRun, Part, new_run, records_dir, save_run
from gpubox.train.multihost.status import exit_code, remember, stop_parts
from gpubox.train.multihost.watcher import spawn_watcher
from gpubox.train.multihost.wiring import host_port, wire, worker_env

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.session import HostSession

__all__ = ["launch", "run_on_hosts"]


def launch(
    pool: SessionPool,
    hosts: Sequence[HostConfig],
    argv: Sequence[str],
    *,
    name: str | None,
    venvs: Sequence[str | None],
    project_root: str,
    outputs: Sequence[str] | None = None,
) -> MultiRun:
    """Start one worker per host (sync and env already done); return the run's record."""
    from gpubox.train.runs import start_run

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    sessions = [pool.get(host.name) for host in hosts]
    cluster, master_addr, master_port = wire(sessions)
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    run = new_run([h.name for h in hosts], command, name, project_root)
    run.cluster = tuple(cluster)
    run.master = host_port(master_addr, master_port)
    try:
        for index, session in enumerate(sessions):
            env = worker_env(index, cluster, master_addr, master_port, run.id)
            info = start_run(session, argv, name=name, extra_env=env, venv=venvs[index], outputs=outputs)
            run.parts.append(Part(session.host.name, info.id, index, cluster[index]))
            save_run(run)
            remember([(session.host.name, info)])
    except BaseException:
        # Half a cluster waits for the rest forever: take down what started, and forget the run.
        with contextlib.suppress(Exception):
            stop_parts(pool, run.parts, grace=1.0)
        with contextlib.suppress(OSError):
            (records_dir() / f"{run.id}.json").unlink()
        raise
    return run


def run_on_hosts(
    hosts: Sequence[HostConfig],
    argv: Sequence[str],
    *,
    project: ProjectConfig | str,
    project_root: str,
    name: str | None,
    follow: bool,
    accept_new: bool,
    ask: AskToPin | None,
    prepare: Callable[[HostSession, HostConfig], str | None],
    out: Callable[[str], None],
    err: Callable[[str], None],
    stream: IO[bytes],
) -> int:
    """`gpubox run --hosts`: prepare every host (sync, env) in parallel, start the workers, maybe follow."""
    pool = SessionPool(
        hosts, project, deadline=None if follow else 30.0, accept_new=accept_new, ask=ask, folder="claim"
    )
    try:
        venvs: list[str | None] = [None] * len(hosts)
        failures: list[BaseException] = []

        def prepare_one(index: int, host: HostConfig) -> None:
            try:
                venvs[index] = prepare(pool.get(host.name), host)
            except BaseException as exc:
                failures.append(exc)

        # Connect one by one, so that a host key to accept is asked about one at a time.
        for host in hosts:
            pool.get(host.name)
        # Create (or migrate) the state database before the threads below use it: two connections switching
        # a new database to WAL at once can fail with "database is locked".
        from gpubox.state import open_state

        with open_state():
            pass
        threads = [
            threading.Thread(target=prepare_one, args=(i, h), daemon=True) for i, h in enumerate(hosts)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        outputs = project.sync.outputs if not isinstance(project, str) else None
        run = launch(pool, hosts, argv, name=name, venvs=venvs, project_root=project_root, outputs=outputs)
        try:
            spawn_watcher(run)
        except OSError as exc:
            err(
                f"gpubox: could not leave a watcher for {run.id} ({exc}): if a worker fails, "
                f"`gpubox logs {run.id} -f` or `gpubox stop {run.id}` stops the others"
            )
        out(f"started {run.id} on {', '.join(run.hosts)}: {run.command}")
        for part in run.parts:
            out(f"  worker {part.index}: {part.host} {part.run_id} ({part.address})")
        if not follow:
            out(f"  follow it: gpubox logs {run.id} -f    stop it: gpubox stop {run.id}")
            return 0
        status = follow_logs(run, pool, stream, follow=True, say=err)
        return exit_code(status, err)
    finally:
        pool.close()
