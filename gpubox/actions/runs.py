"""`gpubox run` up to the start (sync as the flush barrier, the env, the detached start) and `gpubox stop`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gpubox.actions import Say, quiet
from gpubox.errors import UsageError
from gpubox.remote.session import connect_host
from gpubox.state import open_state
from gpubox.train.runs import RUN_ID, check_run_ref, list_runs, start_run, stop_run

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.report import SyncReport
    from gpubox.train.runs import RunInfo

__all__ = [
    "launch_run",
    "pick_run",
    "prepare_run",
    "project_folders",
    "project_runs",
    "remember_runs",
    "run_subfolder",
    "stop_one_run",
    "synced_by_holder",
    "tell_run_sync",
]


def remember_runs(host: str, runs: Sequence[RunInfo]) -> None:
    """Cache what the host said about these runs, so `gpubox cost` can price them without connecting."""

    with open_state() as state:
        state.cache_runs(host, runs)


def project_folders(session: HostSession) -> list[str]:
    """The project's folder on the host as absolute paths (its real path, and ``~`` expanded as the agent
    records a run's cwd), to recognise the runs started there before runs carried a project id."""
    found = []
    if session.folder is not None:
        found.append(session.folder.path)
    home = str(session.agent.hello.get("home") or "")
    folder = session.remote_dir
    if folder.startswith("~/") and home:
        found.append(home.rstrip("/") + folder[1:])
    elif folder.startswith("/"):
        found.append(folder.rstrip("/") or "/")
    return found


def project_runs(session: HostSession, project: ProjectConfig, runs: Sequence[RunInfo]) -> list[RunInfo]:
    """Of *runs* (a host's), those of *project*; a run from before project ids counts as the project's when it
    started in the project's folder, and is remembered as such."""
    folders = project_folders(session)
    mine = []
    for run in runs:
        if run.belongs_to(project.id, folders):
            if run.project is None:
                run = dataclasses.replace(run, project=project.id, project_name=project.name)
            mine.append(run)
    return mine


def pick_run(
    runs: Sequence[RunInfo], wanted: str, *, project: ProjectConfig, mine: Sequence[RunInfo]
) -> RunInfo:
    """The run *wanted* names: a run id (``r-7``), or a ``--name`` label, this project's latest run with it first
    (then any project's on the host). Unknown is one line saying what there is."""
    if RUN_ID.match(wanted):
        found = next((r for r in runs if r.id == wanted), None)
        if found is None:
            raise UsageError(
                f"no run {wanted} on {runs[0].host if runs else 'the host'}; `gpubox runs` lists them"
            )
        return found
    for group in (mine, runs):
        named = [r for r in group if r.name == wanted]
        if named:
            return max(named, key=lambda r: (r.started_at or 0.0, int(r.id[2:])))
    where = runs[0].host if runs else "the host"
    raise UsageError(
        f"no run named {wanted!r} on {where}: give a run id (like r-7) or a --name label; `gpubox runs` lists them"
    )


def run_subfolder(project: ProjectConfig) -> str:
    """Where a run starts, relative to the project root: ``[run] cwd`` when set, else the subfolder the command
    was called from (the project root when called from the root or outside it)."""
    if project.run.cwd is not None:
        return project.run.cwd
    return project.subfolder


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
    remember: bool = True,
) -> RunInfo:
    """`gpubox run` up to the start: sync (the run starts only once the host has acknowledged the project as it
    is now), build or reuse the env (saying so when it builds; *env_activity* hears what the build is doing),
    start *argv* detached, and cache it (without *remember*, the caller does, once it has shown the run's first
    output: writing the state database is no reason for the first line to wait)."""

    # The env build (and the sync engine, when no `gpubox up` syncs) load here, not with the module: `runs`,
    # `logs` and `stop` need neither.
    from gpubox.actions.env import build_env

    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    if sync:
        # With the host's listing: a file edited there (through Jupyter, say) is what the run will use, and the
        # user hears of it before it runs. Under `gpubox up`, its live sync is the barrier (no scan here).
        report = synced_by_holder(session, project, verify=True)
        if report is None:
            from gpubox.actions.sync import make_syncer

            report = make_syncer(session, project, host).full(allow_mass_delete=False, verify=True)
        tell_run_sync(report, host.name, say)
    venv = build_env(session, project, say=say, activity=env_activity, quiet_when_cached=True)
    run = start_run(
        session, argv, name=name, venv=venv, subfolder=run_subfolder(project), outputs=project.sync.outputs
    )
    if remember:
        remember_runs(host.name, [run])
    return run


def synced_by_holder(session: HostSession, project: ProjectConfig, *, verify: bool) -> SyncReport | None:
    """When the `gpubox up` holding the session's host syncs this project live: have it flush (everything saved
    before now is then on the host) and return what it did; None when nothing of the kind holds the host."""
    if not session.rides_holder:
        return None
    from gpubox.actions.sync import flush_held

    return flush_held(session.host.name, project, verify=verify)


def tell_run_sync(report: SyncReport, host: str, say: Say) -> None:
    """What a run's sync changed, and what the run will see differently from the local folder."""
    from gpubox.actions.sync import held_lines, host_changed_lines

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

    session = connect_host(host, project, probe=False, launch=False, folder="claim")
    try:
        return prepare_run(session, project, host, argv, name=name, sync=sync, say=say)
    finally:
        session.close()


def stop_one_run(host: HostConfig, project: ProjectConfig, wanted: str, *, grace: float = 10.0) -> RunInfo:
    """`gpubox stop RUN`: SIGTERM to its process group, SIGKILL after *grace* seconds. *wanted* is a run id or
    a ``--name`` label."""

    check_run_ref(wanted)
    session = connect_host(host, project, probe=False, launch=False)
    try:
        run_id = wanted
        if not RUN_ID.match(wanted):
            runs = list_runs(session)
            run_id = pick_run(runs, wanted, project=project, mine=project_runs(session, project, runs)).id
        run = stop_run(session, run_id, grace_seconds=grace)
    finally:
        session.close()
    remember_runs(host.name, [run])
    return run
