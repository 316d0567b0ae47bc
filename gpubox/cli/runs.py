"""`gpubox run`, `runs`, `logs` and `stop`, for runs on one host and multi-host runs (``m-`` ids)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.actions.runs import (
    pick_run,
    prepare_run,
    project_runs,
    remember_runs,
    run_subfolder,
    stop_one_run,
    tell_run_sync,
)
from gpubox.cli.output import (
    LiveProgress,
    ask_to_pin,
    check_first_sync,
    err,
    is_terminal,
    load_hosts,
    load_project,
    out,
    print_json,
    table,
    tell_moved_here,
    terminal_width,
)
from gpubox.errors import GpuboxError, HostUnreachable, UsageError
from gpubox.fmt import format_duration
from gpubox.remote.agent import calls
from gpubox.remote.pool import SessionPool
from gpubox.remote.session import connect_host
from gpubox.train import multihost
from gpubox.train.runs import RUN_ID, check_run_ref, follow_log, list_runs

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.cost import RunMoney
    from gpubox.remote.session import HostSession
    from gpubox.train.runs import RunInfo

__all__ = ["cmd_logs", "cmd_run", "cmd_runs", "cmd_stop"]


def _run_host(args: argparse.Namespace, project: ProjectConfig) -> HostConfig:
    return load_hosts(project).pick(getattr(args, "host", None))


def _run_on_hosts(args: argparse.Namespace) -> int:
    """`gpubox run --hosts a,b`: one worker per host with TF_CONFIG set (see gpubox/train/multihost/)."""

    project = load_project()
    hosts = multihost.pick_hosts(args.hosts, load_hosts(project), single=args.host)
    argv = list(args.command_args) or ([project.run.command] if project.run.command else [])
    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")

    from gpubox.actions.env import build_env
    from gpubox.actions.sync import make_syncer
    from gpubox.cli.sync import full_sync

    def prepare(session: HostSession, host: HostConfig) -> str | None:
        if not args.no_sync:
            syncer = make_syncer(session, project, host)
            report = full_sync(syncer, allow_mass_delete=False, quiet=True, verify=True)
            tell_run_sync(report, host.name, out)
        return build_env(session, project, say=out, quiet_when_cached=True)

    return multihost.run_on_hosts(
        hosts,
        argv,
        project=project,
        project_root=str(project.root),
        name=args.name,
        follow=args.follow,
        accept_new=args.accept_new,
        ask=ask_to_pin(),
        prepare=prepare,
        out=out,
        err=err,
        stream=sys.stdout.buffer,
    )


def _multi_logs(args: argparse.Namespace) -> int:

    project = load_project()
    run = multihost.load_run(args.run)
    hosts = load_hosts(project)
    links = SessionPool(
        [hosts.get(name) for name in run.hosts], project, deadline=None if args.follow else 30.0
    )
    try:
        offsets = None
        if args.tail is not None:
            offsets = multihost.tail_offsets(run, links, max(0, args.tail), sys.stdout.buffer)
            if not args.follow:
                return 0
        status = multihost.follow_logs(
            run, links, sys.stdout.buffer, follow=args.follow, say=err, offsets=offsets
        )
    finally:
        links.close()
    return multihost.exit_code(status, err) if args.follow else 0


def _multi_stop(args: argparse.Namespace) -> int:

    project = load_project()
    run = multihost.load_run(args.run)
    hosts = load_hosts(project)
    links = SessionPool([hosts.get(name) for name in run.hosts], project)
    try:
        status = multihost.stop_multi(run, links, grace=args.grace)
    finally:
        links.close()
    code = "" if status.exit_code is None else f" (exit {status.exit_code})"
    out(f"{run.id} on {', '.join(run.hosts)}: {status.state}{code}")
    for part, info in zip(run.parts, status.parts, strict=True):
        state = "unknown" if info is None else info.state
        code = "" if info is None or info.exit_code is None else f" (exit {info.exit_code})"
        out(f"  worker {part.index}: {part.host} {part.run_id} {state}{code}")
    return 0


def _multi_listing(
    host: HostConfig, runs: list[RunInfo], project: ProjectConfig, everything: bool, all_projects: bool
) -> tuple[list[RunInfo], list[Any]]:
    """The host's own runs without the parts of multi-host runs, and the states of those multi-host runs (this
    project's, or every project's with *all_projects*)."""

    single, records = multihost.split_listing(host.name, runs)
    if not all_projects:
        records = [r for r in records if not r.project or r.project == str(project.root)]
    if not records:
        return single, []
    found = multihost.statuses(records, host.name, runs, load_hosts(project), project)
    if not everything:
        found = [s for s in found if not s.finished] + [s for s in found if s.finished][-10:]
        found.sort(key=lambda s: int(s.run.id[2:]))
    return single, found


def cmd_run(args: argparse.Namespace) -> int:

    if args.hosts is not None:
        return _run_on_hosts(args)
    project = load_project()
    host = _run_host(args, project)
    argv = list(args.command_args) or ([project.run.command] if project.run.command else [])
    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    if not args.no_sync:
        check_first_sync(project, host, yes=args.yes)
    session = connect_host(
        host, project, accept_new=args.accept_new, ask=ask_to_pin(), probe=False, folder="claim"
    )
    tell_moved_here(session)
    shown = LiveProgress()
    try:
        # The flush barrier: the run starts only after the host acknowledged the project as it is now.
        try:
            run = prepare_run(
                session,
                project,
                host,
                argv,
                name=args.name,
                sync=not args.no_sync,
                say=shown.say,
                env_activity=shown.activity,
                remember=not args.follow,
            )
        finally:
            shown.pause()
        where = run_subfolder(project)
        out(f"started {run.label()} on {host.name}: {run.command}" + (f"  (in {where}/)" if where else ""))
        if not args.follow:
            out(
                f"  follow it: gpubox logs {run.name or run.id} -f    stop it: gpubox stop {run.name or run.id}"
            )
            return 0
        # Follow on the same connection: the first line shows up without a second SSH handshake. The run is
        # cached once its first output is shown.
        return _stream_log(host, project, run.id, follow=True, offset=0, session=session, started=run)
    finally:
        session.close()


def _stream_log(
    host: HostConfig,
    project: ProjectConfig,
    run_id: str,
    *,
    follow: bool,
    offset: int,
    session: HostSession | None = None,
    started: RunInfo | None = None,
) -> int:
    with _following(run_id, host.name, follow):
        return _copy_log(
            host, project, run_id, follow=follow, offset=offset, session=session, started=started
        )


def _copy_log(
    host: HostConfig,
    project: ProjectConfig,
    run_id: str,
    *,
    follow: bool,
    offset: int,
    session: HostSession | None = None,
    started: RunInfo | None = None,
) -> int:
    """Copy the run's log to stdout; with *follow*, until the run ends, across dropped links. A run just
    *started* (not cached yet) is cached once its first output is shown, or when the copy ends without any.

    From offset 0 the log goes through a local copy (``state/runs/HOST/RUN.log``): what it holds is printed
    first and fetching resumes at its size, so a gpubox killed mid-stream and started again neither drops nor
    repeats a byte.
    """

    pool = SessionPool(
        [host],
        project,
        sessions={host.name: session} if session is not None else None,
        deadline=None if follow else 30.0,
    )

    def session_for() -> HostSession:
        return pool.get(host.name)

    def gap(exc: Exception) -> None:
        err(f"gpubox: link to {host.name} lost ({exc}); reconnecting, the log resumes where it stopped")

    stdout = sys.stdout.buffer
    cache = None
    cache_path = None
    if offset == 0:
        cache_path = paths.state_dir() / "runs" / host.name / f"{run_id}.log"
        if cache_path.exists():
            cache = open(cache_path, "a+b")  # noqa: SIM115 (closed in finally)
            cache.seek(0)
            while chunk := cache.read(1 << 20):
                stdout.write(chunk)
            offset = cache.tell()
            stdout.flush()
    info = None
    try:
        for chunk, latest in follow_log(session_for, run_id, offset=offset, follow=follow, on_gap=gap):
            info = latest
            if chunk:
                if cache is None and cache_path is not None:
                    # Made with the first byte: asking for a run that does not exist leaves nothing behind.
                    paths.ensure_private_dir(cache_path.parent)
                    cache = open(cache_path, "a+b")  # noqa: SIM115 (closed in finally)
                if cache is not None:
                    cache.write(chunk)
                    cache.flush()
                stdout.write(chunk)
                stdout.flush()
                if started is not None:
                    remember_runs(host.name, [latest])
                    started = None
    finally:
        if cache is not None:
            cache.close()
        pool.close()
        if started is not None:
            remember_runs(host.name, [info or started])
    if info is not None:
        remember_runs(host.name, [info])
    if not follow or info is None:
        return 0
    if info.state == "lost":
        err(f"gpubox: run {run_id} was lost on {host.name} (its process vanished without an exit code)")
        return 1
    return info.exit_code if info.exit_code is not None else 1


@contextlib.contextmanager
def _following(run_id: str, host: str, follow: bool) -> Iterator[None]:
    """Ctrl-C while following a run stops only the following: say that the run goes on, and how to stop it."""
    try:
        yield
    except KeyboardInterrupt:
        if not follow:
            raise
        raise KeyboardInterrupt(
            f"{run_id} keeps running on {host}; `gpubox stop {run_id}` stops it, "
            f"`gpubox logs {run_id} -f` follows it again"
        ) from None


def cmd_logs(args: argparse.Namespace) -> int:

    if args.run and args.run.startswith("m-"):
        return _multi_logs(args)
    project = load_project()
    host = _run_host(args, project)
    run_id = _which_run(host, project, args.run, purpose="logs")
    if args.tail is not None:
        return _tail_then_follow(host, project, run_id, max(0, args.tail), args.follow)
    return _stream_log(host, project, run_id, follow=args.follow, offset=0)


def _which_run(host: HostConfig, project: ProjectConfig, wanted: str | None, *, purpose: str) -> str:
    """The run a command names: a run id as it is; a --name label, or nothing (this project's latest run, for
    `logs`), looked up on the host."""
    if wanted is not None and RUN_ID.match(check_run_ref(wanted)):
        return wanted
    session = connect_host(host, project, probe=False, launch=False)
    try:
        runs = list_runs(session)
        mine = project_runs(session, project, runs)
    finally:
        session.close()
    if wanted is not None:
        return pick_run(runs, wanted, project=project, mine=mine).id
    if not mine:
        raise UsageError(
            f"this project has no runs on {host.name} yet: `gpubox run -- python train.py` starts one"
            + (" (`gpubox runs --all-projects` lists the others there)" if runs else "")
        )
    latest = max(mine, key=lambda r: int(r.id[2:]))
    err(f"gpubox: {purpose} of {latest.label()}, this project's latest run on {host.name} ({latest.state})")
    return latest.id


def _tail_then_follow(host: HostConfig, project: ProjectConfig, run_id: str, lines: int, follow: bool) -> int:
    """Print the last *lines* lines (looked for in the last MiB of the log), then follow if asked."""

    window = 1 << 20
    session = connect_host(host, project, probe=False, launch=False)
    try:
        head, _ = calls.run_log(session.agent, run_id=run_id, offset=0, max_bytes=1)
        size = int(head.get("size", 0))
        start = max(0, size - window)
        _, data = calls.run_log(session.agent, run_id=run_id, offset=start, max_bytes=window)
    finally:
        session.close()
    kept = b"".join(data.splitlines(keepends=True)[-lines:]) if lines else b""
    sys.stdout.buffer.write(kept)
    sys.stdout.buffer.flush()
    if not follow:
        return 0
    return _stream_log(host, project, run_id, follow=True, offset=start + len(data))


def cmd_runs(args: argparse.Namespace) -> int:

    project = load_project()
    host = _run_host(args, project)
    unreachable = None
    try:
        session = connect_host(host, project, probe=False, launch=False)
    except HostUnreachable as exc:
        # A host that is down (after `gpubox down`, say) still has the runs gpubox last heard of. A host that
        # cannot be trusted (a changed key) or refuses the login is an error: nothing is shown as if from it.
        unreachable = str(exc)
        listed = _cached_runs(host, project, args.all_projects)
    else:
        try:
            every = list_runs(session)
            mine = project_runs(session, project, every)
        finally:
            session.close()
        ours = {r.id: r for r in mine}
        every = [ours.get(r.id, r) for r in every]  # runs from before project ids, told by their folder
        remember_runs(host.name, every)
        listed = every if args.all_projects else mine
    multi: list[Any] = []
    if unreachable is None:
        listed, multi = _multi_listing(host, listed, project, args.all, args.all_projects)
    if not args.all:
        active = [r for r in listed if not r.finished]
        listed = active + [r for r in listed if r.finished][-10:]
        listed.sort(key=lambda r: int(r.id[2:]))
    now = time.time()
    # Only what the host says now is priced (runs as last seen may have ended meanwhile).
    money, warnings = _money(host, project, listed, now) if unreachable is None else ({}, [])
    if args.json:
        document: dict[str, Any] = {
            "project": {"id": project.id, "name": project.name, "root": str(project.root)},
            "runs": [
                {
                    "id": r.id,
                    "host": r.host,
                    "name": r.name,
                    "project": r.project,
                    "project_name": r.project_name,
                    "this_project": r.project == project.id,
                    "command": r.command,
                    "state": r.state,
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "duration_seconds": r.duration(now),
                    "exit_code": r.exit_code,
                    "log_bytes": r.log_bytes,
                    "progress": r.progress,
                    "money": money[r.id].document() if r.id in money else None,
                    "budget_warnings": [text for run_id, text in warnings if run_id == r.id],
                }
                for r in listed
            ]
            + [m.to_json(now) for m in multi],
        }
        if unreachable is not None:
            document["unreachable"] = unreachable
        print_json(document)
        return 0
    if unreachable is not None:
        err(f"gpubox: {host.name} cannot be reached ({unreachable}); its runs as gpubox last saw them:")
    if not listed and not multi:
        if unreachable is None:
            whose = "" if args.all_projects else " of this project"
            out(f"no runs{whose} on {host.name} yet: `gpubox run -- python train.py` starts one")
        return 0
    if listed:  # a host whose only runs are workers of multi-host runs has just the second table
        _runs_table(
            listed,
            now,
            project,
            all_projects=args.all_projects,
            last_seen=unreachable is not None,
            # A free host's runs cost nothing: no columns of $0.00 taking the progress's room (--json has them).
            money={run: m for run, m in money.items() if m.price_per_hour != 0},
        )
        for _run_id, text in warnings:
            out(f"! {text}")
    if multi:
        out()
        for line in multihost.table_lines(multi, now):
            out(line)
    return 0


def _money(
    host: HostConfig, project: ProjectConfig, runs: list[RunInfo], now: float
) -> tuple[dict[str, RunMoney], list[tuple[str, str]]]:
    """Each active run's cost so far and to finish at the host's $/h, and the budgets finishing would pass."""
    if all(r.finished for r in runs):
        return {}, []  # nothing to price: the price and the money modules need not load
    from gpubox.actions.runmoney import active_money
    from gpubox.remote.providers import host_price
    from gpubox.state import open_state

    with open_state() as state:
        record = state.host(host.name)
    price = host_price(host, record.probe if record else None)
    found, warnings = active_money(runs, host, load_hosts(project), price, now)
    return {m.run_id: m for m in found}, warnings


def _runs_table(
    runs: list[RunInfo],
    now: float,
    project: ProjectConfig,
    *,
    all_projects: bool,
    last_seen: bool,
    money: dict[str, RunMoney] | None = None,
) -> None:
    """The runs as a table that fits the terminal: the progress shows the metrics that matter most and the
    command is shortened, to what the width leaves them (``--json`` has everything). *last_seen*: the host
    could not be asked, so an active run's state is as gpubox last saw it."""
    fixed = []
    for r in runs:
        row = [
            r.id,
            r.name or "",
            r.state if not last_seen or r.finished else f"{r.state} (last seen)",
            _when(r.started_at, now),
            format_duration(r.duration(now) or 0),
            "" if r.exit_code is None else str(r.exit_code),
        ]
        if money:
            cost = money.get(r.id)
            row += [cost.spent_text(), cost.to_finish_text()] if cost else ["", ""]
        if all_projects:
            row.insert(1, _project_mark(r, project))
        fixed.append(row)
    headers = ["id", "name", "state", "started", "duration", "exit"]
    if money:
        headers += ["cost", "to finish"]
    if all_projects:
        headers.insert(1, "project")
    width = terminal_width()
    room = None
    if width is not None:
        used = sum(max(len(h), *(len(row[i]) for row in fixed)) + 2 for i, h in enumerate(headers))
        room = max(20, width - used - 2)
    commands = [r.command for r in runs]
    natural = min(max(len(c) for c in commands), 60)
    # The progress is what the table is looked at for: the command gets a quarter of what is left at first,
    # then whatever the progress does not use.
    command_room = natural if room is None else min(natural, max(12, room // 4))
    progress = [r.progress_text(None if room is None else max(10, room - command_room - 2)) for r in runs]
    if room is not None:
        command_room = max(12, room - max(len("progress"), *(len(p) for p in progress)) - 2)
    table(
        [*headers, "progress", "command"],
        [
            [*row, text, command if len(command) <= command_room else command[: command_room - 1] + "…"]
            for row, text, command in zip(fixed, progress, commands, strict=True)
        ],
    )


def _when(started_at: float | None, now: float) -> str:
    """When a run started: the time alone today, else the date too."""
    if not started_at:
        return ""
    same_day = time.localtime(started_at)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M" if same_day else "%m-%d %H:%M", time.localtime(started_at))


def _project_mark(run: RunInfo, project: ProjectConfig) -> str:
    """The PROJECT column of `runs --all-projects`: ``* ml`` for this project's, the others' by name."""
    if run.project == project.id:
        return f"* {project.name}"
    if run.project_name:
        return f"  {run.project_name}"
    # A run from before project ids: the folder it started in.
    return f"  ({os.path.basename((run.cwd or '?').rstrip('/'))})"


def _cached_runs(host: HostConfig, project: ProjectConfig, all_projects: bool) -> list[RunInfo]:
    """The runs of *host* as gpubox last heard of them (this project's, or every project's)."""
    from gpubox.state import open_state
    from gpubox.train.runs import RunInfo

    with open_state() as state:
        records = state.cached_runs(host.name)
    return sorted(
        (
            RunInfo(
                id=r.id,
                host=r.host,
                command=r.command,
                state=r.state,
                started_at=r.started_at,
                ended_at=r.ended_at,
                exit_code=r.exit_code,
                name=r.name,
                project=r.project,
                project_name=r.project_name,
            )
            for r in records
            if all_projects or r.project == project.id
        ),
        key=lambda r: int(r.id[2:]),
    )


def cmd_stop(args: argparse.Namespace) -> int:

    if args.run and args.run.startswith("m-"):
        return _multi_stop(args)
    project = load_project()
    host = _run_host(args, project)
    wanted = check_run_ref(args.run) if args.run else _only_active_run(host, project)
    for one in wanted.split(",") if args.run is None else [wanted]:
        run = stop_one_run(host, project, one, grace=args.grace)
        out(
            f"{run.label()} on {host.name}: {run.state}"
            + ("" if run.exit_code is None else f" (exit {run.exit_code})")
        )
    return 0


def _only_active_run(host: HostConfig, project: ProjectConfig) -> str:
    """`gpubox stop` without a run: this project's only active run; with several, ask which (on a terminal)."""
    session = connect_host(host, project, probe=False, launch=False)
    try:
        runs = project_runs(session, project, list_runs(session))
    finally:
        session.close()
    active = [r for r in runs if not r.finished]
    if not active:
        raise UsageError(f"this project has no active run on {host.name}: nothing to stop")
    if len(active) == 1:
        return active[0].id
    listing = ", ".join(f"{r.label()} ({r.command})" for r in active)
    if not is_terminal():
        raise UsageError(
            f"this project has {len(active)} active runs on {host.name}: {listing}; name one (`gpubox stop RUN`)"
        )
    err(f"this project has {len(active)} active runs on {host.name}:")
    for r in active:
        err(f"  {r.label():<20} {r.state:<9} {r.command}")
    try:
        answer = input("stop which? (a run id or name, `all`, or nothing to cancel) ").strip()
    except EOFError:
        answer = ""
    if answer == "all":
        return ",".join(r.id for r in active)
    chosen = next((r for r in active if answer in (r.id, r.name)), None)
    if chosen is None:
        raise GpuboxError("nothing stopped" + (f": {answer!r} is none of them" if answer else ""))
    return chosen.id
