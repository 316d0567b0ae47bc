"""The project's folder on a host: which one it is, and that it is this project's.

Each project has a folder of its own on each host: ``remote_dir`` from hosts.toml when set, else
``~/gpubox/<name>-<project id>`` (:attr:`gpubox.config.ProjectConfig.folder_name`), so two projects that share a
folder name never share a folder. The host records which project owns each folder (``~/.gpubox/projects/``,
see PROTOCOL.md), and gpubox refuses to sync a project into a folder another project owns.

A folder of gpubox's older layout (``~/gpubox/<name>``, with no owner recorded) is adopted, where it is, by the
project that synced there from this machine (its sync record says so) and by no other, so its files and runs
stay where they are. Once settled, the folder is remembered in the state database, so later commands know it
without asking the host.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from gpubox.config.hosts import legacy_project_dir
from gpubox.errors import BadInput
from gpubox.record import record
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig
    from gpubox.remote.agent.framing import FramedAgent

__all__ = [
    "FolderTaken",
    "HostFolder",
    "known_folder",
    "left_behind",
    "moved_here_lines",
    "owner_record",
    "settle_folder",
]


class FolderTaken(BadInput):
    """The folder this project would use on the host belongs to another project."""


@record
class HostFolder:
    """A project's folder on a host, settled."""

    folder: str
    """As gpubox names it (``~/gpubox/ml-3f9c2a``): what runs, sync and services are given."""
    path: str
    """Its real path on the host."""
    exists: bool
    created: bool
    adopted: bool
    """An older gpubox's folder of this project, or that of a project gone from this machine, taken over where
    it is."""
    explicit: bool
    """Set by ``remote_dir`` in hosts.toml."""
    left_behind: tuple[calls.ProjectOwner, ...] = ()
    """When it was just created: the folders there of this machine's projects whose folder here is gone
    (:func:`left_behind`), one of which may be this project's before a move or a rename."""

    def describe(self) -> str:
        """How `up` and `status` show it: ``~/gpubox/ml-3f9c2a (this project's; created)``."""
        how = "remote_dir in hosts.toml" if self.explicit else "this project's"
        if self.adopted:
            how += "; taken over where it is, with its files and runs"
        elif self.created:
            how += "; created"
        elif not self.exists:
            how += "; made on first use"
        return f"{self.folder} ({how})"


def owner_record(project: ProjectConfig) -> dict[str, str]:
    """What the host records about the project that owns a folder (shown to another project refused there)."""
    return {
        "id": project.id,
        "name": project.name,
        "root": str(project.root),
        "machine": socket.gethostname(),
    }


def known_folder(host: HostConfig, project: ProjectConfig) -> str | None:
    """The project's folder on *host* without asking the host: ``remote_dir``, or the one settled before; None
    when only the host can tell (the first time, when an older gpubox's folder may be this project's)."""
    if host.remote_dir:
        return host.remote_dir
    from gpubox.state import open_state

    with open_state() as state:
        return state.project_folder(host.name, project.id)


def _legacy_candidate(host: HostConfig, project: ProjectConfig) -> str | None:
    """The older layout's folder when this project synced there from this machine (else it is not ours)."""
    from gpubox.state import open_state

    legacy = legacy_project_dir(project.name)
    with open_state() as state:
        synced = state.has_ancestor(host.name, f"{project.root}|{legacy}")
    return legacy if synced else None


