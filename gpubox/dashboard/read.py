"""Reading what the dashboard shows into records: the state database (:class:`StateReader`, never the network)
and one host's answer to the agent's ``dash`` op (:func:`host_sample`).

- :class:`StateReader`: configured hosts, which gpubox process holds each, the supervisor's monitor report
  (autostop countdown, budgets, live sync status), tunnels, the billing ledger and the last probe (for the GPU
  compatibility badge), as a :class:`StateSample`.
- :func:`host_sample`: the GPUs' utilisation and memory, the runs with their progress, and for the selected run
  its new log bytes and new TensorBoard scalar points, as a :class:`HostSample`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpubox.dashboard.views import HostFacts, TunnelView
from gpubox.errors import GpuboxError
from gpubox.remote.gpu.readings import GpuReading, gpu_readings

if TYPE_CHECKING:
    from gpubox.config import HostsConfig, ProjectConfig
    from gpubox.state import BillingInterval, Supervisor
    from gpubox.train.runs import RunInfo

__all__ = ["HostSample", "HostState", "StateReader", "StateSample", "host_sample"]


@dataclass(frozen=True)
class HostState(HostFacts):
    """One host as the state database knows it (no network): its facts, then what the view is made from."""

    held_since: float | None = None
    probed_at: float | None = None
    intervals: tuple[BillingInterval, ...] = ()
    report: Mapping[str, Any] | None = None
    """The supervisor's last monitor report (autostop, budgets, sync)."""
    report_at: float | None = None
    autostop_minutes: float = 0.0
    budget_usd: float | None = None
    """The host's own budget from hosts.toml."""


@dataclass(frozen=True)
class StateSample:
    at: float
    hosts: tuple[HostState, ...]
    alerts: tuple[tuple[str, int, float, float, float], ...] = ()
    total_budget_usd: float | None = None
    problems: tuple[str, ...] = ()


Verdict = tuple[str, str, str, tuple[str, ...]]
"""(GPU label, badge, one-line summary, reasons)."""


class StateReader:
    """Reads everything the dashboard shows that the state database knows; never connects.

    Judging a probe runs the whole GPU check, so each host's verdict is kept until its probe (or the project's
    requirements) changes: the reader lives as long as the dashboard polls with it."""

    def __init__(self, hosts: HostsConfig, project: ProjectConfig) -> None:
        self.hosts = hosts
        self.project = project
        self._verdicts: dict[tuple[str, float | None, str], Verdict] = {}

    def read(self, now: float | None = None) -> StateSample:
        """Everything the dashboard shows that the state database knows: never connects."""
        from gpubox.actions.hosts import service_url
        from gpubox.remote.providers import host_price
        from gpubox.state import MonitorReport, open_state
        from gpubox.train.env import requirements_file

        now = time.time() if now is None else now
        problems: list[str] = []
        try:
            requirements = requirements_file(self.project)
        except GpuboxError as exc:
            requirements = None
            problems.append(str(exc))
        found: list[HostState] = []
        with open_state() as state:
            held: dict[str, Supervisor] = {}
            own: dict[str, Supervisor] = {}
            for holder in state.supervisors():
                held.setdefault(holder.host, holder)  # each host's lead comes first
                if holder.project == self.project.id:
                    own[holder.host] = holder
            ledger = state.billing()
            by_host: dict[str, list[BillingInterval]] = {}
            for interval in ledger:
                by_host.setdefault(interval.host, []).append(interval)
            tunnels = state.live_tunnels()
            names = list(self.hosts.hosts) + sorted(name for name in held if name not in self.hosts.hosts)
            for name in names:
                config = self.hosts.hosts.get(name)
                record = state.host(name)
                supervisor = held.get(name)
                probe = record.probe if record else None
                label, verdict, summary, reasons = self._verdict(
                    name, probe, record.probed_at if record else None, requirements
                )
                intervals = tuple(by_host.get(name, ()))
                rented = state.current_instance(name) if config is not None and config.spec.rents else None
                open_interval = next((i for i in reversed(intervals) if i.open), None)
                amount: float | None
                if open_interval is not None and open_interval.price_per_hour is not None:
                    amount, source, estimate = (
                        open_interval.price_per_hour,
                        open_interval.price_source or "",
                        open_interval.estimate,
                    )
                elif config is not None:
                    price = host_price(config, probe)
                    amount, source, estimate = price.amount, price.source, price.estimate
                else:
                    amount, source, estimate = None, "not in hosts.toml any more", False
                monitor = state.monitor(name) if supervisor is not None else None
                mine = own.get(name)
                if (
                    monitor is not None
                    and mine is not None
                    and supervisor is not None
                    and mine.pid != supervisor.pid
                ):
                    # The lead's report has the host's autostop and budgets; the sync and outputs lines are this project's.
                    ours = state.monitor(name, mine.pid)
                    report = dict(
                        monitor.report,
                        sync=(ours.report.get("sync") if ours else None),
                        outputs=(ours.report.get("outputs") if ours else None),
                        runs=(ours.report.get("runs") if ours else None),
                    )
                    monitor = MonitorReport(monitor.at, report)
                views = tuple(
                    TunnelView(
                        host=name,
                        service=row.service,
                        local_port=row.local_port,
                        url=service_url(config, None, row, show_secret=False)
                        if config is not None
                        else f"http://127.0.0.1:{row.local_port}{row.path}",
                    )
                    for row in tunnels
                    if row.host == name and row.project in (self.project.id, "")
                )
                found.append(
                    HostState(
                        name=name,
                        provider=config.provider if config else (record.provider if record else "?"),
                        configured=config is not None,
                        held_by=supervisor.pid if supervisor else None,
                        held_since=supervisor.started_at if supervisor else None,
                        endpoint=record.endpoint if record else None,
                        probed_at=record.probed_at if record else None,
                        gpu_label=label,
                        verdict=verdict,
                        verdict_text=summary,
                        verdict_reasons=reasons,
                        price_per_hour=amount,
                        price_estimate=estimate,
                        price_source=source,
                        intervals=intervals,
                        report=monitor[1] if monitor else None,
                        report_at=monitor[0] if monitor else None,
                        autostop_minutes=config.autostop_minutes if config else 0.0,
                        budget_usd=config.budget_usd if config else None,
                        tunnels=views,
                        stopped_instance=rented.instance_id
                        if rented is not None and rented.stopped
                        else None,
                    )
                )
            alerts = tuple(state.budget_alerts())
        return StateSample(
            at=now,
            hosts=tuple(found),
            alerts=alerts,
            total_budget_usd=self.hosts.total_budget_usd,
            problems=tuple(problems),
        )

    def _verdict(
        self,
        name: str,
        probe: Mapping[str, Any] | None,
        probed_at: float | None,
        requirements: tuple[str, str] | None,
    ) -> Verdict:
        """(GPU label, badge, one-line summary, reasons) from a probe; cached per probe."""
        key = (name, probed_at, requirements[1] if requirements else "")
        if key in self._verdicts:
            return self._verdicts[key]
        if not probe:
            found: Verdict = ("not probed yet", "unknown", "", ())
        else:
            from gpubox.remote import gpu

            snapshot = gpu.probe_snapshot(probe)
            if snapshot.state == "no_nvidia_smi":
                text = gpu.gpu_line_text(snapshot)
                found = ("none (CPU)", "cpu", text, (text,))
            else:
                try:
                    # The one rule of `gpubox check` (the project's pin, else the newest), and the judgement says which.
                    choice = gpu.choose_framework(None, None, requirements)
                except GpuboxError as exc:
                    found = (gpu.gpu_line_text(snapshot), "unknown", str(exc), (str(exc),))
                else:
                    summary = gpu.summarize(snapshot, choice.release, chosen_by=choice.chosen_by)
                    found = (summary.label, summary.verdict.level, summary.judgement, summary.verdict.reasons)
        self._verdicts[key] = found
        return found


