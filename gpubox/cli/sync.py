"""`gpubox sync` (one pass, a dry run, or --watch), `gpubox pull` and `gpubox push`."""

from __future__ import annotations

import argparse
import os
import threading
from typing import TYPE_CHECKING, Any

from gpubox.actions import Say
from gpubox.actions.sync import (
    flush_held,
    held_lines,
    host_changed_lines,
    make_syncer,
    too_large_line,
)
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
    tell_moved_here,
)
from gpubox.errors import UsageError
from gpubox.remote.session import connect_host
from gpubox.sync.report import BatchProgress, DeletionsHeld

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport

__all__ = ["ask_to_release", "cmd_pull", "cmd_push", "cmd_sync", "full_sync", "tell_held_back"]


def full_sync(
    syncer: Syncer,
    *,
    allow_mass_delete: bool,
    quiet: bool = False,
    dry_run: bool = False,
    verify: bool | None = None,
) -> SyncReport:
    """One full pass with a progress bar on a terminal; a refused mass deletion is asked about there."""
    # Started at the first batch, not before the scan: the bar's refresh thread would keep the scan from
    # splitting over two processes (a fork is only safe with no other thread running).
    bar = progress_bar(not quiet and not dry_run)
    task = None

    def progress(step: BatchProgress) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            bar.start()
            task = bar.add_task("sync", total=step.bytes_total or 1)
        bar.update(task, completed=step.bytes_done, total=step.bytes_total or 1)

    try:
        report = syncer.full(
            allow_mass_delete=allow_mass_delete, dry_run=dry_run, verify=verify, progress=progress
        )
    finally:
        if bar is not None and task is not None:
            bar.stop()
    if not report.held_deletions or dry_run or quiet or not is_terminal():
        return report
    if not ask_to_release(str(DeletionsHeld(report)), len(report.held_deletions)):
        return report
    return report.then(syncer.release())


def ask_to_release(message: str, count: int) -> bool:
    """Ask on the terminal whether deletions held back as a wipe may go (into the host's trash)."""
    err(f"gpubox: {message}")
    try:
        answer = input(f"Delete those {count} files on the host now (they go to its trash)? [y/N] ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def tell_held_back(
    report: SyncReport, say: Say = out, *, host: str = "the host", limit_mb: float = 100.0
) -> None:
    """What a sync did not do, and why: secrets held back, files too large, links out, conflicts, errors,
    deletions held back as a wipe, files changed on the host."""
    if report.held_back:
        names = ", ".join(map(shown, report.held_back[:5])) + (" ..." if len(report.held_back) > 5 else "")
        say(
            f"    held back {len(report.held_back)} secret file(s): {names} (name them in [sync] include to send)"
        )
    kept = set(report.too_large_kept)
    for path, size in report.too_large[:5]:
        say("    " + too_large_line(shown(path), size, limit_mb, kept=path in kept))
    for path, target in report.outside_links[:5]:
        say(f"    skipped symlink {shown(path)} -> {shown(target)} (points outside the project)")
    for path, error in report.unreadable[:5]:
        say(f"    could not read {shown(path)}: {error}")
    for conflict in report.conflicts:
        say(f"  ! conflict: the host's copy was kept as {shown(conflict)}")
    for line in host_changed_lines(report.host_changed, host):
        say(f"  {line}")
    for error in report.errors:
        say(f"  ! sync error: {shown(error)}")
    for line in held_lines(len(report.held_deletions), report.held_reason, host):
        say(f"  {line}")


def _report_document(host: str, report: SyncReport, *, dry_run: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "host": host,
        "dry_run": dry_run,
        "sent": report.sent,
        "bytes_sent": report.bytes_sent,
        "deleted": report.deleted,
        "moved": report.moved,
        "already_there": report.in_sync,
        "seconds": round(report.seconds, 3),
        "conflicts": report.conflicts,
        "host_changed": report.host_changed,
        "kept_on_host": report.kept_on_host,
        "errors": report.errors,
        "held_back": report.held_back,
        "too_large": [
            {"path": p, "bytes": n, "host_keeps_earlier_copy": p in report.too_large_kept}
            for p, n in report.too_large
        ],
        "held_deletions": report.held_deletions,
        "held_reason": report.held_reason,
        "outside_links": [{"path": p, "target": t} for p, t in report.outside_links],
        "unreadable": [{"path": p, "error": e} for p, e in report.unreadable],
    }
    if dry_run:
        from gpubox.sync.plan import DELETES, SENDS

        held = set(report.held_deletions)
        document["would_send"] = [op.path for op in report.planned if op.kind in SENDS and op.kind != "move"]
        document["would_move"] = [
            {"from": op.source, "to": op.path} for op in report.planned if op.kind == "move"
        ]
        document["would_delete"] = [
            op.path for op in report.planned if op.kind in DELETES and op.path not in held
        ]
    return document


