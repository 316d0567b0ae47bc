"""`gpubox sweep` and `gpubox sweeps`: start, resume, show, follow and stop a hyperparameter sweep.

A sweep runs detached, like ``up --detach``: :func:`start_sweep` starts its scheduler in the background
(:func:`gpubox.actions.supervisor.start_background`, the same structured event channel as the ``up``
supervisor: its lines, a host key question, ``ready`` or ``failed``), and returns once the scheduler has its
hosts. The scheduler itself is :func:`run_scheduler` (in that background process): the study, the hosts'
lanes, the trials already running adopted, then the loop of :class:`gpubox.train.sweep.scheduler.Scheduler`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox import paths
from gpubox.actions import Say, quiet
from gpubox.actions.env import build_env
from gpubox.actions.supervisor import start_background, stop_on_signals
from gpubox.actions.sync import make_syncer
from gpubox.errors import BadInput, GpuboxError, UsageError
from gpubox.state import open_state
from gpubox.train.multihost import pick_hosts
from gpubox.train.sweep.record import (
    SweepRecord,
    all_records,
    check_sweep_name,
    default_storage_url,
    find_record,
    mark_stop,
    new_record,
    save_record,
    sweep_name_for,
)

if TYPE_CHECKING:
    import optuna

    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.config.sweep import SweepConfig
    from gpubox.remote.connection import AskToPin
    from gpubox.remote.session import HostSession

__all__ = [
    "STORAGE_ENV",
    "Started",
    "follow_sweep",
    "list_sweeps",
    "run_scheduler",
    "stamped",
    "start_sweep",
    "stop_sweep",
    "sweep_costs",
    "sweep_document",
    "sweep_hosts",
    "trial_log_tail",
]

STORAGE_ENV = "GPUBOX_SWEEP_STORAGE"
"""How the storage URL reaches the background scheduler: its environment, not its command line (where any
user of the machine could read a password in it)."""
START_TIMEOUT = 3600.0
"""How long the scheduler may take to get its first host ready (an env build can take many minutes)."""


# ---------------------------------------------------------------------------------------------- lookups


_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} ")


def stamped(text: str) -> str:
    """A line of the scheduler's log: the local time it was said, then the line."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d} {text}"


def _optuna() -> Any:
    from gpubox.train.sweep import study

    study.quiet_optuna()
    return study


def resolve_name(project: ProjectConfig | None, name: str | None) -> str:
    if name:
        return check_sweep_name(name)
    if project is None:
        raise UsageError("name the sweep: `gpubox sweeps` lists them")
    default = sweep_name_for(project.name)
    taken = find_record(default)
    if taken is not None and taken.project_root != str(project.root) and Path(taken.project_root).exists():
        # Another project of the same folder name has it (~/a/ml and ~/b/ml): this one's carries its id.
        return sweep_name_for(f"{project.name}-{project.id}")
    return default


def _storage_for(name: str, record: SweepRecord | None, given: str | None) -> str:
    """The storage URL to use for sweep *name*: the one given (checked against the record's), else the
    record's, else gpubox's own SQLite file."""
    glue = _optuna()
    if given is not None:
        glue.check_storage_url(given)
        if record is not None and glue.without_password(given) != record.storage:
            raise UsageError(
                f"sweep {name} lives in {glue.redact_url(record.storage)}, not {glue.redact_url(given)}: "
                "give another name for a sweep in that storage"
            )
        return given
    return record.storage if record is not None else default_storage_url()


def _open(url: str, *, create: bool = False) -> optuna.storages.RDBStorage | None:
    """The storage at *url*; None for a SQLite file that does not exist yet, unless *create* (a command that
    only reads must not leave an empty database behind)."""
    if url.startswith("sqlite"):
        from sqlalchemy.engine import make_url

        database = Path(make_url(url).database or "")
        if not database.exists():
            if not create:
                return None
            paths.ensure_private_dir(database.parent)
    storage: optuna.storages.RDBStorage = _optuna().open_storage(url)
    return storage


def _held_hosts(hosts: HostsConfig) -> list[HostConfig]:
    with open_state() as state:
        held = [s.host for s in state.supervisors()]
    return [hosts.hosts[name] for name in held if name in hosts.hosts]


def sweep_hosts(hosts: HostsConfig, spec: str | None) -> list[HostConfig]:
    """The hosts a new sweep may use: ``--hosts a,b`` (one or more), else every host gpubox holds up now, else
    the default host (like `gpubox run`). A resumed sweep keeps the hosts it had unless --hosts is given."""
    if spec is not None:
        names = [name.strip() for name in spec.split(",") if name.strip()]
        if not names:
            raise UsageError("--hosts names no host (give one or more, comma-separated)")
        if len(names) == 1:
            return [hosts.get(names[0])]
        return pick_hosts(",".join(names), hosts)
    return _held_hosts(hosts) or [hosts.pick(None)]


