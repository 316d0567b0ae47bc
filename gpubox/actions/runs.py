"""`gpubox run` up to the start (sync as the flush barrier, the env, the detached start) and `gpubox stop`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gpubox.actions import Say, quiet
from gpubox.actions.sync import make_syncer
from gpubox.actions.up import build_env
from gpubox.errors import UsageError
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.runs import check_run_id, start_run, stop_run

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.train.runs import RunInfo

__all__ = ["launch_run", "prepare_run", "remember_runs", "stop_one_run"]


def remember_runs(host: str, runs: Sequence[RunInfo]) -> None:
    """Cache what the host said about these runs, so `gpubox cost` can price them without connecting."""

    with open_state() as state:
        state.cache_runs(host, runs)


def prepare_run(
    session: HostSession,
    project: ProjectConfig,
    host: HostConfig,
    argv: Sequence[str],
    *,
    name: str | None = None,
    sync: bool = True,
    say: Say = quiet,
    env_activity: Callable[[str], None] | None = None,
) -> RunInfo:
    """`gpubox run` up to the start: sync (the run starts only once the host has acknowledged the project as it
    is now), build or reuse the env (saying so when it builds; *env_activity* hears what the build is doing),
    start *argv* detached, and cache it."""

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    if sync:
        report = make_syncer(session, project, host).full(allow_mass_delete=False)
        if report.sent or report.deleted:
            say(f"synced {host.name}: {report.summary()}")
    venv = build_env(session, project, say=say, activity=env_activity, quiet_when_cached=True)
    run = start_run(session, argv, name=name, venv=venv, outputs=project.sync.outputs)
    remember_runs(host.name, [run])
    return run


def launch_run(
    host: HostConfig,
    project: ProjectConfig,
    argv: Sequence[str],
    *,
    name: str | None = None,
    sync: bool = True,
    say: Say = quiet,
) -> RunInfo:
    """:func:`prepare_run` on a connection of its own."""

    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        return prepare_run(session, project, host, argv, name=name, sync=sync, say=say)
    finally:
        session.close()


def stop_one_run(host: HostConfig, project: ProjectConfig, run_id: str, *, grace: float = 10.0) -> RunInfo:
    """`gpubox stop RUN`: SIGTERM to its process group, SIGKILL after *grace* seconds."""

    check_run_id(run_id)
    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        run = stop_run(session, run_id, grace_seconds=grace)
    finally:
        session.close()
    remember_runs(host.name, [run])
    return run
