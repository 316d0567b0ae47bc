"""`gpubox sweep` (start, resume, show, follow, stop a hyperparameter sweep) and `gpubox sweeps` (list them)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.actions import sweep as sweeps
from gpubox.actions.supervisor import EventChannel
from gpubox.cli.output import ask_to_pin, err, load_hosts, load_project, out, print_json
from gpubox.errors import GpuboxError
from gpubox.fmt import columns, format_duration, format_usd, shorten

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig

__all__ = ["cmd_sweep", "cmd_sweeps", "render_sweep"]


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={_value(value)}" for key, value in sorted(params.items()))


def render_sweep(document: Mapping[str, Any]) -> list[str]:
    """The text form of `gpubox sweep NAME --json`."""
    trials: Sequence[Mapping[str, Any]] = document["trials"]
    planned = document.get("planned")
    ended = sum(1 for t in trials if t["state"] in ("complete", "pruned", "failed") and _counts(t))
    running = sum(1 for t in trials if t["state"] == "running")
    state = document["state"] + (f" (pid {document['pid']})" if document.get("pid") else "")
    cost = document.get("cost_usd")
    budget = document.get("max_cost_usd")
    money = "" if cost is None else f" · {format_usd(cost)}" + (f" of {format_usd(budget)}" if budget else "")
    lines = [
        f"sweep {document['name']} · {document['direction']} {document['metric']} · {document.get('sampler')} · "
        f"{ended} ended, {running} running of {planned if planned is not None else '?'} · {state}{money}"
    ]
    if document.get("reason"):
        lines.append(f"  {document['reason']}")
    if trials:
        rows = []
        for trial in trials:
            where = trial["host"] or ""
            if trial["gpu"] is not None:
                where += f" GPU {trial['gpu']}"
            note = trial.get("note") or ""
            if trial["state"] == "failed" and trial.get("last_line"):
                note = f"{note}: {trial['last_line']}" if note else trial["last_line"]
            rows.append(
                [
                    str(trial["number"]),
                    trial["state"],
                    _value(trial["value"]),
                    _params(trial["params"]),
                    where,
                    trial["run"] or "",
                    "" if trial["duration_s"] is None else format_duration(trial["duration_s"]),
                    "" if trial["cost_usd"] is None else format_usd(trial["cost_usd"]),
                    shorten(note, 60),
                ]
            )
        lines += [
            "  " + line
            for line in columns(["#", "STATE", "VALUE", "PARAMS", "HOST", "RUN", "TIME", "COST", ""], rows)
        ]
    best = document.get("best")
    if best:
        lines.append(
            f"  best: trial {best['number']} {document['metric']} {_value(best['value'])} "
            f"({_params(best['params'])}) {best['run'] or ''}".rstrip()
        )
    return lines


def _counts(trial: Mapping[str, Any]) -> bool:
    """Whether a trial counts toward the sweep (not one lost and asked again, not one the user stopped)."""
    return trial.get("replaced_by") is None and not trial.get("stopped")


def _all_good(document: Mapping[str, Any]) -> bool:
    """The sweep ended by itself and every trial that counts finished or was pruned."""
    counted = [t for t in document["trials"] if _counts(t)]
    return document["state"] == "finished" and all(t["state"] in ("complete", "pruned") for t in counted)


def _scheduler(args: argparse.Namespace) -> int:
    """The background scheduler (started by `gpubox sweep`): its lines go up the event channel until its first
    host is ready, then to its log."""
    channel = EventChannel(args.events_fd, args.answers_fd)
    project = load_project()
    ready = False

    def say(text: str) -> None:
        # Once on its own, each line of its log carries the time it was said (`--follow` shows them bare).
        if ready:
            out(sweeps.stamped(text))
        else:
            channel.say(text)

    def on_ready(pid: int, log: str) -> None:
        nonlocal ready
        channel.ready_with(pid=pid, log=log)
        ready = True

    try:
        outcome = sweeps.run_scheduler(
            project,
            load_hosts(project),
            args.name,
            host_names=[name for name in (args.hosts or "").split(",") if name],
            trials=args.trials,
            accept_new=args.accept_new,
            say=say,
            ask_to_pin=channel.ask_to_pin,
            on_ready=on_ready,
        )
    except GpuboxError as exc:
        channel.failed(exc)
        raise
    except Exception as exc:
        channel.failed(GpuboxError(f"internal error in the scheduler: {type(exc).__name__}: {exc}"))
        raise
    finally:
        channel.close()
    return 0 if outcome in ("finished", "stopped", "interrupted") else 1


def _print(document: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(document)
    else:
        for line in render_sweep(document):
            out(line)


def _stop(args: argparse.Namespace, project: ProjectConfig) -> int:
    say = err if args.json else out
    name = sweeps.resolve_name(project, args.name)
    stopped = sweeps.stop_sweep(project, load_hosts(project), name, storage=args.storage)
    if stopped.scheduler_pid is not None:
        say(f"sweep {name}: its scheduler (pid {stopped.scheduler_pid}) stopped its trials and ended")
    for number, host, run in stopped.stopped:
        say(f"  trial {number}: stopped {run} on {host}")
    for number, host, run in stopped.unreachable:
        say(
            f"  ! trial {number}: {host} did not answer; {run} still runs there (`gpubox sweep {name} --stop` again)"
        )
    _print(sweeps.sweep_document(name, storage=args.storage), args.json)
    return 1 if stopped.unreachable else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.scheduler:
        return _scheduler(args)
    project = load_project()
    if args.stop:
        return _stop(args, project)
    if args.show:
        _print(
            sweeps.sweep_document(sweeps.resolve_name(project, args.name), storage=args.storage), args.json
        )
        return 0
    hosts = load_hosts(project)
    name = sweeps.resolve_name(project, args.name)
    headed = args.json

    def say(text: str) -> None:
        # The heading comes with the first line: a sweep refused before it starts prints only its one error.
        nonlocal headed
        if not headed:
            out(f"gpubox sweep {name}")
            headed = True
        (err if args.json else out)(text)

    started = sweeps.start_sweep(
        project,
        hosts,
        name=name,
        host_spec=args.hosts,
        trials=args.trials,
        storage=args.storage,
        accept_new=args.accept_new,
        say=say,
        ask_to_pin=ask_to_pin(),
    )
    if started.action == "started":
        say(f"  running in the background (pid {started.pid}, log {started.log})")
        if not args.follow:
            say(
                f"  `gpubox sweep {name}` shows it · `--follow` stays with it · `gpubox sweep {name} --stop` stops it"
            )
    elif started.action == "running":
        say(f"  already running (pid {started.pid}, log {started.log})")
    elif (
        project.sweep is not None
        and project.sweep.sampler == "grid"
        and project.sweep.planned(args.trials) == (project.sweep.grid_size())
    ):
        say("  every point of the grid has run; add values to [sweep.params] to run more")
    else:
        say("  every trial has ended; raise `trials` in [sweep] (or give --trials) to run more")
    if args.follow:
        document = sweeps.follow_sweep(name, storage=args.storage, say=say)
    else:
        document = sweeps.sweep_document(name, storage=args.storage)
    _print(document, args.json)
    if args.follow:
        return 0 if _all_good(document) else 1
    return 0


def cmd_sweeps(args: argparse.Namespace) -> int:
    rows = sweeps.list_sweeps(storage=args.storage)
    if args.json:
        print_json({"sweeps": rows})
        return 0
    if not rows:
        out("no sweeps yet: add [sweep] to gpubox.toml, then `gpubox sweep`")
        return 0
    table = []
    for row in rows:
        best = row.get("best")
        table.append(
            [
                row["name"],
                row["state"],
                f"{row.get('ended', 0)}/{row.get('planned') if row.get('planned') is not None else '?'}",
                f"{row.get('direction', '')} {row.get('metric', '')}".strip(),
                "" if not best else f"{_value(best['value'])} (#{best['number']})",
                "" if row.get("cost_usd") is None else format_usd(row["cost_usd"]),
                row.get("project_root") or "",
                row.get("error") or "",
            ]
        )
    for line in columns(["NAME", "STATE", "TRIALS", "METRIC", "BEST", "COST", "PROJECT", ""], table):
        out(line)
    return 0