# ---------------------------------------------------------------------------------------------- starting


@dataclass(frozen=True)
class Started:
    """What `gpubox sweep` found or did."""

    name: str
    action: str
    """started (its scheduler now runs in the background), running (it already did), finished (nothing left)."""
    record: SweepRecord
    storage: str
    pid: int | None = None
    log: Path | None = None


def start_sweep(
    project: ProjectConfig,
    hosts: HostsConfig,
    *,
    name: str | None = None,
    host_spec: str | None = None,
    trials: int | None = None,
    storage: str | None = None,
    accept_new: bool = False,
    say: Say = quiet,
    ask_to_pin: AskToPin | None = None,
) -> Started:
    """Start or resume the sweep of *project*'s ``[sweep]`` (named *name*, default the project's), unless its
    scheduler already runs or every trial has ended."""
    sweep = project.sweep
    if sweep is None:
        where = project.path or (project.root / "gpubox.toml")
        raise UsageError(f"no [sweep] in {where}: add one (command, metric, direction, [sweep.params])")
    name = resolve_name(project, name)
    if trials is not None and trials < 1:
        raise UsageError("--trials must be 1 or more")
    record = find_record(name)
    if record is not None and record.project_root != str(project.root) and Path(record.project_root).exists():
        raise UsageError(
            f"sweep {name} belongs to the project in {record.project_root}: run it from there, or give this "
            "one another name (`gpubox sweep NAME`)"
        )
    url = _storage_for(name, record, storage)
    if host_spec is not None:
        sweep_hosts(hosts, host_spec)  # a bad --hosts is bad input, whatever the sweep's state
    glue = _optuna()
    opened = _open(url, create=True)
    assert opened is not None
    existing = glue.load_existing(opened, name)
    if existing is not None:
        before = existing.user_attrs.get("gpubox") or {}
        direction = before.get("direction") or existing.direction.name.lower()
        if direction != sweep.direction or before.get("metric", sweep.metric) != sweep.metric:
            raise BadInput(
                f"sweep {name} already measures {direction} {before.get('metric', '?')}; [sweep] now says "
                f"{sweep.direction} {sweep.metric}: give the new sweep another name (`gpubox sweep NEWNAME`)"
            )
        if record is None:
            owner = existing.user_attrs.get("project_root")
            if owner and owner != str(project.root) and Path(str(owner)).exists():
                raise UsageError(
                    f"sweep {name} in {glue.redact_url(url)} belongs to the project in {owner}: give this one "
                    "another name (`gpubox sweep NAME`)"
                )
    if record is not None and record.scheduler_alive():
        return Started(name, "running", record, url, record.pid, Path(record.log) if record.log else None)
    planned = _planned(sweep, existing, trials)
    if existing is not None:
        views = glue.trial_views(existing.get_trials(deepcopy=False))
        mine = record.owner if record is not None else None
        left_running = [v for v in views if v.state == "running" and v.owner == mine]
        if len(glue.counted(views)) >= planned and not left_running:
            if record is None:
                record = new_record(name, glue.without_password(url), str(project.root))
            return Started(name, "finished", record, url)
    if record is None:
        record = new_record(name, glue.without_password(url), str(project.root))
    elif record.project_root != str(project.root):
        # The project folder moved (or was renamed): the sweep follows it.
        record = SweepRecord.from_json({**record.to_json(), "project_root": str(project.root)})
        save_record(record)
    mark_stop(name, wanted=False)
    if host_spec is None and record.hosts and all(name in hosts.hosts for name in record.hosts):
        chosen = [hosts.get(name) for name in record.hosts]  # a resumed sweep keeps its hosts
    else:
        chosen = sweep_hosts(hosts, host_spec)
    arguments = ["sweep", name, "--scheduler", "--hosts", ",".join(h.name for h in chosen)]
    if trials is not None:
        arguments += ["--trials", str(trials)]
    if accept_new:
        arguments.append("--accept-new")
    log_path = paths.ensure_private_dir(paths.state_dir() / "logs") / f"sweep-{name}.log"
    ready = start_background(
        arguments,
        what=f"the scheduler of sweep {name}",
        log_path=log_path,
        say=say,
        ask_to_pin=ask_to_pin,
        cwd=project.root,
        timeout=60.0,
        env={STORAGE_ENV: url},
    )
    return Started(name, "started", find_record(name) or record, url, int(ready["pid"]), log_path)


