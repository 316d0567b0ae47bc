"""The record of a multi-host run: which ``r-N`` on which host is which worker.

One small JSON file per run in gpubox's local state folder, ``multihost/m-N.json``, and beside it the marks
every view must agree on: ``m-N.stop`` (when the user asked to stop the run) and ``m-N.failure`` (the failure
gpubox saw first). Each part's state, log and exit code stay on its host, which remains the source of truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpubox.errors import GpuboxError, UsageError
from gpubox.record import record

__all__ = [
    "MULTI_ID",
    "MultiRun",
    "Part",
    "all_runs",
    "check_multi_id",
    "first_failure",
    "is_multi_id",
    "load_run",
    "mark_failure",
    "mark_stop_requested",
    "new_run",
    "records_dir",
    "save_run",
    "stop_requested_at",
    "write_atomically",
]

MULTI_ID = re.compile(r"^m-[0-9]{1,9}$")


def is_multi_id(text: str) -> bool:
    return bool(MULTI_ID.match(text))


def check_multi_id(text: str) -> str:
    if not is_multi_id(text):
        raise UsageError(
            f"{text!r} is not a multi-host run id (they look like m-3; `gpubox runs` lists them)"
        )
    return text


@record
class Part:
    """One worker: run ``run_id`` on ``host``, TensorFlow worker ``index``, listening on ``address``."""

    host: str
    run_id: str
    index: int
    address: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "run": self.run_id, "index": self.index, "address": self.address}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Part:
        return cls(str(row["host"]), str(row["run"]), int(row["index"]), str(row["address"]))


@dataclass
class MultiRun:
    id: str
    hosts: tuple[str, ...]
    command: str
    name: str | None
    created_at: float
    cluster: tuple[str, ...] = ()
    """``host:port`` of every worker, in worker order (TF_CONFIG's cluster)."""
    master: str = ""
    """``MASTER_ADDR:MASTER_PORT``."""
    project: str = ""
    """The project folder the run was started from (the watcher reads its hosts.toml)."""
    parts: list[Part] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hosts": list(self.hosts),
            "command": self.command,
            "name": self.name,
            "created_at": self.created_at,
            "cluster": list(self.cluster),
            "master": self.master,
            "project": self.project,
            "parts": [part.to_json() for part in self.parts],
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> MultiRun:
        return cls(
            id=str(row["id"]),
            hosts=tuple(str(h) for h in row["hosts"]),
            command=str(row.get("command", "")),
            name=row.get("name"),
            created_at=float(row.get("created_at", 0.0)),
            cluster=tuple(str(a) for a in row.get("cluster", ())),
            master=str(row.get("master", "")),
            project=str(row.get("project", "")),
            parts=[Part.from_json(p) for p in row.get("parts", ())],
        )


def records_dir() -> Path:
    from gpubox import paths

    return paths.ensure_private_dir(paths.state_dir() / "multihost")


def write_atomically(path: Path, text: str) -> None:
    """Replace *path* with *text* in one step: a reader sees the old file or the new one, never half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_run(hosts: Sequence[str], command: str, name: str | None, project: str) -> MultiRun:
    """A new record with a fresh ``m-N`` id (claimed atomically: two gpubox processes never share one)."""
    folder = records_dir()
    numbers = [int(p.stem[2:]) for p in folder.glob("m-*.json") if p.stem[2:].isdigit()]
    number = max(numbers, default=0)
    while True:
        number += 1
        path = folder / f"m-{number}.json"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            break
        except FileExistsError:
            continue
    run = MultiRun(f"m-{number}", tuple(hosts), command, name, time.time(), project=project)
    save_run(run)
    return run


def save_run(run: MultiRun) -> None:
    write_atomically(records_dir() / f"{run.id}.json", json.dumps(run.to_json(), indent=1))


def load_run(run_id: str) -> MultiRun:
    path = records_dir() / f"{check_multi_id(run_id)}.json"
    try:
        return MultiRun.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise UsageError(f"no multi-host run {run_id} on this machine (`gpubox runs` lists them)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise GpuboxError(f"the record of {run_id} ({path}) is damaged: {exc}") from None


def all_runs() -> list[MultiRun]:
    runs = []
    for path in records_dir().glob("m-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            runs.append(MultiRun.from_json(json.loads(path.read_text())))
    return sorted(runs, key=lambda r: int(r.id[2:]))


def mark_stop_requested(run: MultiRun) -> None:
    """Remember that the user asked to stop the run (a worker dying of its peers' SIGTERM is then no failure)."""
    write_atomically(records_dir() / f"{run.id}.stop", repr(time.time()))


def stop_requested_at(run: MultiRun) -> float | None:
    try:
        return float((records_dir() / f"{run.id}.stop").read_text())
    except (OSError, ValueError):
        return None


def first_failure(run: MultiRun) -> tuple[str, str] | None:
    """(host, part run id) of the failure gpubox saw first, once one was seen."""
    try:
        row = json.loads((records_dir() / f"{run.id}.failure").read_text())
        return str(row["host"]), str(row["run"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_failure(run: MultiRun, part: Part) -> None:
    """Remember which failure gpubox saw first (the first to record one wins), so every view agrees on it.

    The hosts' clocks may disagree, so their end times alone cannot order failures on different hosts.
    """
    path = records_dir() / f"{run.id}.failure"
    with contextlib.suppress(FileExistsError):
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            os.write(handle, json.dumps({"host": part.host, "run": part.run_id}).encode())
        finally:
            os.close(handle)
