"""`gpubox sync` (one pass, a dry run, or --watch) and `gpubox pull`."""

from __future__ import annotations

import argparse
import os
import threading
from typing import TYPE_CHECKING, Any

from gpubox.actions import Say
from gpubox.actions.supervisor import stop_on_signals, supervise
from gpubox.actions.sync import make_syncer
from gpubox.actions.up import start_live_sync
from gpubox.cli.output import (
    ask_to_pin,
    check_first_sync,
    err,
    is_terminal,
    load_hosts,
    load_project,
    out,
    print_json,
    progress_bar,
    shown,
)
from gpubox.errors import UsageError
from gpubox.remote.session import connect_host
from gpubox.sync.engine import BatchProgress, MassDeletionRefused
from gpubox.sync.plan import DELETES, SENDS
from gpubox.sync.pull import normalise_paths, pull

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport

__all__ = ["cmd_pull", "cmd_sync", "full_sync", "tell_held_back"]


def full_sync(
    syncer: Syncer,
    *,
    allow_mass_delete: bool,
    quiet: bool = False,
    dry_run: bool = False,
    verify: bool | None = None,
) -> SyncReport:
    """One full pass with a progress bar on a terminal; a refused mass deletion is asked about there."""
    with progress_bar(not quiet and not dry_run) as bar:
        task = None

        def progress(step: BatchProgress) -> None:
            nonlocal task
            if bar is None:
                return
            if task is None:
                task = bar.add_task("sync", total=step.bytes_total or 1)
            bar.update(task, completed=step.bytes_done, total=step.bytes_total or 1)

        try:
            return syncer.full(
                allow_mass_delete=allow_mass_delete, dry_run=dry_run, verify=verify, progress=progress
            )
        except MassDeletionRefused as exc:
            if quiet or not is_terminal():
                raise
            if bar is not None:
                bar.stop()
            err(f"gpubox: {exc}")
            try:
                answer = input(
                    f"Delete those {exc.deleting} files on the host (they go to its trash)? [y/N] "
                )
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                raise
            return syncer.full(allow_mass_delete=True, dry_run=dry_run, verify=verify, progress=progress)


def tell_held_back(report: SyncReport, say: Say = out) -> None:
    """What a sync did not do, and why: secrets held back, files too large, links out, conflicts, errors."""
    if report.held_back:
        names = ", ".join(map(shown, report.held_back[:5])) + (" ..." if len(report.held_back) > 5 else "")
        say(
            f"    held back {len(report.held_back)} secret file(s): {names} (name them in [sync] include to send)"
        )
    for path, size in report.too_large[:5]:
        say(
            f"    skipped {shown(path)} ({size / 1e6:.0f} MB, over max_file_size_mb; list it in [sync] include to send)"
        )
    for path, target in report.outside_links[:5]:
        say(f"    skipped symlink {shown(path)} -> {shown(target)} (points outside the project)")
    for path, error in report.unreadable[:5]:
        say(f"    could not read {shown(path)}: {error}")
    for conflict in report.conflicts:
        say(f"  ! conflict: the host's copy was kept as {shown(conflict)}")
    for path in report.host_changed[:10]:
        say(
            f"  ! {shown(path)} changed on the host since gpubox wrote it; local is unchanged, so it was left alone"
        )
    for error in report.errors:
        say(f"  ! sync error: {shown(error)}")


def _report_document(host: str, report: SyncReport, *, dry_run: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "host": host,
        "dry_run": dry_run,
        "sent": report.sent,
        "bytes_sent": report.bytes_sent,
        "deleted": report.deleted,
        "already_there": report.in_sync,
        "seconds": round(report.seconds, 3),
        "conflicts": report.conflicts,
        "host_changed": report.host_changed,
        "kept_on_host": report.kept_on_host,
        "errors": report.errors,
        "held_back": report.held_back,
        "too_large": [{"path": p, "bytes": n} for p, n in report.too_large],
        "outside_links": [{"path": p, "target": t} for p, t in report.outside_links],
        "unreadable": [{"path": p, "error": e} for p, e in report.unreadable],
    }
    if dry_run:
        document["would_send"] = [op.path for op in report.planned if op.kind in SENDS]
        document["would_delete"] = [op.path for op in report.planned if op.kind in DELETES]
    return document


def cmd_sync(args: argparse.Namespace) -> int:
    project = load_project()
    host = load_hosts(project).pick(args.host)
    if args.watch and (args.dry_run or args.json):
        raise UsageError("--watch keeps running; it cannot be combined with --dry-run or --json")
    if not args.dry_run:
        check_first_sync(project, host, yes=args.yes)
    sessions: list[HostSession] = []

    def connect() -> HostSession:
        sessions.append(
            connect_host(
                host,
                project,
                accept_new=args.accept_new,
                ask=ask_to_pin(),
                probe=False,
                folder="check" if args.dry_run else "claim",
            )
        )
        return sessions[-1]

    try:
        syncer = make_syncer(connect, project, host)
        report = full_sync(
            syncer,
            allow_mass_delete=args.allow_mass_delete,
            quiet=args.json,
            dry_run=args.dry_run,
            verify=True if args.verify else None,
        )
        if args.json:
            print_json(_report_document(host.name, report, dry_run=args.dry_run))
            return 0
        if args.dry_run:
            for op in report.planned:
                verb = "delete" if op.kind in DELETES else "send  "
                out(f"{verb} {shown(op.path)}{'/' if op.kind in ('mkdir', 'rmdir') else ''}")
            out(f"dry run: {len(report.planned)} changes for {host.name}, nothing was sent")
            tell_held_back(report)
            return 0
        out(f"sync {host.name}: {report.summary()}")
        tell_held_back(report)
        if not args.watch:
            return 1 if report.errors else 0
        session = syncer.session
        stop = threading.Event()
        wake = threading.Event()
        with stop_on_signals(stop, wake):
            live = start_live_sync(syncer, session, wake, say=out)
            out(f"watching {project.root} → {host.name}:{session.remote_dir} (Ctrl-C stops)")
            try:
                supervise(session, stop=stop, wake=wake, say=lambda text: out(f"  · {text}"))
            finally:
                live.stop()
        return 0
    finally:
        for opened in sessions:
            opened.close()


def cmd_pull(args: argparse.Namespace) -> int:
    project = load_project()
    hosts = load_hosts(project)
    paths = list(args.paths)
    first = args.host
    # `gpubox pull checkpoints/` names a path, not a host: HOST is optional and comes first.
    if first and first not in hosts.hosts and ("/" in first or os.path.exists(first)):
        paths.insert(0, first)
        first = None
    host = hosts.pick(first)
    normalise_paths(paths, project.root)  # a path outside the project is refused before anything starts
    session = connect_host(
        host, project, accept_new=args.accept_new, ask=ask_to_pin(), probe=False, folder="check"
    )
    try:
        report = pull(session, project, paths)
    finally:
        session.close()
    out(f"pull {host.name}: {report.summary()}")
    for kept in report.kept_local:
        out(f"  kept your newer local copy: {kept}")
    for path in report.skipped_links:
        out(f"  skipped symlink {path}")
    for error in report.errors:
        out(f"  ! {error}")
    return 1 if report.errors else 0