@dataclass(frozen=True)
class HostSample:
    """One refresh of one host."""

    host: str
    at: float
    ok: bool
    gpus: tuple[GpuReading, ...] = ()
    gpu_note: str = ""
    no_gpu: bool = False
    """nvidia-smi is not installed there: a CPU host, and it stays one."""
    runs: tuple[RunInfo, ...] = ()
    others: frozenset[str] = frozenset()
    """Ids of listed runs that belong to other projects (running on the same host)."""
    run: str | None = None
    log_offset: int = 0
    log_size: int = 0
    log: bytes = b""
    scalars: Mapping[str, tuple[int, tuple[tuple[float, float], ...]]] = field(default_factory=dict)
    """tag -> (index of the first point, new points)."""
    error: str | None = None
    unreachable_since: float | None = None
    connecting: bool = False


def host_sample(host: str, at: float, answer: Mapping[str, Any], blob: bytes) -> HostSample:
    """One host's answer to the ``dash`` op (and the selected run's log bytes that came with it) as a sample."""
    from gpubox.train.runs import RunInfo

    readings = gpu_readings(answer.get("nvidia_smi"))
    rows = answer.get("runs") or ()
    runs = tuple(RunInfo.from_agent(host, row) for row in rows)
    others = frozenset(str(row["id"]) for row in rows if row.get("mine") is False)
    run = answer.get("run") or None
    scalars: dict[str, tuple[int, tuple[tuple[float, float], ...]]] = {}
    if run:
        for tag, part in (run.get("scalars") or {}).items():
            points = tuple((float(p[0]), float(p[1])) for p in part.get("points") or ())
            scalars[str(tag)] = (int(part.get("from") or 0), points)
    return HostSample(
        host=host,
        at=at,
        ok=True,
        gpus=readings.gpus,
        gpu_note=readings.note,
        no_gpu=readings.no_gpu,
        runs=runs,
        others=others,
        run=str(run["id"]) if run else None,
        log_offset=int(run.get("offset") or 0) if run else 0,
        log_size=int(run.get("size") or 0) if run else 0,
        log=blob if run else b"",
        scalars=scalars,
    )