# --------------------------------------------------------------------------------------------- the scheduler


def _planned(sweep: SweepConfig, study: Any, trials: int | None) -> int:
    """How many trials the sweep runs: --trials now, else the --trials given to it before, else [sweep]."""
    if trials is None and study is not None:
        before = study.user_attrs.get("trials")
        trials = before if isinstance(before, int) and not isinstance(before, bool) else None
    return sweep.planned(trials)


def run_scheduler(
    project: ProjectConfig,
    hosts: HostsConfig,
    name: str,
    *,
    host_names: list[str],
    trials: int | None,
    accept_new: bool,
    say: Say,
    ask_to_pin: AskToPin | None,
    on_ready: Callable[[int, str], None],
) -> str:
    """The background scheduler of sweep *name* (this process): returns how it ended (finished, failed,
    stopped, interrupted). *on_ready* hears (pid, log path) once a host can take trials."""
    from gpubox.remote.session import connect_host
    from gpubox.train.sweep.lane import Lane
    from gpubox.train.sweep.scheduler import Scheduler

    sweep = project.sweep
    if sweep is None:
        raise UsageError("no [sweep] in gpubox.toml")
    record = find_record(name)
    if record is None:
        raise UsageError(f"no sweep {name} on this machine (`gpubox sweep` starts one)")
    url = os.environ.get(STORAGE_ENV) or record.storage
    glue = _optuna()
    opened = _open(url, create=True)
    assert opened is not None
    study, _made = glue.create_or_load(opened, name, sweep, str(project.root))
    chosen = [hosts.get(n) for n in host_names]
    log = str(paths.state_dir() / "logs" / f"sweep-{name}.log")
    record = record.running_as(os.getpid(), log, tuple(h.name for h in chosen))
    save_record(record)

    def connect(host: HostConfig) -> HostSession:
        return connect_host(
            host,
            project,
            accept_new=accept_new,
            ask=ask_to_pin,
            probe=False,
            launch=host.spec.runs_own_sshd,
            folder="claim",
            ride=False,  # a lane holds its host for the whole sweep, whoever else holds it
        )

    def prepare(session: HostSession, host: HostConfig) -> str | None:
        report = make_syncer(session, project, host).full(allow_mass_delete=False)
        if report.sent or report.deleted:
            say(f"  ✓ {host.name}: synced {report.summary()}")
        return build_env(session, project, say=say)

    def lane(host: HostConfig, accepts_new: bool = True) -> Lane:
        return Lane(
            host,
            connect=connect,
            prepare=prepare,
            per_gpu=sweep.per_gpu,
            say=say,
            accepts_new=accepts_new,
            outputs=project.sync.outputs,
        )

    def lane_for(host_name: str) -> Lane | None:
        host = hosts.hosts.get(host_name)
        return None if host is None else lane(host, accepts_new=False)

    planned = _planned(sweep, study, trials)
    if trials is not None:
        study.set_user_attr("trials", trials)
    scheduler = Scheduler(
        study, sweep, name=name, owner=record.owner, lanes=[lane(h) for h in chosen], planned=planned, say=say
    )
    stop = threading.Event()
    outcome = "interrupted"
    study.set_user_attr("state", "running")
    study.set_user_attr("reason", None)
    try:
        with stop_on_signals(stop):
            views = glue.trial_views(study.get_trials(deepcopy=False))
            ended = sum(1 for view in views if view.counts and view.ended)
            say(
                f"sweep {name}: {sweep.direction} {sweep.metric}, {sweep.sampler}, {planned} trials"
                f"{f' ({ended} ended before)' if ended else ''} on {', '.join(host_names)}"
            )
            scheduler.adopt(lane_for)
            again = scheduler.requeue_stopped()
            if again:
                say(f"  · {again} trial{'s' if again != 1 else ''} stopped before go again")
            scheduler.start_up(START_TIMEOUT)
            on_ready(os.getpid(), log)
            outcome = scheduler.run(stop.is_set)
            if outcome == "interrupted" and record.stop_requested():
                left = scheduler.stop_trials()
                outcome = "stopped"
                if left:
                    say(
                        f"  ! trials {', '.join(map(str, left))} could not be stopped yet (their hosts did not answer)"
                    )
    except BaseException as exc:
        study.set_user_attr("state", "failed" if isinstance(exc, GpuboxError) else "interrupted")
        study.set_user_attr("reason", str(exc))
        raise
    finally:
        scheduler.close()
        latest = find_record(name)
        if latest is not None and latest.pid == os.getpid():
            save_record(SweepRecord.from_json({**latest.to_json(), "pid": None, "token": None}))
    reason = scheduler.halt
    if outcome == "stopped":
        reason = "stopped with `gpubox sweep --stop`"
    elif outcome == "interrupted":
        reason = "its scheduler was ended (the running trials go on); `gpubox sweep` resumes it"
    study.set_user_attr("state", outcome)
    study.set_user_attr("reason", reason)
    say(f"sweep {name} {outcome}" + (f": {reason}" if reason else ""))
    return outcome


