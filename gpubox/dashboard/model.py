"""The dashboard's model: state reads and host samples merged into :class:`DashboardSnapshot` records and
:class:`Event` notifications (a run ended, a budget threshold, autostop about to fire, a sync conflict, a host
lost).

It keeps the short GPU history the sparklines draw, the selected run's log lines and its curves, and says what
the next poll of a host should ask for (:meth:`Dashboard.request_for`). The model is used from one thread (the
UI's); the readers (:mod:`gpubox.dashboard.read`, :mod:`gpubox.dashboard.poller`) run anywhere.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.actions.runmoney import money_lines
from gpubox.dashboard.poller import PollRequest
from gpubox.dashboard.read import HostSample, StateSample
from gpubox.dashboard.views import (
    Curve,
    DashboardSnapshot,
    Event,
    GpuView,
    HostView,
    RunView,
    SelectedRun,
    SyncView,
    as_float,
    as_int,
)
from gpubox.remote.gpu.readings import GpuReading
from gpubox.sync.follow import behind_text

if TYPE_CHECKING:
    from gpubox.config import HostsConfig, ProjectConfig
    from gpubox.state import BillingInterval
    from gpubox.train.runs import RunInfo

__all__ = ["AUTOSTOP_WARN_SECONDS", "HISTORY", "LOG_LINES", "Dashboard"]

HISTORY = 120
"""GPU samples kept per GPU for the sparklines (a few minutes at the default refresh)."""
LOG_LINES = 5000
"""Lines of the selected run's log the dashboard keeps."""
AUTOSTOP_WARN_SECONDS = 60.0
DEADLINE_WARN_MINUTES = (30, 5)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|[\x00-\x08\x0b\x0c\x0e-\x1f]")


class _Log:
    """The selected run's log as lines: complete lines kept (at most :data:`LOG_LINES`), the partial last one
    held back until its newline arrives."""

    def __init__(self) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.total = 0
        self.partial = b""
        self.offset: int | None = None
        self.size = 0
        self.first = 0

    def feed(self, offset: int, data: bytes, size: int) -> None:
        if self.offset is None:
            self.first = 0
        elif offset != self.offset:
            # The host sent from elsewhere (the log was replaced or we asked past its end): start over there.
            self.lines.clear()
            self.total = 0
            self.partial = b""
        self.size = size
        text = self.partial + data
        complete = text.rfind(b"\n") + 1
        self.partial = text[complete:]
        for raw in text[:complete].split(b"\n")[:-1]:
            line = raw.decode("utf-8", "replace")
            if "\r" in line:
                line = line.rstrip("\r").rsplit("\r", 1)[
                    -1
                ]  # a progress bar redrawn in place: its last state
            self.lines.append(_ANSI.sub("", line))
            self.total += 1
        self.offset = offset + len(data)

    @property
    def dropped(self) -> int:
        return self.total - len(self.lines)


