"""``gpubox.toml``: the project's sync, environment, run and services settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpubox.config import checks
from gpubox.config.reader import Reader
from gpubox.config.sweep import SweepConfig, read_sweep

PROJECT_FILE = "gpubox.toml"
DEFAULT_OUTPUTS = ("runs/", "checkpoints/", "logs/", "outputs/")


# --------------------------------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class SyncConfig:
    ignore: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    max_file_size_mb: float = 100.0
    max_delete_count: int = 1000
    """A batch deleting more tracked files than this pauses and asks (like rsync's --max-delete)."""
    max_delete_share: float = 0.5
    """...as does one deleting more than this share of them (once more than 10 files go)."""
    trash_days: float = 7.0
    """Files sync deleted on the host wait this long in ~/.gpubox/trash before they are pruned."""


@dataclass(frozen=True)
class EnvConfig:
    python: str = "python3"
    requirements: str | None = None
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunConfig:
    command: str | None = None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ProjectConfig:
    root: Path
    path: Path | None
    sync: SyncConfig = field(default_factory=SyncConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    run: RunConfig = field(default_factory=RunConfig)
    services: Mapping[str, ServiceConfig] = field(default_factory=lambda: dict(BUILTIN_SERVICES))
    sweep: SweepConfig | None = None
    """``[sweep]``: the hyperparameter sweep `gpubox sweep` runs; None when the file has none."""

    @property
    def name(self) -> str:
        return self.root.name or "project"


# ----------------------------------------------------------------------------------------------- schema

SYNC_FIELDS: dict[str, checks.Check] = {
    "ignore": checks.string_list,
    "include": checks.string_list,
    "outputs": checks.string_list,
    "max_file_size_mb": checks.number(0, above=True),
    "max_delete_count": checks.integer(0),
    "max_delete_share": checks.share,
    "trash_days": checks.number(0),
}
ENV_FIELDS: dict[str, checks.Check] = {
    "python": checks.no_space_string("a python executable"),
    "requirements": checks.nonempty_string,
    "setup": checks.string_list,
}
RUN_FIELDS: dict[str, checks.Check] = {"command": checks.command}
SERVICE_FIELDS: dict[str, checks.Check] = {
    "command": checks.command,
    "port": checks.integer(1, 65535),
    "enabled": checks.boolean,
}


# ------------------------------------------------------------------------------------------ gpubox.toml


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder upwards holding gpubox.toml, else the nearest holding .git, else *start*."""
    here = (start or Path.cwd()).resolve()
    chain = [here, *here.parents]
    for marker in (PROJECT_FILE, ".git"):
        for folder in chain:
            if (folder / marker).exists():
                return folder
    return here


def load_project(root: Path | None = None) -> ProjectConfig:
    root = root or find_project_root()
    path = root / PROJECT_FILE
    if not os.path.lexists(path):
        return ProjectConfig(root=root, path=None)
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
    sweep = read_sweep(reader, reader.data["sweep"]) if "sweep" in reader.data else None
    return ProjectConfig(root=root, path=path, sync=sync, env=env, run=run, services=services, sweep=sweep)