# --------------------------------------------------------------------------------------------- reading


def _study_for(name: str, storage: str | None) -> tuple[Any, SweepRecord | None, str]:
    record = find_record(name)
    url = _storage_for(name, record, storage)
    opened = _open(url)
    study = None if opened is None else _optuna().load_existing(opened, name)
    if study is None:
        raise UsageError(f"no sweep {name} in {_optuna().redact_url(url)} (`gpubox sweeps` lists them)")
    return study, record, url


def sweep_document(name: str, *, storage: str | None = None) -> dict[str, Any]:
    """`gpubox sweep NAME --json`: the sweep, every trial in number order, the best one."""
    study, record, url = _study_for(check_sweep_name(name), storage)
    alive = record.scheduler_alive() if record is not None else None
    document: dict[str, Any] = _optuna().sweep_document(study, scheduler_alive=alive, storage_url=url)
    if record is not None:
        document["pid"] = record.pid if alive else None
        document["log"] = record.log
    return document


def list_sweeps(*, storage: str | None = None) -> list[dict[str, Any]]:
    """Every sweep this machine started, and every other study in the storage (gpubox's own, or *storage*)."""
    glue = _optuna()
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    urls = [default_storage_url()] + ([storage] if storage else [])
    records = all_records()
    for url in dict.fromkeys([*urls, *(r.storage for r in records)]):
        wanted = [r for r in records if r.storage == url]
        try:
            opened = _open(storage if storage and glue.without_password(storage) == url else url)
            names = [] if opened is None else glue.study_names(opened)
        except GpuboxError as exc:
            for record in wanted:
                rows.append(
                    {
                        "name": record.name,
                        "state": "unknown",
                        "storage": glue.redact_url(url),
                        "error": str(exc),
                    }
                )
                seen.add((url, record.name))
            continue
        for study_name in names:
            mine = next((r for r in wanted if r.name == study_name), None)
            if mine is None and url not in urls:
                continue
            study = glue.load_existing(opened, study_name)
            if study is None:
                continue
            document = glue.sweep_document(
                study, scheduler_alive=mine.scheduler_alive() if mine else None, storage_url=url
            )
            ended = [
                t
                for t in document["trials"]
                if t["state"] in ("complete", "pruned", "failed")
                and t["replaced_by"] is None
                and not t["stopped"]
            ]
            rows.append(
                {
                    "name": study_name,
                    "state": document["state"],
                    "metric": document["metric"],
                    "direction": document["direction"],
                    "trials": len(document["trials"]),
                    "ended": len(ended),
                    "planned": document["planned"],
                    "best": document["best"],
                    "cost_usd": document["cost_usd"],
                    "project_root": document["project_root"],
                    "storage": document["storage"],
                }
            )
            seen.add((url, study_name))
        for record in wanted:
            if (url, record.name) not in seen:
                rows.append({"name": record.name, "state": "not started", "storage": glue.redact_url(url)})
    return sorted(rows, key=lambda row: str(row["name"]))


def sweep_costs() -> list[dict[str, Any]]:
    """For `gpubox cost`: each sweep this machine started, what its trials cost (their share of each host's
    price), and its budget. Nothing, and no Optuna import, when there is no sweep."""
    records = all_records()
    if not records:
        return []
    glue = _optuna()
    found = []
    for record in records:
        try:
            opened = _open(record.storage)
            study = None if opened is None else glue.load_existing(opened, record.name)
        except GpuboxError:
            continue
        if study is None:
            continue
        document = glue.sweep_document(
            study, scheduler_alive=record.scheduler_alive(), storage_url=record.storage
        )
        found.append(
            {
                "name": record.name,
                "state": document["state"],
                "trials": len(document["trials"]),
                "spent_usd": document["cost_usd"],
                "max_cost_usd": document["max_cost_usd"],
            }
        )
    return found


def follow_sweep(
    name: str, *, storage: str | None = None, poll_seconds: float = 1.0, say: Say = quiet
) -> dict[str, Any]:
    """Stay with the sweep until its scheduler ends: *say* hears its log's lines as they come. Returns the
    final document."""
    record = find_record(check_sweep_name(name))
    if record is None or not record.scheduler_alive():
        return sweep_document(name, storage=storage)
    with _tail(Path(record.log) if record.log else None) as lines:
        while True:
            for line in lines():
                say(line)
            latest = find_record(name)
            if latest is None or not latest.scheduler_alive():
                time.sleep(poll_seconds / 4)
                for line in lines():
                    say(line)
                return sweep_document(name, storage=storage)
            time.sleep(poll_seconds)


