"""``gpubox.toml``: the project's sync, environment, run and services settings."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox.config import checks
from gpubox.config.reader import Reader
from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.config.sweep import SweepConfig

PROJECT_FILE = "gpubox.toml"
HOSTS_MARKER = "hosts.toml"
PROJECT_ID_LENGTH = 6
DEFAULT_OUTPUTS = ("runs/", "checkpoints/", "logs/", "outputs/")


# --------------------------------------------------------------------------------------------------- objects


@record
class SyncConfig:
    ignore: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    max_file_size_mb: float = 100.0
    wipe_share: float = 0.95
    """Deletions at once of at least this share of the tracked files look like a wipe: held back until confirmed
    (as are deletions leaving the project folder empty, or going with a vanished .git)."""
    wipe_min_files: int = 10
    """...once at least this many files go."""
    max_delete_count: int | None = None
    """An extra brake, off unless set: more deletions than this at once are held back (rsync's --max-delete)."""
    max_delete_share: float | None = None
    """An extra brake, off unless set: deletions of more than this share of the tracked files at once."""
    trash_days: float = 7.0
    """Files sync deleted on the host wait this long in ~/.gpubox/trash before they are pruned."""
    pull_outputs_seconds: float = 15.0
    """While `gpubox up` holds the host, the outputs folders come home every this many seconds (0: only at
    `gpubox pull` and before a stop)."""


@record
class EnvConfig:
    python: str = "python3"
    requirements: str | None = None
    setup: tuple[str, ...] = ()


@record
class RunConfig:
    command: str | None = None
    cwd: str | None = None
    """Where runs start, relative to the project root (default: the subfolder `gpubox run` is called from)."""


@record
class ServiceConfig:
    name: str
    command: str | None
    """None for the built-in jupyter and tensorboard, whose command gpubox knows."""
    port: int
    enabled: bool = True


BUILTIN_SERVICES = {
    "jupyter": ServiceConfig("jupyter", None, 8888),
    "tensorboard": ServiceConfig("tensorboard", None, 6006),
}


@record
class ProjectConfig:
    root: Path
    path: Path | None
    sync: SyncConfig = field(default_factory=SyncConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    run: RunConfig = field(default_factory=RunConfig)
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: dict(BUILTIN_SERVICES))
    found_by: str = "cwd"
    """How the root was found (see :func:`find_project_root`): gpubox.toml, hosts.toml, git, held or cwd."""
    start: Path | None = None
    """The folder the command was started in (None: the root)."""
    sweep: SweepConfig | None = None
    """``[sweep]``: the hyperparameter sweep `gpubox sweep` runs; None when the file has none."""

    @property
    def name(self) -> str:
        return self.root.name or "project"

    @functools.cached_property
    def id(self) -> str:
        """A short id of this project on this machine, stable while the folder stays where it is: from this
        installation's machine id and the root's path (two clones, or two laptops, never share one)."""
        from gpubox import paths
        from gpubox.errors import StateError

        try:
            machine = paths.machine_id()
        except OSError as exc:
            raise StateError(f"cannot keep gpubox's machine id in {paths.state_dir()}: {exc}") from None
        digest = hashlib.sha256(f"{machine}\0{self.root}".encode("utf-8", "surrogateescape"))
        return digest.hexdigest()[:PROJECT_ID_LENGTH]

    @property
    def folder_name(self) -> str:
        """The default name of this project's folder on a host: ``ml-3f9c2a``."""
        return f"{self.name}-{self.id}"

    @property
    def subfolder(self) -> str:
        """Where the command started, relative to the root (``""`` at the root, or outside it)."""
        if self.start is None:
            return ""
        try:
            relative = self.start.relative_to(self.root)
        except ValueError:
            return ""
        return relative.as_posix() if relative.parts else ""


# ----------------------------------------------------------------------------------------------- schema

SYNC_FIELDS: dict[str, checks.Check] = {
    "ignore": checks.string_list,
    "include": checks.string_list,
    "outputs": checks.string_list,
    "max_file_size_mb": checks.number(0, above=True),
    "wipe_share": checks.share,
    "wipe_min_files": checks.integer(0),
    "max_delete_count": checks.integer(0),
    "max_delete_share": checks.share,
    "trash_days": checks.number(0),
    "pull_outputs_seconds": checks.number(0),
}
ENV_FIELDS: dict[str, checks.Check] = {
    "python": checks.no_space_string("a python executable"),
    "requirements": checks.nonempty_string,
    "setup": checks.string_list,
}
RUN_FIELDS: dict[str, checks.Check] = {"command": checks.command, "cwd": checks.relative_folder}
SERVICE_FIELDS: dict[str, checks.Check] = {
    "command": checks.command,
    "port": checks.integer(1, 65535),
    "enabled": checks.boolean,
}


# ------------------------------------------------------------------------------------------ gpubox.toml


FOUND_BY = {
    PROJECT_FILE: "its gpubox.toml",
    HOSTS_MARKER: "its hosts.toml",
    "git": "the root of its git work tree",
    "held": "a gpubox process holds it up",
    "synced": "gpubox has synced it from there before",
    "cwd": "the current folder",
}
"""How each way of finding the root is told to the user."""


def find_project_root(start: Path | None = None, *, held: Iterable[Path] = ()) -> Path:
    """The project root for *start* (default: the current folder); see :func:`locate_project`."""
    return locate_project(start, held=held)[0]


def locate_project(
    start: Path | None = None, *, held: Iterable[Path] = (), synced: Iterable[Path] = ()
) -> tuple[Path, str]:
    """Walk up from *start* like git finds a repository: the nearest folder holding gpubox.toml, else one
    holding hosts.toml, else the root of the enclosing git work tree, else the nearest of *held* (project
    folders a gpubox process holds up) that encloses it, else the nearest folder above it of *synced* (project
    folders gpubox has synced from: without a marker, a subfolder of one is part of it, not a project of its
    own), else *start* itself. Returns (root, how it was found: a key of :data:`FOUND_BY`)."""
    here = (start or Path.cwd()).resolve()
    chain = [here, *here.parents]
    for marker in (PROJECT_FILE, HOSTS_MARKER):
        for folder in chain:
            if (folder / marker).is_file():
                return folder, marker
    for folder in chain:
        if (folder / ".git").exists():
            return folder, "git"
    enclosing = [Path(root) for root in held if Path(root) in chain]
    if enclosing:
        return max(enclosing, key=lambda root: len(root.parts)), "held"
    # Not the home folder or a filesystem's root, synced once on purpose: every folder below would join it.
    too_wide = {Path.home().resolve(), Path(here.anchor)}
    above = [Path(root) for root in synced if Path(root) in chain[1:] and Path(root) not in too_wide]
    if above:
        return max(above, key=lambda root: len(root.parts)), "synced"
    return here, "cwd"


def load_project(
    root: Path | None = None,
    *,
    found_by: str = "cwd",
    start: Path | None = None,
    held: Iterable[Path] = (),
    synced: Iterable[Path] = (),
) -> ProjectConfig:
    """The project *root* (default: found from *start*, the current folder, as :func:`locate_project` says)."""
    if root is None:
        start = (start or Path.cwd()).resolve()
        root, found_by = locate_project(start, held=held, synced=synced)
    elif found_by == "cwd":
        found_by = next((m for m in (PROJECT_FILE, HOSTS_MARKER) if (root / m).is_file()), found_by)
        found_by = "git" if found_by == "cwd" and (root / ".git").exists() else found_by
    path = root / PROJECT_FILE
    if not os.path.lexists(path):
        return ProjectConfig(root=root, path=None, found_by=found_by, start=start)
    reader = Reader(path)
    sections = ("sync", "env", "run", "services", "sweep")
    reader.check_keys(
        (),
        reader.data,
        sections,
        otherwise=" (gpubox.toml has [sync], [env], [run], [services.NAME] and [sweep])",
    )

    def section(name: str, fields: dict[str, checks.Check]) -> dict[str, Any]:
        return reader.values((name,), reader.table((name,), reader.data.get(name, {})), fields)

    sync = SyncConfig(**section("sync", SYNC_FIELDS))
    env = EnvConfig(**section("env", ENV_FIELDS))
    run = RunConfig(**section("run", RUN_FIELDS))
    services = dict(BUILTIN_SERVICES)
    used_ports: dict[int, str] = {}
    for name, raw in reader.table(("services",), reader.data.get("services", {})).items():
        where = ("services", name)
        if not checks.NAME.fullmatch(name):
            raise reader.error(where, f"invalid service name: {checks.NAME_RULE}")
        values = reader.values(where, reader.table(where, raw), SERVICE_FIELDS)
        builtin = BUILTIN_SERVICES.get(name)
        if builtin is None:
            for required in ("command", "port"):
                if required not in values:
                    raise reader.error(where, f'a custom service needs "{required}"')
        base = builtin or ServiceConfig(name, None, 0)
        services[name] = ServiceConfig(
            name=name,
            command=values.get("command", base.command),
            port=values.get("port", base.port),
            enabled=values.get("enabled", base.enabled),
        )
    for name, service in services.items():
        if not service.enabled:
            continue
        other = used_ports.setdefault(service.port, name)
        if other == name:
            continue
        # Blame the service whose port the file sets: a built-in one not mentioned keeps its usual port.
        blamed = name
        if ("services", other, "port") in reader.lines and ("services", name, "port") not in reader.lines:
            blamed, other = other, name
        implicit = other in BUILTIN_SERVICES and ("services", other, "port") not in reader.lines
        by = f'the built-in service "{other}"' if implicit else f'service "{other}"'
        raise reader.error(("services", blamed, "port"), f"port {service.port} is already used by {by}")
    sweep = None
    if "sweep" in reader.data:
        from gpubox.config.sweep import read_sweep  # its schema loads only for a project that has one

        sweep = read_sweep(reader, reader.data["sweep"])
    return ProjectConfig(
        root=root,
        path=path,
        sync=sync,
        env=env,
        run=run,
        services=services,
        found_by=found_by,
        start=start,
        sweep=sweep,
    )
