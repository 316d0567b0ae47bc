"""One-shot sync and pull for a host, on a connection of their own (opened only when there is work)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.fmt import format_duration
from gpubox.remote.folder import known_folder

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig, SyncConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport
    from gpubox.sync.plan import WipeGuard
    from gpubox.sync.pull import PullReport

__all__ = [
    "flush_held",
    "held_lines",
    "host_changed_lines",
    "make_syncer",
    "pull_outputs",
    "sync_lines",
    "sync_now",
    "too_large_line",
    "wipe_guard",
]


def _word(path: str) -> str:
    """A path as the user would type it in a command (quoted when it holds spaces or odd characters)."""
    import shlex

    return shlex.quote(path) if path.isprintable() else repr(path)


def _listed(paths: Sequence[str], most: int = 5) -> str:
    return ", ".join(_word(p) for p in paths[:most]) + (
        f" and {len(paths) - most} more" if len(paths) > most else ""
    )


def held_lines(count: int, reason: str | None, host: str) -> list[str]:
    """What to say while deletions are held back as a wipe: why, and the one command that lets them go."""
    if not count:
        return []
    files = f"{count} deletion{'' if count == 1 else 's'}"
    return [
        f"! {files} held back on {host}: {reason or 'they look like a wipe'}; the rest keeps syncing. Check the "
        f"project folder, then `gpubox sync --allow-mass-delete` carries them out (into the host's trash)"
    ]


def host_changed_lines(
    paths: Sequence[str], host: str, *, running: bool = False, total: int | None = None
) -> list[str]:
    """Tracked files edited on the host since gpubox sent them (gpubox leaves them alone): which, and how to
    settle each way. *total*: how many there are, when *paths* holds only the first few."""
    if not paths:
        return []
    total = max(total or 0, len(paths))
    one = _word(paths[0]) if total == 1 else "PATH"
    used = "; the run uses the host's copy" if running else ""
    count = f"{total} file{'' if total == 1 else 's'}"
    listed = _listed(paths) + (f" and {total - len(paths)} more" if total > len(paths) > 5 else "")
    return [
        f"! {count} changed on {host} since gpubox sent them, so sync leaves them alone{used}: {listed}",
        f"  `gpubox pull {one}` brings the host's copy home; `gpubox push {one}` sends yours over it "
        "(the host's copy goes to its trash)",
    ]


def sync_lines(document: Mapping[str, Any] | None, host: str) -> list[str]:
    """`gpubox status`'s lines for the live sync of a held host (its supervisor's last monitor report)."""
    if not document:
        return []
    parts = ["watching" if document.get("watching") else "rescanning (not watching)"]
    parts.append(f"{int(document.get('pending') or 0)} pending")
    last = document.get("last") or {}
    if last.get("at"):
        parts.append(f"last batch {format_duration(max(0.0, time.time() - float(last['at'])))} ago")
    for key, word in (("conflicts", "conflict"), ("errors", "error")):
        count = int(document.get(key) or 0)
        if count:
            parts.append(f"{count} {word}{'' if count == 1 else 's'}")
    lines = ["sync      " + " · ".join(parts)]
    lines += held_lines(int(document.get("held_deletions") or 0), document.get("held_reason"), host)
    paths = [str(p) for p in document.get("host_changed_paths") or []]
    lines += host_changed_lines(paths, host, total=int(document.get("host_changed") or 0))
    large = [
        f"{_word(str(path))} ({int(size) / 1e6:.1f} MB)" for path, size in document.get("too_large") or []
    ]
    if large:
        lines.append(f"  skipped for size (over max_file_size_mb): {', '.join(large)}")
    return lines


def too_large_line(path: str, size: int, limit_mb: float, *, kept: bool) -> str:
    """A file skipped for its size, and what the host has of it."""
    line = (
        f"skipped {_word(path)} ({size / 1e6:.1f} MB, over max_file_size_mb = {limit_mb:g}; list it in [sync] "
        "include to send it)"
    )
    if kept:
        line += "; the host keeps the copy sent before, and deleting the file here still deletes it there"
    return line


def wipe_guard(settings: SyncConfig) -> WipeGuard:
    """What counts as a wipe for this project ([sync] in gpubox.toml)."""
    from gpubox.sync.plan import WipeGuard

    return WipeGuard(
        share=settings.wipe_share,
        min_files=settings.wipe_min_files,
        max_count=settings.max_delete_count,
        max_share=settings.max_delete_share,
    )


def flush_held(host: str, project: ProjectConfig, *, verify: bool) -> SyncReport | None:
    """The flush barrier of the `gpubox up` holding *host* for *project* (gpubox/remote/control.py): when it
    answers, everything saved before this call is on the host, and this is what its live sync did meanwhile.
    None when nothing holding the host syncs it, or it could not vouch for the host: then sync on your own."""
    from gpubox.remote.control import flush_through_holder
    from gpubox.sync.report import report_from_document

    document = flush_through_holder(host, project.id, verify=verify)
    return None if document is None else report_from_document(document)


def make_syncer(
    session: HostSession | Callable[[], HostSession], project: ProjectConfig, host: HostConfig
) -> Syncer:
    """A Syncer for *host*; given a connect callable instead of a session, it connects only if it must."""
    # The engine (and pathspec under it) loads here, not with the module: `status` reads the sync lines only.
    from gpubox.sync.engine import Syncer

    settings = project.sync
    if callable(session):
        remote_dir = known_folder(host, project)
        if remote_dir is None:
            # Only the host can tell which folder is this project's (the first time): connect now.
            session = session()
            remote_dir = session.remote_dir
    else:
        remote_dir = session.remote_dir
    return Syncer(
        session,
        project,
        host_name=host.name,
        remote_dir=remote_dir,
        guard=wipe_guard(settings),
        trash_days=settings.trash_days,
    )


def sync_now(host: HostConfig, project: ProjectConfig, *, allow_mass_delete: bool = False) -> SyncReport:
    """One full one-way-safe pass, like `gpubox sync` (connects only when there is something to send)."""

    from gpubox.remote.session import connect_host  # paramiko: only once there is something to send

    sessions: list[HostSession] = []

    def connect() -> HostSession:
        sessions.append(connect_host(host, project, probe=False, launch=False, folder="claim"))
        return sessions[-1]

    try:
        return make_syncer(connect, project, host).full(allow_mass_delete=allow_mass_delete)
    finally:
        for session in sessions:
            session.close()


def pull_outputs(host: HostConfig, project: ProjectConfig, paths: Sequence[str] = ()) -> PullReport:
    """`gpubox pull`: the outputs folders and the notebooks edited on the host (or *paths*) back from the host,
    incrementally."""
    from gpubox.remote.session import connect_host
    from gpubox.sync.pull import pull

    session = connect_host(host, project, probe=False, launch=False, folder="check")
    try:
        return pull(session, project, list(paths), syncer=make_syncer(session, project, host))
    finally:
        session.close()
