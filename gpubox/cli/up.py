"""`gpubox up`, `down` and `dash`: bring a host up and hold it, let it go, watch it.

The sequence itself is :mod:`gpubox.actions.up`; this module decides where it runs and how it is shown. On a
terminal (and with ``--detach``) the steps that may ask the user (renting, an unknown host key, a mass deletion)
happen here and the background supervisor does the rest, its progress relayed line by line; with ``--no-tui``
this process does it all and holds the host itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from gpubox.actions import up
from gpubox.actions.down import take_down
from gpubox.actions.supervisor import EventChannel, start_supervisor, stop_supervisor
from gpubox.actions.sync import make_syncer
from gpubox.cli.output import (
    LiveProgress,
    ask_to_pin,
    check_first_sync,
    confirm,
    err,
    is_terminal,
    load_hosts,
    load_project,
    out,
    step,
)
from gpubox.cli.sync import ask_to_release, full_sync, tell_held_back
from gpubox.errors import GpuboxError, UsageError
from gpubox.provision import find_orphans, terminate_orphans
from gpubox.state import open_state
from gpubox.sync.report import DeletionsHeld

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport

__all__ = ["cmd_dash", "cmd_down", "cmd_up"]


def cmd_up(args: argparse.Namespace) -> int:
    project = load_project()
    hosts = load_hosts(project)
    host = hosts.pick(args.host)
    if args.stop:
        pid = stop_supervisor(host.name, project.id)
        out(
            f"stopped gpubox process {pid} holding {host.name}"
            if pid
            else f"nothing was holding {host.name} up for this project"
        )
        return 0
    options = up.UpOptions(
        sync=not args.no_sync,
        services=not args.no_services,
        accept_new=args.accept_new,
        allow_mass_delete=args.allow_mass_delete,
    )
    if args.supervise_child:
        return _supervise_in_background(args, host, project, hosts, options)
    # On a terminal `up` holds the host from the background and opens the dashboard on it.
    tui = not (args.no_tui or args.detach) and is_terminal()
    up.check_free(host, hosts, project)
    question = up.self_stop_question(host, hosts)
    if question is not None and sys.stdin.isatty() and sys.stderr.isatty():
        # Asked once, the answer kept in hosts.toml (--yes never agrees to placing a key for you).
        up.record_self_stop(host, hosts, confirm(question, yes=False), say=step)
        hosts = load_hosts(project)
        host = hosts.pick(args.host)
    if options.sync:
        check_first_sync(project, host, yes=args.yes)
    started = time.monotonic()
    out(f"gpubox up {host.name}")
    if host.spec.rents:
        up.rent(host, confirm=lambda question: confirm(question, yes=args.yes), say=step)
        started = time.monotonic()
    if args.detach or tui:
        code = _start_in_background(host, project, options)
        return _dashboard(project, hosts, focus=host.name) if tui and code == 0 else code
    session = up.connect(host, project, options=options, say=out, ask=ask_to_pin(), started=started)
    shown = LiveProgress()
    try:
        prepared = up.prepare(
            session,
            project,
            options=options,
            say=shown.say,
            first_sync=lambda syncer: full_sync(
                syncer, allow_mass_delete=options.allow_mass_delete, verify=True
            ),
            make_syncer=lambda opened: make_syncer(opened, project, host),
            env_activity=shown.activity,
            tell_sync=lambda report: tell_held_back(
                report, host=host.name, limit_mb=project.sync.max_file_size_mb
            ),
        )
        shown.pause()
        out(up.hold(prepared, project, hosts, detached=False, say=out))
    finally:
        shown.pause()
        session.close()
    return 0


def _start_in_background(host: HostConfig, project: ProjectConfig, options: up.UpOptions) -> int:
    """Start the background supervisor and show its progress as it goes: its lines as they come, and on a
    terminal the first sync as a progress bar and the env build as one changing line."""
    shown = LiveProgress()

    def ask_mass_delete(message: str, deleting: int) -> bool:
        if not is_terminal():
            return False
        shown.pause()
        return ask_to_release(message, deleting)

    ask = ask_to_pin()

    def ask_key(host_name: str, key_type: str, fingerprint: str) -> bool:
        shown.pause()
        return ask is not None and ask(host_name, key_type, fingerprint)

    try:
        supervised = start_supervisor(
            host,
            options=options,
            say=shown.say,
            on_sync=shown.sync,
            on_env=shown.activity,
            ask_to_pin=ask_key if ask is not None else None,
            confirm_mass_delete=ask_mass_delete,
            cwd=project.root,
            project=project,
        )
    finally:
        shown.pause()
    out(f"  running in the background (pid {supervised.pid}, log {supervised.log_path})")
    out(f"  `gpubox status` shows it · `gpubox up {host.name} --stop` ends it · `gpubox down {host.name}`")
    return 0


def _supervise_in_background(
    args: argparse.Namespace,
    host: HostConfig,
    project: ProjectConfig,
    hosts: HostsConfig,
    options: up.UpOptions,
) -> int:
    """The background supervisor itself: the sequence with its progress sent up the event channel (and its two
    possible questions asked there), then the host held until `down`, `up --stop`, autostop or a spent budget."""
    channel = EventChannel(args.events_fd, args.answers_fd)

    def first_sync(syncer: Syncer) -> SyncReport:
        report = syncer.full(
            allow_mass_delete=options.allow_mass_delete, verify=True, progress=channel.sync_progress
        )
        # Deletions that look like a wipe are asked about where the user is; without a yes they stay held
        # back (shown by `gpubox status`) and everything else is synced and watched.
        if report.held_deletions and channel.confirm_mass_delete(
            str(DeletionsHeld(report)), len(report.held_deletions)
        ):
            report.then(syncer.release(progress=channel.sync_progress))
        return report

    session: HostSession | None = None
    try:
        try:
            session = up.connect(host, project, options=options, say=channel.say, ask=channel.ask_to_pin)
            prepared = up.prepare(
                session,
                project,
                options=options,
                say=channel.say,
                first_sync=first_sync,
                make_syncer=lambda opened: make_syncer(opened, project, host),
                env_activity=channel.env_activity,
                tell_sync=lambda report: tell_held_back(
                    report, say=channel.say, host=host.name, limit_mb=project.sync.max_file_size_mb
                ),
            )
        except GpuboxError as exc:
            channel.failed(exc)
            raise
        out(up.hold(prepared, project, hosts, detached=True, say=channel.say, on_ready=channel.ready))
    finally:
        channel.close()
        if session is not None:
            session.close()
    return 0


def cmd_dash(args: argparse.Namespace) -> int:
    if not is_terminal():
        raise UsageError(
            "the dashboard needs a terminal; `gpubox status` and `gpubox runs` print the same facts"
        )
    project = load_project()
    return _dashboard(project, load_hosts(project), focus=args.host)


def _dashboard(project: ProjectConfig, hosts: HostsConfig, *, focus: str | None = None) -> int:
    """Run the dashboard until it is quit; then say what keeps running (quitting stops nothing)."""
    from gpubox.tui.app import GpuboxApp

    if focus is not None:
        hosts.get(focus)
    GpuboxApp(hosts, project, focus_host=focus).run()
    with open_state() as state:
        held = list(dict.fromkeys(supervisor.host for supervisor in state.supervisors()))
    if len(held) == 1:
        out(f"left the dashboard: {held[0]} and its runs keep going; `gpubox down {held[0]}` stops it")
    elif held:
        out(f"left the dashboard: {', '.join(held)} and their runs keep going; `gpubox down HOST` stops one")
    else:
        out("left the dashboard: no host is held up; runs already started keep going on their hosts")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    project = load_project()
    hosts = load_hosts(project)
    if args.orphans:
        if args.host:
            raise UsageError("give HOST or --orphans, not both")
        return _down_orphans(hosts, yes=args.yes)
    host = hosts.pick(args.host)
    take_down(
        host,
        project,
        keep_instance=args.keep_instance,
        say=out,
        pull_outputs=not args.no_pull,
        confirm=lambda question: confirm(question, yes=args.yes),
        confirm_keep=lambda question: _ask_on_terminal(question, yes=args.yes),
        ask_to_pin=ask_to_pin(),
    )
    return 0


def _ask_on_terminal(question: str, *, yes: bool) -> bool:
    """A question whose "yes" loses nothing: asked on a terminal, otherwise said and taken as yes."""
    if yes or not is_terminal():
        out(f"  {question.removesuffix(': go on?')}")
        return True
    return confirm(question, yes=False)


def _down_orphans(hosts: HostsConfig, *, yes: bool) -> int:
    report = find_orphans(hosts)
    for name, problem in report.problems:
        out(f"  ! {name}: {problem}")
    if not report.asked:
        out("no cloud provider is configured: nothing to look for")
        return 0
    if not report.orphans:
        out(f"no orphaned instances ({', '.join(report.asked)} checked)")
        return 1 if report.problems else 0
    out(f"{len(report.orphans)} instance(s) billing with no gpubox holding them:")
    for orphan in report.orphans:
        out(f"  {orphan.describe()}")
    stopped = sum(1 for orphan in report.orphans if orphan.stopped)
    disks = f" (the {stopped} stopped one(s) with their disks and whatever is on them)" if stopped else ""
    if not confirm(f"terminate these {len(report.orphans)} instance(s){disks}?", yes=yes):
        raise GpuboxError("nothing terminated")
    failures = terminate_orphans(hosts, report.orphans, step)
    for failure in failures:
        err(f"gpubox: could not terminate {failure}")
    return 1 if failures or report.problems else 0
