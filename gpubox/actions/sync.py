"""One-shot sync and pull for a host, on a connection of their own (opened only when there is work)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gpubox.remote.folder import known_folder
from gpubox.remote.session import connect_host
from gpubox.sync.engine import Syncer
from gpubox.sync.pull import pull

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.session import HostSession
    from gpubox.sync.engine import Syncer, SyncReport
    from gpubox.sync.pull import PullReport

__all__ = ["make_syncer", "pull_outputs", "sync_now"]


def make_syncer(
    session: HostSession | Callable[[], HostSession], project: ProjectConfig, host: HostConfig
) -> Syncer:
    """A Syncer for *host*; given a connect callable instead of a session, it connects only if it must."""

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
        max_delete_count=settings.max_delete_count,
        max_delete_share=settings.max_delete_share,
        trash_days=settings.trash_days,
    )


def sync_now(host: HostConfig, project: ProjectConfig, *, allow_mass_delete: bool = False) -> SyncReport:
    """One full one-way-safe pass, like `gpubox sync` (connects only when there is something to send)."""

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
    """`gpubox pull`: the outputs folders (or *paths*) back from the host, incrementally."""

    session = connect_host(host, project, probe=False, launch=False, folder="check")
    try:
        return pull(session, project, list(paths))
    finally:
        session.close()