def settle_folder(
    agent: FramedAgent, host: HostConfig, project: ProjectConfig, *, claim: bool, strict: bool = True
) -> HostFolder:
    """Settle the project's folder on the host (see the module's docstring). With *claim*, make it and record the
    project as its owner. A folder another project owns is refused (:class:`FolderTaken`, one line naming both)
    when *claim* or *strict*; otherwise it is returned as it is (reading runs or logs takes nothing)."""
    known = known_folder(host, project)
    folder = known or host.remote_project_dir(project)
    legacy = None if known else _legacy_candidate(host, project)
    owner = owner_record(project)
    answer = calls.project_folder(agent, folder=folder, owner=owner, legacy=legacy, claim=claim)
    theirs = answer.get("owner")
    if theirs is not None and not answer.get("mine") and claim and _gone(theirs):
        # Its project left this machine's folder (moved or renamed): the folder may go on as this project's.
        answer = calls.project_folder(
            agent, folder=folder, owner=owner, legacy=legacy, claim=True, take_over=theirs.get("id")
        )
        theirs = answer.get("owner")
    if theirs is not None and not answer.get("mine") and (claim or strict):
        raise FolderTaken(_taken(host, project, str(answer.get("folder") or folder), theirs))
    created = bool(answer.get("created"))
    settled = HostFolder(
        folder=str(answer.get("folder") or folder),
        path=str(answer.get("path") or folder),
        exists=bool(answer.get("exists")),
        created=created,
        adopted=bool(answer.get("adopted")),
        explicit=bool(host.remote_dir),
        left_behind=tuple(left_behind(agent, project)) if created and claim else (),
    )
    if answer.get("mine") and settled.folder != known:
        from gpubox.state import open_state

        with open_state() as state:
            state.record_project_folder(host.name, project.id, str(project.root), settled.folder)
    return settled


def _gone(owner: calls.ProjectOwner) -> bool:
    """Whether the owner of a folder is a project of this machine whose own folder is gone from it."""
    from pathlib import Path

    root = owner.get("root")
    return owner.get("machine") == socket.gethostname() and bool(root) and not Path(str(root)).exists()


def _taken(host: HostConfig, project: ProjectConfig, folder: str, theirs: calls.ProjectOwner) -> str:
    other = theirs.get("root") or "?"
    machine = theirs.get("machine")
    where = f"{other} on {machine}" if machine and machine != socket.gethostname() else other
    fix = (
        "give each project its own remote_dir in hosts.toml"
        if host.remote_dir
        else "remove that folder's record on the host, or set remote_dir in hosts.toml"
    )
    return (
        f"{folder} on {host.name} belongs to project {theirs.get('name') or '?'} ({where}), not to this "
        f"project ({project.root}): {fix}"
    )


LEFT_BEHIND_SHOWN = 2
"""Folders of projects gone from this machine that a new project's folder names (the likeliest first)."""


def moved_here_lines(folder: HostFolder | None) -> list[str]:
    """What to tell of a just-created folder's :attr:`~HostFolder.left_behind`: a moved or renamed project is a
    new one to gpubox, and these say how it keeps its old folder, files and runs."""
    if folder is None:
        return []
    gone = folder.left_behind
    lines = [
        f"{owner.get('folder')} there was the folder of {owner.get('root')}, gone from this machine: if this "
        f'project was moved from there, remote_dir = "{owner.get("folder")}" in hosts.toml keeps its files and '
        "runs"
        for owner in gone[:LEFT_BEHIND_SHOWN]
    ]
    if len(gone) > LEFT_BEHIND_SHOWN:
        lines.append(
            f"and {len(gone) - LEFT_BEHIND_SHOWN} more folders there of projects gone from this machine "
            "(`gpubox runs --all-projects` lists their runs)"
        )
    return lines


def left_behind(agent: FramedAgent, project: ProjectConfig) -> list[calls.ProjectOwner]:
    """Folders on the host of projects of this machine whose folder here is gone: a project moved or renamed
    (it is a new project to gpubox) may be one of them, with its files and runs. Those of the same name come
    first, then the most recently claimed."""
    from pathlib import Path

    machine = socket.gethostname()
    found = []
    for claim in calls.projects(agent).get("projects", []):
        root = claim.get("root")
        if claim.get("machine") != machine or not root or root == str(project.root) or Path(root).exists():
            continue
        found.append(claim)
    # A moved project keeps its folder's name; a renamed one is likelier the most recent: those first.
    found.sort(key=lambda r: (r.get("name") != project.name, -float(r.get("claimed_at") or 0)))
    return found