class Dashboard:
    """The dashboard's model: feed it state reads and host samples, take snapshots and events."""

    def __init__(
        self,
        hosts: HostsConfig,
        project: ProjectConfig,
        *,
        clock: Callable[[], float] = time.time,
        history: int = HISTORY,
    ) -> None:
        self.hosts = hosts
        self.project = project
        self.clock = clock
        self.history = history
        self.state: StateSample | None = None
        self.samples: dict[str, HostSample] = {}
        self._runs: dict[str, tuple[RunInfo, ...]] = {}
        self._others: dict[str, frozenset[str]] = {}
        self._gpu_history: dict[
            tuple[str, int], tuple[collections.deque[float], collections.deque[float]]
        ] = {}
        self.selected: tuple[str, str] | None = None
        self.selection = 0
        """Counts selection changes, so an answer to a poll asked for before the last one is told apart."""
        self.selected_missing = False
        """The selected run's host answered (since it was selected) without listing it: it is gone."""
        self._log = _Log()
        self._scalars: dict[str, list[tuple[float, float]]] = {}
        self._events: list[Event] = []
        self._finished_views: dict[tuple[str, str, str, float | None, int], RunView] = {}
        self._run_states: dict[str, str] = {}
        self._watching_since: dict[str, float] = {}
        """When each host first answered: runs that end after it are told of."""
        self._alerts_seen: set[tuple[str, int, float]] | None = None
        self._autostop_warned: set[str] = set()
        self._deadline_warned: set[tuple[str, int]] = set()
        self._conflicts: dict[str, int] = {}
        self._sync_errors: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._unreachable: set[str] = set()
        self._overrun_warned: set[tuple[str, str, str]] = set()

    # -- feeding

    def apply_state(self, sample: StateSample) -> None:
        self.state = sample
        alerts = {(scope, threshold, budget) for scope, threshold, budget, _s, _a in sample.alerts}
        if self._alerts_seen is None:
            self._alerts_seen = alerts  # warnings given before the dashboard opened are old news
        for scope, threshold, budget, spent, _at in sample.alerts:
            if (scope, threshold, budget) in self._alerts_seen:
                continue
            self._alerts_seen.add((scope, threshold, budget))
            from gpubox.fmt import format_usd

            whose = "all hosts" if scope == "*" else scope
            self._events.append(
                Event(
                    "budget",
                    f"budget {threshold} %",
                    f"{whose} reached {threshold} % of {format_usd(budget)} ({format_usd(spent)} spent)",
                    "error" if threshold >= 100 else "warning",
                )
            )
        held = {h.name for h in sample.hosts if h.held_by is not None}
        for gone in [name for name in self.samples if name not in held]:
            del self.samples[gone]
            self._runs.pop(gone, None)
            self._unreachable.discard(gone)
        for host in sample.hosts:
            report = host.report or {}
            for row in report.get("runs") or ():
                for text in row.get("warnings") or ():
                    # Once per run and budget, as in the `up` terminal.
                    key = (host.name, str(row.get("id")), str(text).rpartition(" left of ")[2])
                    if key not in self._overrun_warned:
                        self._overrun_warned.add(key)
                        self._events.append(
                            Event("budget", f"cost to finish of {row.get('id')}", text, "warning")
                        )
            sync = report.get("sync") or None
            if sync:
                conflicts = int(sync.get("conflicts") or 0)
                before = self._conflicts.get(host.name, conflicts)
                if conflicts > before:
                    recent = sync.get("recent_conflicts") or []
                    self._events.append(
                        Event(
                            "conflict",
                            f"sync conflict on {host.name}",
                            _conflict_text(str(recent[-1]))
                            if recent
                            else f"{conflicts - before} conflict(s): the host's copies were kept",
                            "warning",
                        )
                    )
                self._conflicts[host.name] = conflicts
                errors = int(sync.get("errors") or 0)
                before = self._sync_errors.get(host.name, errors)
                if errors > before:
                    recent = sync.get("recent_errors") or []
                    self._events.append(
                        Event(
                            "sync-error",
                            f"sync problem on {host.name}",
                            str(recent[-1]) if recent else "see the supervisor's log",
                            "warning",
                        )
                    )
                self._sync_errors[host.name] = errors
                held_now = int(sync.get("held_deletions") or 0)
                if held_now and not self._held.get(host.name):
                    self._events.append(
                        Event(
                            "sync-held",
                            f"{held_now} deletions held back on {host.name}",
                            f"{sync.get('held_reason') or 'they look like a wipe'}; everything else keeps "
                            "syncing. Check the project folder; x lets them go (into the host's trash)",
                            "warning",
                        )
                    )
                self._held[host.name] = held_now
            autostop = report.get("autostop") or None
            remaining = self._autostop_remaining(autostop, sample.at)
            if remaining is not None and remaining <= AUTOSTOP_WARN_SECONDS:
                if host.name not in self._autostop_warned:
                    self._autostop_warned.add(host.name)
                    self._events.append(
                        Event(
                            "autostop",
                            f"{host.name} stops in {int(remaining)} s",
                            f"idle: autostop will {autostop.get('action', 'stop it') if autostop else 'stop it'}"
                            " (start a run or sync a change to keep it)",
                            "warning",
                        )
                    )
            else:
                self._autostop_warned.discard(host.name)
            self._deadline_events(host.name, report.get("guardian") or {}, sample.at)

    def _deadline_events(self, host: str, guardian: Mapping[str, Any], now: float) -> None:
        """max_hours: the guardian stops the host at its deadline whatever it does; warn 30 and 5 minutes
        before (the same moments the guardian warns on the host's terminals)."""
        from gpubox.fmt import format_duration

        deadline = guardian.get("deadline_at")
        if not isinstance(deadline, int | float):
            return
        left = float(deadline) - now
        for minutes in DEADLINE_WARN_MINUTES:
            if 0 < left <= minutes * 60 and (host, minutes) not in self._deadline_warned:
                self._deadline_warned.update((host, m) for m in DEADLINE_WARN_MINUTES if m >= minutes)
                self._events.append(
                    Event(
                        "deadline",
                        f"{host} stops in {format_duration(left)}",
                        f"max_hours = {guardian.get('max_hours')}: its guardian stops it then, whatever it is "
                        "doing (raise max_hours in hosts.toml and `gpubox up` again to keep it longer)",
                        "warning",
                    )
                )
                break

    def apply_host(self, sample: HostSample, *, selection: int | None = None) -> None:
        """Feed one host's refresh; *selection* is :attr:`selection` when it was asked for (its log and curves
        are dropped if another run was selected since)."""
        self.samples[sample.host] = sample
        if not sample.ok:
            if sample.host not in self._unreachable:
                self._unreachable.add(sample.host)
                self._events.append(
                    Event(
                        "unreachable",
                        f"{sample.host} is not answering",
                        f"{sample.error or 'no answer'}; retrying (the other hosts keep updating)",
                        "error",
                    )
                )
            return
        if sample.host in self._unreachable:
            self._unreachable.discard(sample.host)
            self._events.append(Event("reconnected", f"{sample.host} answers again", "reconnected"))
        for gpu in sample.gpus:
            util, memory = self._gpu_history.setdefault(
                (sample.host, gpu.index),
                (collections.deque(maxlen=self.history), collections.deque(maxlen=self.history)),
            )
            if gpu.util_percent is not None:
                util.append(gpu.util_percent)
            if gpu.memory_used_mib is not None and gpu.memory_total_mib:
                memory.append(100.0 * gpu.memory_used_mib / gpu.memory_total_mib)
        self._runs[sample.host] = sample.runs
        self._others[sample.host] = sample.others
        watching_since = self._watching_since.setdefault(sample.host, sample.at)
        for run in sample.runs:
            key = f"{sample.host}/{run.id}"
            before = self._run_states.get(key)
            self._run_states[key] = run.state
            if not run.finished or before in ("succeeded", "failed", "stopped", "lost"):
                continue
            # It ended: while it was seen running, or unseen but after the dashboard started watching (a run
            # that lasted less than a refresh).
            if before is not None or (run.ended_at is not None and run.ended_at >= watching_since):
                self._events.append(_run_event(run))
        current = selection is None or selection == self.selection
        if current and self.selected is not None and self.selected[0] == sample.host:
            self.selected_missing = not any(run.id == self.selected[1] for run in sample.runs)
        if current and self.selected == (sample.host, sample.run):
            self._log.feed(sample.log_offset, sample.log, sample.log_size)
            for tag, (start, points) in sample.scalars.items():
                have = self._scalars.setdefault(tag, [])
                del have[start:]
                have.extend(points)

    def select_run(self, host: str | None, run_id: str | None) -> bool:
        """Follow another run's log and curves; False when it already was the selected one."""
        wanted = (host, run_id) if host is not None and run_id is not None else None
        if wanted == self.selected:
            return False
        self.selected = wanted
        self.selection += 1
        self.selected_missing = False
        self._log = _Log()
        self._scalars = {}
        return True

    def request_for(self, host: str) -> PollRequest:
        if self.selected is None or self.selected[0] != host:
            return PollRequest()
        return PollRequest(
            run=self.selected[1],
            log_offset=self._log.offset,
            scalars={tag: len(points) for tag, points in self._scalars.items()},
        )

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def polled_hosts(self) -> list[str]:
        """The hosts a poller should watch: those a gpubox process holds up."""
        if self.state is None:
            return []
        return [h.name for h in self.state.hosts if h.held_by is not None]

    # -- snapshots

    @staticmethod
    def _autostop_remaining(autostop: Mapping[str, Any] | None, now: float) -> float | None:
        if not autostop or autostop.get("state") != "counting" or autostop.get("stops_at") is None:
            return None
        return max(0.0, float(autostop["stops_at"]) - now)

    def snapshot(self) -> DashboardSnapshot:
        from gpubox.actions.hosts import autostop_text
        from gpubox.cost import budgets_for, host_spend, run_cost

        now = self.clock()
        state = self.state
        if state is None:
            return DashboardSnapshot(at=now, project=self.project.name)
        ledger = [i for h in state.hosts for i in h.intervals]
        hosts: list[HostView] = []
        runs: list[RunView] = []
        total_spent = 0.0
        for host in state.hosts:
            sample = self.samples.get(host.name)
            config = self.hosts.hosts.get(host.name)
            spend = host_spend(host.intervals, now)
            total_spent += spend.spent_usd
            budget = None
            if config is not None:
                found = budgets_for(config, self.hosts, ledger, now)
                budget = found[0] if found else None
            report = host.report or {}
            autostop = dict(report["autostop"]) if report.get("autostop") else None
            remaining = self._autostop_remaining(autostop, now)
            if autostop is not None and autostop.get("stops_at") is not None:
                autostop["remaining_seconds"] = max(0.0, float(autostop["stops_at"]) - now)
            if host.held_by is None:
                phase = "stopped" if host.stopped_instance else "down"
            elif sample is None:
                phase = "connecting"
            elif not sample.ok:
                phase = "unreachable"
            else:
                phase = "up"
            gpus: tuple[GpuView, ...] = ()
            if sample is not None and sample.ok:
                gpus = tuple(self._gpu_view(host.name, g) for g in sample.gpus)
            elif sample is not None:
                gpus = self._last_gpus(host.name)
            hosts.append(
                HostView(
                    **{
                        **host.facts(),
                        "tunnels": host.tunnels if host.held_by is not None else (),
                    },
                    state=phase,
                    gpus=gpus,
                    up_seconds=None if host.held_since is None else max(0.0, now - host.held_since),
                    spent_usd=spend.spent_usd,
                    budget_usd=budget.budget_usd if budget else None,
                    budget_percent=budget.percent if budget else None,
                    budget_scope=budget.scope if budget else None,
                    autostop_text=autostop_text(autostop, host.autostop_minutes) if host.held_by else "",
                    autostop_seconds=remaining,
                    autostop_state=autostop.get("state") if autostop else None,
                    unreachable_since=sample.unreachable_since if sample is not None else None,
                    problem=sample.error if sample is not None and not sample.ok else None,
                    sync=SyncView.from_report(report["sync"]) if report.get("sync") else None,
                    outputs_text=behind_text(report.get("outputs"), now),
                    run_money=tuple(
                        line.removeprefix("run       ") for line in money_lines(report.get("runs"))
                    ),
                    sampled_at=sample.at if sample is not None else None,
                )
            )
            others = self._others.get(host.name, frozenset())
            for run in self._runs.get(host.name, ()):
                mine = run.id not in others
                if run.finished:
                    # An ended run's row never changes: build it once (a host may list hundreds).
                    key = (host.name, run.id, run.state, run.ended_at, len(host.intervals))
                    view = self._finished_views.get(key)
                    if view is None:
                        view = self._run_view(run, host.intervals, now, run_cost, mine)
                        self._finished_views[key] = view
                    runs.append(view)
                else:
                    runs.append(self._run_view(run, host.intervals, now, run_cost, mine))
        selected = None
        if self.selected is not None:
            host_name, run_id = self.selected
            shown = next((r for r in runs if r.host == host_name and r.id == run_id), None)
            selected = SelectedRun(
                host=host_name,
                run_id=run_id,
                command=shown.command if shown else "",
                state=shown.state if shown else "unknown",
                lines=tuple(self._log.lines),
                first_line=self._log.dropped,
                log_bytes=self._log.size,
                curves=tuple(Curve(tag, tuple(points)) for tag, points in sorted(self._scalars.items())),
            )
        return DashboardSnapshot(
            at=now,
            project=self.project.name,
            hosts=tuple(hosts),
            runs=tuple(runs),
            selected=selected,
            total_budget_usd=state.total_budget_usd,
            total_spent_usd=total_spent,
            problems=state.problems,
        )

    def _gpu_view(self, host: str, gpu: GpuReading) -> GpuView:
        util, memory = self._gpu_history.get((host, gpu.index), ((), ()))
        return GpuView(
            index=gpu.index,
            name=gpu.name,
            util_percent=gpu.util_percent,
            memory_used_mib=gpu.memory_used_mib,
            memory_total_mib=gpu.memory_total_mib,
            util_history=tuple(util),
            memory_history=tuple(memory),
        )

    def _last_gpus(self, host: str) -> tuple[GpuView, ...]:
        """While a host does not answer: its GPUs with their history, but no current figure."""
        return tuple(
            GpuView(index, "", None, None, None, tuple(util), tuple(memory))
            for (name, index), (util, memory) in sorted(self._gpu_history.items())
            if name == host
        )

    @staticmethod
    def _run_view(
        run: RunInfo,
        intervals: Sequence[BillingInterval],
        now: float,
        run_cost: Callable[..., Any],
        mine: bool = True,
    ) -> RunView:
        progress = run.progress or {}
        metrics = progress.get("metrics") or {}
        cost = None
        estimate = False
        if run.started_at is not None:
            priced = run_cost(
                run.started_at, run.ended_at if run.ended_at is not None else now, {run.host: intervals}
            )
            cost = priced.total_usd
            estimate = priced.estimate
        eta = as_float(progress.get("eta_seconds"))
        rate = next((i.price_per_hour for i in reversed(intervals) if i.price_per_hour is not None), None)
        to_finish = None if run.finished or eta is None or not rate else rate * eta / 3600.0
        return RunView(
            host=run.host,
            id=run.id,
            command=run.command,
            state=run.state,
            name=run.name,
            started_at=run.started_at,
            ended_at=run.ended_at,
            exit_code=run.exit_code,
            elapsed_seconds=run.duration(now),
            cost_usd=cost if intervals else None,
            cost_estimate=estimate,
            cost_to_finish_usd=to_finish,
            epoch=as_int(progress.get("epoch")),
            epochs=as_int(progress.get("epochs")),
            eta_seconds=eta,
            loss=as_float(metrics.get("loss")),
            metric=_metric(metrics),
            mine=mine,
        )


def _conflict_text(entry: str) -> str:
    """``notes.txt -> notes.txt.gpubox-conflict-…`` (as sync reports it) in words."""
    path, arrow, kept = entry.partition(" -> ")
    if not arrow:
        return f"the host's copy was kept as {entry}"
    return f"{path} changed on the host and here: the host's copy was kept as {kept}"


def _run_event(run: RunInfo) -> Event:
    from gpubox.fmt import format_duration

    took = format_duration(run.duration() or 0)
    if run.state == "succeeded":
        return Event("run-succeeded", f"{run.id} finished", f"{run.command} on {run.host} ({took})")
    if run.state == "stopped":
        return Event("run-stopped", f"{run.id} stopped", f"{run.command} on {run.host} ({took})", "warning")
    code = "" if run.exit_code is None else f" with exit code {run.exit_code}"
    return Event(
        "run-failed", f"{run.id} {run.state}{code}", f"{run.command} on {run.host} ({took})", "error"
    )


def _metric(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    names = [k for k in metrics if "loss" not in k and not k.startswith("val_")]
    if not names:
        return None
    name = "accuracy" if "accuracy" in names else sorted(names)[0]
    value = as_float(metrics.get(name))
    return None if value is None else (name, value)
