"""The project as gpubox found it: which folder it is, and whether sending it to a host needs a question first.

A folder gpubox found no marker for (no gpubox.toml, hosts.toml or git work tree above it, and no gpubox holding
it up) is taken as a project only with care: the home folder, ``/``, or a folder whose first sync would send more
than :data:`ASK_FILES` files or :data:`ASK_BYTES` bytes is a question first (`gpubox sync` in the wrong terminal
must not send a home folder, its caches and all, to a rented machine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gpubox.config.project import FOUND_BY
from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.config import HostConfig, ProjectConfig

__all__ = ["ASK_BYTES", "ASK_FILES", "FirstSync", "first_sync_question", "root_note"]

ASK_FILES = 20_000
ASK_BYTES = 1_000_000_000


def root_note(project: ProjectConfig) -> str | None:
    """The line that says which project folder is used when it is not the current folder; None when it is."""
    if project.start is None or project.start == project.root:
        return None
    return f"project {project.root} ({FOUND_BY.get(project.found_by, project.found_by)})"


@record
class FirstSync:
    """What the first sync of a folder would send, counted up to just past the limits."""

    files: int
    size: int
    more: bool
    """The count stopped at a limit: there is more than this."""

    def describe(self) -> str:
        size = f"{self.size / 1e9:.1f} GB" if self.size >= 1e8 else f"{self.size / 1e6:.1f} MB"
        files = f"{self.files:,} file{'' if self.files == 1 else 's'}"
        return f"{'at least ' if self.more else ''}{files} ({size})"


def first_sync_question(project: ProjectConfig, host: HostConfig) -> str | None:
    """The question to ask before the first sync of *project* to *host*, with the numbers; None when there is
    nothing to ask (a folder with a marker, one synced there before, or a small one)."""
    if project.found_by != "cwd":
        return None
    root = project.root
    if root == Path(root.anchor):
        return f"{root} is the whole filesystem, not a project folder: send it to {host.name}?"
    if _synced_before(project, host):
        return None
    home = Path.home().resolve()
    counted = count_first_sync(project)
    if root == home:
        return (
            f"{root} is your home folder and has no gpubox.toml, hosts.toml or git work tree: send "
            f"{counted.describe()} to {host.name}?"
        )
    if counted.more or counted.files > ASK_FILES or counted.size > ASK_BYTES:
        return (
            f"the first sync of {root} to {host.name} would send {counted.describe()} (the folder has no "
            f"gpubox.toml, hosts.toml or git work tree): go ahead?"
        )
    return None


def _synced_before(project: ProjectConfig, host: HostConfig) -> bool:
    from gpubox.remote.folder import known_folder
    from gpubox.state import open_state

    folder = known_folder(host, project)
    if folder is None:
        return False
    with open_state() as state:
        return state.has_ancestor(host.name, f"{project.root}|{folder}")


def count_first_sync(project: ProjectConfig) -> FirstSync:
    """Files and bytes a first sync would send (what the ignore rules let through), counted until one of the
    limits is passed (a home folder's million files are not all counted first)."""
    from gpubox.sync.ignore import Decision, rules_for

    rules = rules_for(project)
    base = str(project.root)
    files = size = 0
    stack = [""]
    while stack:
        folder = stack.pop()
        try:
            listing = os.scandir(os.path.join(base, folder) if folder else base)
        except OSError:
            continue
        with listing:
            for item in listing:
                relpath = f"{folder}/{item.name}" if folder else item.name
                try:
                    is_dir = item.is_dir(follow_symlinks=False)
                    length = 0 if is_dir else item.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if rules.decide(relpath, is_dir, length) is not Decision.SEND:
                    continue
                if is_dir:
                    stack.append(relpath)
                    continue
                files += 1
                size += length
                if files > ASK_FILES or size > ASK_BYTES:
                    return FirstSync(files, size, more=True)
    return FirstSync(files, size, more=False)
