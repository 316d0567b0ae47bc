"""One-shot sync and pull for a host, on a connection of their own (opened only when there is work)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

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
    return Syncer(
        session,
        project,
        host_name=host.name,
        remote_dir=host.remote_project_dir(project.name),
        max_delete_count=settings.max_delete_count,
        max_delete_share=settings.max_delete_share,
        trash_days=settings.trash_days,
    )


def sync_now(host: HostConfig, project: ProjectConfig, *, allow_mass_delete: bool = False) -> SyncReport:
    """One full one-way-safe pass, like `gpubox sync` (connects only when there is something to send)."""

    sessions: list[HostSession] = []

    def connect() -> HostSession:
        sessions.append(connect_host(host, project.name, probe=False, launch=False))
        return sessions[-1]

    try:
        return make_syncer(connect, project, host).full(allow_mass_delete=allow_mass_delete)
    finally:
        for session in sessions:
            session.close()


def pull_outputs(host: HostConfig, project: ProjectConfig, paths: Sequence[str] = ()) -> PullReport:
    """`gpubox pull`: the outputs folders (or *paths*) back from the host, incrementally."""

    session = connect_host(host, project.name, probe=False, launch=False)
    try:
        return pull(session, project, list(paths))
    finally:
        session.close()