@contextlib.contextmanager
def _tail(path: Path | None) -> Iterator[Callable[[], list[str]]]:
    """The lines appended to *path* from now on, each time the callable is called."""
    if path is None or not path.exists():
        yield list
        return
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        pending = b""

        def lines() -> list[str]:
            nonlocal pending
            pending += handle.read()
            *complete, pending = pending.split(b"\n")
            return [_STAMP.sub("", line.decode("utf-8", "replace")) for line in complete]

        yield lines


# ---------------------------------------------------------------------------------------------- stopping


@dataclass(frozen=True)
class Stopped:
    name: str
    scheduler_pid: int | None
    stopped: list[tuple[int, str, str]]
    """(trial, host, run) of each trial stopped here (the scheduler reports its own in its log)."""
    unreachable: list[tuple[int, str, str]]
    """Trials still running on hosts that did not answer."""


def stop_sweep(
    project: ProjectConfig, hosts: HostsConfig, name: str, *, storage: str | None = None
) -> Stopped:
    """`gpubox sweep NAME --stop`: no more trials start, the running ones are stopped (by the scheduler when it
    runs, else here), and the sweep is marked stopped."""
    from optuna.trial import TrialState

    from gpubox.remote.session import connect_host
    from gpubox.train.runs import stop_run

    name = check_sweep_name(name)
    study, record, _url = _study_for(name, storage)
    if record is None:
        raise UsageError(f"sweep {name} was not started from this machine; stop it where it runs")
    mark_stop(name)
    pid = record.pid if record.scheduler_alive() else None
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while record.scheduler_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    glue = _optuna()
    stopped: list[tuple[int, str, str]] = []
    unreachable: list[tuple[int, str, str]] = []
    sessions: dict[str, HostSession | None] = {}
    try:
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            view = glue.trial_view(frozen)
            if frozen.state == TrialState.WAITING:
                study.tell(frozen.number, state=TrialState.FAIL)  # a re-ask waiting its turn
                continue
            if view.owner != record.owner:
                continue
            trial = _trial(study, frozen)
            if view.host and view.run and view.host in hosts.hosts:
                if view.host not in sessions:
                    try:
                        sessions[view.host] = connect_host(
                            hosts.get(view.host), project, probe=False, launch=False
                        )
                    except GpuboxError:
                        sessions[view.host] = None
                session = sessions[view.host]
                if session is None:
                    unreachable.append((view.number, view.host, view.run))
                    continue
                with contextlib.suppress(UsageError):
                    run = stop_run(session, view.run, grace_seconds=10.0)
                    trial.set_user_attr("ended_at", run.ended_at)
                    trial.set_user_attr("exit_code", run.exit_code)
                stopped.append((view.number, view.host, view.run))
            trial.set_user_attr("stopped", True)
            trial.set_user_attr("note", "stopped with the sweep")
            study.tell(frozen.number, state=TrialState.FAIL)
    finally:
        for session in sessions.values():
            if session is not None:
                session.close()
    if not unreachable:
        study.set_user_attr("state", "stopped")
        study.set_user_attr("reason", "stopped with `gpubox sweep --stop`")
    return Stopped(name, pid, stopped, unreachable)


def _trial(study: Any, frozen: Any) -> Any:
    import optuna

    return optuna.Trial(study, frozen._trial_id)


def trial_log_tail(
    project: ProjectConfig, hosts: HostsConfig, host: str, run_id: str, lines: int = 400
) -> list[str]:
    """The last *lines* lines of a trial's run log (read from its host; the dashboard's trial log)."""
    from gpubox.remote.agent import calls
    from gpubox.remote.session import connect_host
    from gpubox.train.runs import check_run_id

    check_run_id(run_id)
    window = 1 << 20
    session = connect_host(hosts.get(host), project, probe=False, launch=False)
    try:
        head, _ = calls.run_log(session.agent, run_id=run_id, offset=0, max_bytes=1)
        size = int(head.get("size", 0))
        _, data = calls.run_log(session.agent, run_id=run_id, offset=max(0, size - window), max_bytes=window)
    finally:
        session.close()
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    # A progress bar rewrites its line with \r: show each line as a terminal would have left it.
    shown = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    if shown and not shown[-1]:
        shown.pop()
    return shown[-lines:]
