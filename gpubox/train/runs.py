"""Runs: commands started on the host in their own session, detached, that outlive gpubox and the link.

The host is the source of truth: each run has a folder ``~/.gpubox/runs/<id>/`` holding its spec, its combined
log, the pid, start and end times and the exit code, written by a small waiter process the agent forks into a
session of its own (``setsid``). The local state database only caches what the host said, so any gpubox process (or another laptop)
can reattach.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.errors import (
    AgentError,
    AuthenticationFailed,
    HostKeyChanged,
    HostKeyUnknown,
    RemoteError,
    UsageError,
)
from gpubox.record import record
from gpubox.remote.agent import calls

if TYPE_CHECKING:
    from gpubox.remote.session import HostSession

__all__ = ["RunInfo", "check_run_ref", "follow_log", "list_runs", "run_env", "start_run", "stop_run"]

RUN_ID = re.compile(r"^r-[0-9]{1,9}$")
TERMINAL = ("succeeded", "failed", "stopped", "lost")


@record
class RunInfo:
    id: str
    host: str
    command: str
    state: str
    """starting, running, succeeded, failed, stopped or lost."""
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    log_bytes: int = 0
    name: str | None = None
    progress: dict[str, Any] | None = None
    """While it runs: epoch/epochs (from Keras's "Epoch i/N" lines), metrics (from its TensorBoard event files),
    eta_seconds."""
    cwd: str | None = None
    """Where it started on the host."""
    project: str | None = None
    """The id of the project that started it; None for a run from before project ids (its cwd tells)."""
    project_name: str | None = None
    project_folder: str | None = None
    """The folder of the project it ran for, on the host (its cwd may be a subfolder)."""

    def label(self) -> str:
        """``r-7`` or ``r-7 (digits-b)`` with its --name."""
        return f"{self.id} ({self.name})" if self.name else self.id

    def belongs_to(self, project_id: str, folders: Sequence[str]) -> bool:
        """Whether this is a run of the project *project_id*, whose folder on the host is one of *folders*
        (absolute paths): by its project id, or by the folder it ran in (a folder has one owner at a time, so
        the runs of a folder taken over, and those from before project ids, go with it)."""
        if self.project == project_id:
            return True
        place = self.project_folder or self.cwd
        if not place:
            return False
        return any(place == f or place.startswith(f.rstrip("/") + "/") for f in folders if f)

    def progress_text(self, width: int | None = None) -> str:
        """'3/8 · loss 0.2991 · accuracy 0.9109 · ETA 0:00:12', or '' when nothing is known: the epoch, the
        metrics that matter most first (Keras's loss and accuracy, then any other loss, then the rest by name)
        and the ETA. Within *width* characters: as many metrics as fit, the ETA left out before the first
        metric is, which is cut short rather than left out (all of them are in ``runs --json``); without a
        width, the first four."""
        if not self.progress:
            return ""
        from gpubox.fmt import format_duration

        head = []
        if "epoch" in self.progress:
            head.append(f"{self.progress['epoch']}/{self.progress['epochs']}")
        tail = []
        if "eta_seconds" in self.progress:
            tail.append(f"ETA {format_duration(self.progress['eta_seconds'])}")
        metrics = self.progress.get("metrics") or {}
        parts = [
            f"{key} {metrics[key]:.4g}" if isinstance(metrics[key], int | float) else f"{key} {metrics[key]}"
            for key in sorted(metrics, key=_metric_rank)
        ]
        if width is None:
            return " · ".join([*head, *parts[:4], *tail])

        def fits(*chosen: str) -> bool:
            return len(" · ".join(chosen)) <= width

        shown: list[str] = []
        for part in parts:
            if not fits(*head, *shown, part, *tail):
                if shown:
                    break
                tail = []  # the most important metric matters more than the ETA (and is cut if need be)
            shown.append(part)
        text = " · ".join([*head, *shown, *tail])
        return text if len(text) <= width else text[: max(0, width - 1)] + "…"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    def duration(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else (now if now is not None else time.time())
        return max(0.0, end - self.started_at)

    @classmethod
    def from_agent(cls, host: str, row: Any) -> RunInfo:
        """A run as the agent describes it; a record that does not look like one is an AgentError."""

        def number(value: Any) -> float | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(value)
            return float(value)

        try:
            if not isinstance(row, dict) or not RUN_ID.match(str(row["id"])):
                raise ValueError(row)
            exit_code = row.get("exit_code")
            if exit_code is not None and (isinstance(exit_code, bool) or not isinstance(exit_code, int)):
                raise ValueError(exit_code)
            name = row.get("name")
            project: dict[str, Any] = row["project"] if isinstance(row.get("project"), dict) else {}
            cwd = row.get("cwd")
            return cls(
                id=str(row["id"]),
                host=host,
                command=str(row.get("command", "")),
                state=str(row.get("state", "lost")),
                started_at=number(row.get("started_at")),
                ended_at=number(row.get("ended_at")),
                exit_code=exit_code,
                log_bytes=int(row.get("log_bytes", 0)),
                name=None if name is None else str(name),
                progress=row.get("progress") if isinstance(row.get("progress"), dict) else None,
                cwd=cwd if isinstance(cwd, str) else None,
                project=project.get("id") if isinstance(project.get("id"), str) else None,
                project_name=project.get("name") if isinstance(project.get("name"), str) else None,
                project_folder=project.get("folder") if isinstance(project.get("folder"), str) else None,
            )
        except (KeyError, TypeError, ValueError):
            raise AgentError(f"the agent on {host} sent a run record gpubox cannot read") from None


def check_run_id(run_id: str) -> str:
    if not RUN_ID.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id (they look like r-7; `gpubox runs` lists them)")
    return run_id


RUN_NAME = re.compile(r"^[\w .,#:@+=-]{1,200}$")
"""What a ``--name`` label given in place of a run id may look like (no paths, quotes or shell syntax)."""


def check_run_ref(text: str) -> str:
    """A run id, or something that may be a run's ``--name`` label; anything else (a path, shell syntax, an id
    with too many digits) is refused before any host is asked."""
    if RUN_ID.match(text):
        return text
    if re.fullmatch(r"[rm]-[0-9]+", text) or not RUN_NAME.match(text) or text.strip() != text:
        check_run_id(text)
    return text


def run_env(run_id: str, run_dir: str, remote_project: str, outputs_logs: str = "logs") -> dict[str, str]:
    """What every run sees in its environment (TensorBoard finds every run under the project's logs/)."""
    return {
        "GPUBOX_RUN_ID": run_id,
        "GPUBOX_RUN_DIR": run_dir,
        "GPUBOX_TB_DIR": f"{remote_project.rstrip('/')}/{outputs_logs}/{run_id}",
        "PYTHONUNBUFFERED": "1",
    }


def start_run(
    session: HostSession,
    argv: Sequence[str],
    *,
    name: str | None = None,
    extra_env: dict[str, str] | None = None,
    venv: str | None = None,
    subfolder: str = "",
    outputs: Sequence[str] | None = None,
) -> RunInfo:
    """Start *argv* in the host's project folder (its *subfolder*, when given), detached, as a run of the
    session's project; return once the host has recorded it. *outputs* are the project's output folders
    (gpubox.toml's ``[sync] outputs``), where its metrics are looked for."""
    if not argv:
        raise UsageError("nothing to run: give a command after `--`, or set [run] command in gpubox.toml")
    command = argv[0] if len(argv) == 1 else shlex.join(argv)
    result = calls.run_start(
        session.agent,
        project=session.remote_dir,
        shell=command,
        name=name,
        env=dict(extra_env or {}),
        venv=venv,
        owner=session.owner,
        cwd=subfolder or None,
        outputs=output_folders(outputs) if outputs is not None else None,
    )
    return RunInfo.from_agent(session.host.name, result)


_KERAS_FIRST = ("loss", "accuracy", "val_loss", "val_accuracy")


def _metric_rank(name: str) -> tuple[int, int, str]:
    """Keras's loss and accuracy first, then other losses, then the rest; the shorter name (the less nested
    writer) first."""
    if name in _KERAS_FIRST:
        return (0, _KERAS_FIRST.index(name), name)
    return (1 if "loss" in name.lower() else 2, len(name), name)


def output_folders(outputs: Sequence[str]) -> list[str]:
    """The plain folders among gpubox.toml's output patterns (``logs/``, ``results/tb``): where a run's event
    files are looked for; patterns with wildcards are left out."""
    found = []
    for pattern in outputs:
        folder = pattern.strip().strip("/")
        if folder and not any(c in folder for c in "*?[]!") and ".." not in folder.split("/"):
            found.append(folder)
    return found


def list_runs(session: HostSession, ids: Sequence[str] | None = None) -> list[RunInfo]:
    result = calls.run_list(session.agent, ids=list(ids) if ids else None)
    rows = result.get("runs", [])
    if not isinstance(rows, list):
        raise AgentError(f"the agent on {session.host.name} sent a run list gpubox cannot read")
    return [RunInfo.from_agent(session.host.name, row) for row in rows]


def stop_run(session: HostSession, run_id: str, grace_seconds: float = 10.0) -> RunInfo:
    result = calls.run_stop(session.agent, run_id=check_run_id(run_id), grace=grace_seconds)
    return RunInfo.from_agent(session.host.name, result)


def follow_log(
    session_for: Callable[[], HostSession],
    run_id: str,
    *,
    offset: int = 0,
    follow: bool = False,
    poll_seconds: float = 0.2,
    on_gap: Callable[[Exception], None] | None = None,
) -> Iterator[tuple[bytes, RunInfo]]:
    """Yield the run's log from byte *offset* on, in order, never twice; with *follow*, until the run ends.

    *session_for* returns a live session (reconnecting when needed): a dropped link only pauses the stream, and
    it resumes from the last byte received.
    """
    check_run_id(run_id)
    # Poll quickly while output is fresh (the first line of a new run shows at once), back off when quiet.
    delay = 0.01
    while True:
        try:
            session = session_for()
            result, data = calls.run_log(session.agent, run_id=run_id, offset=offset, max_bytes=1 << 20)
        except (RemoteError, HostKeyChanged, HostKeyUnknown, AuthenticationFailed):
            raise  # waiting mends none of these: a changed host key above all is refused at once, always
        except Exception as exc:  # the link dropped: wait for it to come back, keep the offset
            if not follow or on_gap is None:
                raise
            on_gap(exc)
            time.sleep(poll_seconds)
            continue
        info = RunInfo.from_agent(session.host.name, result.get("run"))
        size = result.get("size", offset)
        if isinstance(size, bool) or not isinstance(size, int):
            raise AgentError(f"the agent on {session.host.name} sent a log size gpubox cannot read")
        if data:
            offset += len(data)
            delay = 0.01
            yield data, info
            continue
        if not follow or (info.finished and offset >= size):
            yield b"", info
            return
        time.sleep(delay)
        delay = min(poll_seconds, delay * 1.5)


def local_log_path(state_dir: str, host: str, run_id: str) -> str:
    return os.path.join(state_dir, "runs", host, f"{run_id}.log")
