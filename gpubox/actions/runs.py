"""`gpubox run` up to the start (sync as the flush barrier, the env, the detached start) and `gpubox stop`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gpubox.actions import Say, quiet
from gpubox.actions.sync import held_lines, host_changed_lines, make_syncer
from gpubox.errors import UsageError
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.env import ensure_env, env_spec
from gpubox.train.runs import check_run_id, start_run, stop_run

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.report import SyncReport
    from gpubox.train.runs import RunInfo

__all__ = ["launch_run", "prepare_run", "project_env", "remember_runs", "stop_one_run", "tell_run_sync"]


def remember_runs(host: str, runs: Sequence[RunInfo]) -> None:
    """Cache what the host said about these runs, so `gpubox cost` can price them without connecting."""

    with open_state() as state:
        state.cache_runs(host, runs)


def project_env(session: HostSession, project: ProjectConfig, *, show: Any = None) -> tuple[str | None, bool]:
    """Build (or reuse) the project's env on the host: (its path or None when the project needs none, whether
    it was already built)."""

    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    if spec is None:
        return None, True
    return ensure_env(session, spec, show=show)


def prepare_run(
    session: HostSession,
    project: ProjectConfig,
    host: HostConfig,
    argv: Sequence[str],
    *,
    name: str | None = None,
    sync: bool = True,
    say: Say = quiet,
) -> RunInfo:
    """`gpubox run` up to the start: sync (the run starts only once the host has acknowledged the project as it
    is now), build or reuse the env, start *argv* detached, and cache it."""

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    if sync:
        # With the host's listing: a file edited there (through Jupyter, say) is what the run will use, and the
        # user hears of it before it runs.
        report = make_syncer(session, project, host).full(allow_mass_delete=False, verify=True)
        tell_run_sync(report, host.name, say)
    spec = env_spec(project, str(session.agent.hello.get("python", "")))
    venv, cached = project_env(session, project)
    if spec is not None and not cached:
        say(f"  ✓ env    {spec.path} ({spec.requirements or 'setup commands'}, built)")
    run = start_run(session, argv, name=name, venv=venv)
    remember_runs(host.name, [run])
    return run


def tell_run_sync(report: SyncReport, host: str, say: Say) -> None:
    """What a run's sync changed, and what the run will see differently from the local folder."""
    if report.sent or report.deleted or report.moved:
        say(f"synced {host}: {report.summary()}")
    for line in host_changed_lines(report.host_changed, host, running=True):
        say(f"  {line}")
    for conflict in report.conflicts:
        say(f"  ! conflict: the host's copy was kept as {conflict}")
    for line in held_lines(len(report.held_deletions), report.held_reason, host):
        say(f"  {line}")


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
