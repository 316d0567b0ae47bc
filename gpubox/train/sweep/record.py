"""This machine's record of each sweep it started: where its study lives and which process schedules it.

One small JSON file per sweep in gpubox's state folder, ``sweeps/NAME.json``, beside the default study storage
``sweeps/studies.db`` and a ``NAME.stop`` mark when the user asked to stop it. The study itself (trials,
params, values, which run each trial is) lives in Optuna's storage, so another laptop pointed at the same
``--storage`` sees it too; the record only holds what is this machine's: the storage URL without any password
(that stays with the database's own client: ``~/.pgpass``, ``MYSQL_PWD``, or ``--storage`` given again), the
project folder, the scheduler's pid, and an owner id that marks the trials this machine started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gpubox.errors import GpuboxError, UsageError
from gpubox.state.holders import holder_alive, process_token
from gpubox.train.multihost.record import write_atomically

__all__ = [
    "SWEEP_NAME",
    "SweepRecord",
    "all_records",
    "check_sweep_name",
    "default_storage_url",
    "find_record",
    "mark_stop",
    "new_record",
    "save_record",
    "sweep_name_for",
    "sweeps_dir",
]

SWEEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_sweep_name(name: str) -> str:
    if not SWEEP_NAME.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a sweep name: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (at most 63 characters)"
        )
    return name


def sweep_name_for(project_name: str) -> str:
    """The default sweep name: the project's folder name, made into a valid name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", project_name).strip("-._")[:63]
    return name or "sweep"


def sweeps_dir(*, create: bool = False) -> Path:
    """``state/sweeps``; made (private) only by what writes there: a command that only reads changes nothing."""
    from gpubox import paths

    folder = paths.state_dir() / "sweeps"
    return paths.ensure_private_dir(folder) if create else folder


def default_storage_url() -> str:
    """Optuna's RDB storage in gpubox's state folder: a SQLite file, nothing to start."""
    return f"sqlite:///{sweeps_dir() / 'studies.db'}"


@dataclass(frozen=True)
class SweepRecord:
    name: str
    storage: str
    """The study's storage URL, without a password."""
    project_root: str
    owner: str
    """Marks the trials this machine started (user attr ``owner``): only those does it adopt after a restart."""
    created_at: float
    pid: int | None = None
    token: str | None = None
    log: str | None = None
    hosts: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys a newer gpubox wrote, kept as they are."""

    @property
    def path(self) -> Path:
        return sweeps_dir() / f"{self.name}.json"

    def scheduler_alive(self) -> bool:
        return self.pid is not None and holder_alive(self.pid, self.token)

    def stop_requested(self) -> bool:
        return (sweeps_dir() / f"{self.name}.stop").exists()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "name": self.name,
            "storage": self.storage,
            "project_root": self.project_root,
            "owner": self.owner,
            "created_at": self.created_at,
            "pid": self.pid,
            "token": self.token,
            "log": self.log,
            "hosts": list(self.hosts),
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> SweepRecord:
        known = {"name", "storage", "project_root", "owner", "created_at", "pid", "token", "log", "hosts"}
        pid = row.get("pid")
        return cls(
            name=str(row["name"]),
            storage=str(row["storage"]),
            project_root=str(row.get("project_root", "")),
            owner=str(row["owner"]),
            created_at=float(row.get("created_at", 0.0)),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            token=row.get("token") if isinstance(row.get("token"), str) else None,
            log=row.get("log") if isinstance(row.get("log"), str) else None,
            hosts=tuple(str(h) for h in row.get("hosts") or ()),
            extra={k: v for k, v in row.items() if k not in known},
        )

    def running_as(self, pid: int, log: str | None, hosts: tuple[str, ...]) -> SweepRecord:
        """This record with *pid* (this process) as its scheduler."""
        return replace(self, pid=pid, token=process_token(pid), log=log, hosts=hosts)


def find_record(name: str) -> SweepRecord | None:
    path = sweeps_dir() / f"{check_sweep_name(name)}.json"
    try:
        return SweepRecord.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GpuboxError(f"the record of sweep {name} ({path}) is damaged: {exc}") from None


def new_record(name: str, storage: str, project_root: str) -> SweepRecord:
    record = SweepRecord(name, storage, project_root, uuid.uuid4().hex, time.time())
    save_record(record)
    return record


def save_record(record: SweepRecord) -> None:
    sweeps_dir(create=True)
    write_atomically(record.path, json.dumps(record.to_json(), indent=1))
    with contextlib.suppress(OSError):
        os.chmod(record.path, 0o600)


def all_records() -> list[SweepRecord]:
    records = []
    for path in sorted(sweeps_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            records.append(SweepRecord.from_json(json.loads(path.read_text())))
    return records


def mark_stop(name: str, wanted: bool = True) -> None:
    """Ask the scheduler of *name* to stop (it looks for the mark when it is told to end), or clear the ask."""
    path = sweeps_dir() / f"{name}.stop"
    if wanted:
        sweeps_dir(create=True)
        write_atomically(path, repr(time.time()))
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