def cmd_sync(args: argparse.Namespace) -> int:
    project = load_project()
    host = load_hosts(project).pick(args.host)
    if args.watch and (args.dry_run or args.json):
        raise UsageError("--watch keeps running; it cannot be combined with --dry-run or --json")
    if not args.dry_run:
        check_first_sync(project, host, yes=args.yes)
    if not (args.watch or args.dry_run or args.verify or args.allow_mass_delete):
        # Under `gpubox up`, its live sync has sent (or is sending) every change: its flush barrier is the pass.
        flushed = flush_held(host.name, project, verify=False)
        # Deletions held back as a wipe are asked about on a terminal: the pass of its own below does that.
        if flushed is not None and not (flushed.held_deletions and not args.json and is_terminal()):
            return _tell_sync(args, project.sync.max_file_size_mb, host.name, flushed)
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
        tell_moved_here(sessions[-1])
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
        limit = project.sync.max_file_size_mb
        if args.dry_run and not args.json:
            from gpubox.sync.plan import DELETES

            held = set(report.held_deletions)
            for op in report.planned:
                slash = "/" if op.kind in ("mkdir", "rmdir") else ""
                if op.kind == "move":
                    where = "(from the host's trash)" if op.from_trash else shown(op.source)
                    out(f"move   {where} -> {shown(op.path)}")
                elif op.kind in DELETES:
                    out(f"delete {shown(op.path)}{slash}" + (" (held back)" if op.path in held else ""))
                else:
                    out(f"send   {shown(op.path)}{slash}")
            out(f"dry run: {len(report.planned)} changes for {host.name}, nothing was sent")
            tell_held_back(report, host=host.name, limit_mb=limit)
            return 0
        if args.json or not args.watch:
            return _tell_sync(args, limit, host.name, report)
        out(f"sync {host.name}: {report.summary()}")
        tell_held_back(report, host=host.name, limit_mb=limit)
        # The watcher and the reconnecting loop (watchdog, paramiko) load only for --watch: a one-shot sync is
        # over before they would matter.
        from gpubox.actions.supervisor import stop_on_signals, supervise
        from gpubox.actions.up import start_live_sync

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


def _tell_sync(args: argparse.Namespace, limit_mb: float, host: str, report: SyncReport) -> int:
    """What a one-shot `gpubox sync` (or its --json, or --dry-run --json) says of its pass, and its exit code."""
    if args.json:
        print_json(_report_document(host, report, dry_run=args.dry_run))
        return 1 if report.errors or (report.held_deletions and not args.dry_run) else 0
    out(f"sync {host}: {report.summary()}")
    tell_held_back(report, host=host, limit_mb=limit_mb)
    if report.held_deletions:
        raise DeletionsHeld(report)
    return 1 if report.errors else 0


def cmd_pull(args: argparse.Namespace) -> int:
    from gpubox.sync.pull import normalise_paths, pull

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
        report = pull(session, project, paths, syncer=make_syncer(session, project, host))
    finally:
        session.close()
    out(f"pull {host.name}: {report.summary()}")
    for notebook in report.notebooks:
        out(f"  notebook from the host: {shown(notebook)}")
    for kept in report.kept_local:
        out(f"  kept your local copy aside: {kept}")
    for path in report.skipped_links:
        out(f"  skipped symlink {path}")
    for error in report.errors:
        out(f"  ! {error}")
    return 1 if report.errors else 0


def cmd_push(args: argparse.Namespace) -> int:
    from gpubox.sync.pull import normalise_paths

    project = load_project()
    hosts = load_hosts(project)
    paths = list(args.paths)
    first = args.host
    if first and first not in hosts.hosts:  # `gpubox push train.py` names a path, not a host
        paths.insert(0, first)
        first = None
    host = hosts.pick(first)
    if not paths:
        raise UsageError("push what? name the files or folders whose local copy should win on the host")
    names = normalise_paths(paths, project.root)
    missing = [name for name in names if not os.path.lexists(project.root / name)]
    if missing:
        raise UsageError(f"{missing[0]}: no such file or folder in the project to push")
    session = connect_host(
        host, project, accept_new=args.accept_new, ask=ask_to_pin(), probe=False, folder="claim"
    )
    tell_moved_here(session)
    try:
        report = make_syncer(session, project, host).push(names)
    finally:
        session.close()
    out(f"push {host.name}: {report.summary()}")
    tell_held_back(report, host=host.name, limit_mb=project.sync.max_file_size_mb)
    return 1 if report.errors else 0
