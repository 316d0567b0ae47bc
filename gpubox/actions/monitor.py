"""The money and idle monitor of a held host, run from the supervisor's loop.

Each tick it may: write the billing heartbeat (every :data:`LEDGER_BEAT_SECONDS`), check budgets (warnings at
50, 80 and 100 %, each once; at 100 % stop the host unless ``on_budget = "warn"``), beat the host's guardian
and take its verdict on idleness and the deadline, and record what it saw for ``gpubox status`` (the countdown,
the guardian's decisions). Every clock is injectable.

A host with an autostop, a budget or ``max_hours`` has a guardian (the agent's ``guardian`` op, PROTOCOL.md):
a process on the host that applies the same idle rules (the agent file's ``busy_reasons`` and ``IdleTracker``,
which this module imports too) whether or not this laptop is there. While this supervisor leads the host it
sends the guardian what only the laptop knows (open ``gpubox ssh`` shells, the last sync batch) and the
deadline its budgets give, shows the guardian's countdown, and routes every stop through the guardian's lock,
so a host is stopped once whichever side gets there first. Where the guardian cannot act (a rented host, an
ssh host without stop_command) this process acts on its verdict. Without a guardian (an agent error) the
monitor samples the host with the ``idle`` op and keeps its own countdown, as before the guardian.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox.actions.guardian import (
    guarded,
    guardian_key,
    stop_action,
    stop_plan,
)
from gpubox.config import HostConfig, HostsConfig
from gpubox.cost import BillingHold, Budget, budgets_for, elapsed
from gpubox.errors import AgentError, GpuboxError, HostUnreachable, RemoteError
from gpubox.fmt import format_duration
from gpubox.remote.agent import calls

# The idle rules live in the agent's file: the one implementation the laptop and the host's guardian both run.
from gpubox.remote.agent.host import IdleTracker, busy_reasons, sample_seconds, stalled_runs
from gpubox.remote.gpu import gpu_readings
from gpubox.state import open_state

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = [
    "LEDGER_BEAT_SECONDS",
    "HostMonitor",
    "SyncActivity",
    "SyncStatus",
]

LEDGER_BEAT_SECONDS = 2.0
"""How often the billing heartbeat is written: a killed gpubox loses at most this much billed time."""
STOP_COMMAND_TIMEOUT = 120.0
SERVICES_SECONDS = 30.0
"""How often the host's lead supervisor lists every project's services (for `gpubox status`)."""
LAPTOP_GRACE = 120.0
"""How long (beyond two samples) a guardian waits for the present laptop's last pull before a stop."""
DECISIONS_SHOWN = 5
"""How many of the guardian's latest decisions `gpubox status` shows."""


class SyncActivity:
    """When live sync last changed the host (on the :func:`gpubox.cost.elapsed` clock): activity for autostop."""

    def __init__(self, clock: Callable[[], float] = elapsed) -> None:
        self.clock = clock
        self.last: float | None = None

    def touch(self) -> None:
        self.last = self.clock()


class SyncStatus:
    """What live sync has done lately, published in the monitor report for the dashboard's sync line.

    The supervisor's live sync feeds it (:meth:`batch`, :meth:`problem`); *pending* says how many changed paths
    wait for the next batch. Conflicts and errors count up over the supervisor's life; held-back secrets and
    skipped large files are those of the latest pass that looked at them; deletions held back as a wipe are the
    sync engine's own list after each pass; files changed on the host are those the latest pass that read the
    host's listing found."""

    MAX_MESSAGES = 5
    MAX_PATHS = 10

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.watching = False
        self.pending: Callable[[], int] = lambda: 0
        self.batches = 0
        self.last: dict[str, Any] | None = None
        self.conflicts: list[str] = []
        self.held_back: list[str] = []
        self.too_large: dict[str, int] = {}
        self.held_deletions: list[str] = []
        self.held_reason: str | None = None
        self.host_changed: list[str] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.conflict_count = 0
        self.changed_at: float | None = None
        """When a batch last changed the host (wall clock): activity for the lead's autostop."""

    def batch(self, report: Any, why: str) -> None:
        """One pass of the sync engine ended (a :class:`gpubox.sync.engine.SyncReport`)."""
        self.batches += 1
        if report.sent or report.deleted:
            self.changed_at = self.wall()
        self.last = {
            "why": why,
            "files": int(report.sent) + int(report.deleted) + int(report.moved),
            "sent": int(report.sent),
            "deleted": int(report.deleted),
            "moved": int(report.moved),
            "ms": round(float(report.seconds) * 1000.0, 1),
            "at": self.wall(),
        }
        too_large = {str(path): int(size) for path, size in report.too_large}
        if why.split(" ", 1)[0].isdigit() and why.endswith(" changed"):
            # A batch of changed paths only saw those paths: add what it held back.
            self.held_back = sorted(set(self.held_back) | set(report.held_back))
            self.too_large.update(too_large)
        else:
            self.held_back = list(report.held_back)  # a full pass saw everything
            self.too_large = too_large
        self.held_deletions = list(report.held_deletions)
        self.held_reason = report.held_reason
        if report.verified:
            self.host_changed = list(report.host_changed)
        self.conflict_count += len(report.conflicts)
        self.conflicts = (self.conflicts + list(report.conflicts))[-self.MAX_MESSAGES :]
        for error in report.errors:
            self.problem(str(error))

    def problem(self, text: str) -> None:
        self.error_count += 1
        self.errors = [*self.errors, text][-self.MAX_MESSAGES :]

    def document(self) -> dict[str, Any]:
        try:
            pending = int(self.pending())
        except Exception:  # a status line must never take the monitor down
            pending = 0
        return {
            "watching": self.watching,
            "batches": self.batches,
            "changed_at": self.changed_at,
            "last": self.last,
            "pending": pending,
            "conflicts": self.conflict_count,
            "recent_conflicts": list(self.conflicts),
            "held_back": len(self.held_back),
            "held_back_paths": self.held_back[: self.MAX_MESSAGES],
            "too_large": [[path, size] for path, size in sorted(self.too_large.items())[: self.MAX_PATHS]],
            "held_deletions": len(self.held_deletions),
            "held_deletion_paths": self.held_deletions[: self.MAX_PATHS],
            "held_reason": self.held_reason,
            "host_changed": len(self.host_changed),
            "host_changed_paths": self.host_changed[: self.MAX_PATHS],
            "errors": self.error_count,
            "recent_errors": list(self.errors),
        }


class HostMonitor:
    """Ledger heartbeat, budgets and idle autostop for the host *session* is connected to."""

    def __init__(
        self,
        session: HostSession,
        host: HostConfig,
        *,
        stop: threading.Event,
        say: Callable[[str], None],
        billing: BillingHold | None = None,
        hosts: HostsConfig | None = None,
        activity: SyncActivity | None = None,
        sync: SyncStatus | None = None,
        heartbeat_seconds: float = 5.0,
        ledger_seconds: float = LEDGER_BEAT_SECONDS,
        clock: Callable[[], float] = elapsed,
        wall: Callable[[], float] = time.time,
        state_path: Path | None = None,
        project: ProjectConfig | None = None,
    ) -> None:
        self.session = session
        self.host = host
        self.project = project
        """The project this supervisor holds the host for: its runs are "this project's" in the busy line."""
        self.stop = stop
        self.say = say
        self.before_stop: Callable[[], str] | None = None
        """The last pull of the outputs before this laptop stops the host (or lets its guardian): says what it
        did; a GpuboxError raised stops the termination of a rented host (its disk goes with it)."""
        self.published: dict[str, Callable[[], Any]] = {}  # more parts of the report ("outputs", "runs")
        self.billing = billing
        self.hosts = hosts
        self.activity = activity
        self.sync = sync
        self.heartbeat_seconds = heartbeat_seconds
        self.ledger_seconds = ledger_seconds
        self.clock = clock
        self.wall = wall
        self.state_path = state_path
        self.window = host.autostop_minutes * 60.0
        self.autostop = self.window > 0
        self.sample_seconds = sample_seconds(self.window) if self.autostop else heartbeat_seconds
        self.tracker = IdleTracker(self.window, max_gap=3 * self.sample_seconds + heartbeat_seconds)
        now = clock()
        self.next_link = now + heartbeat_seconds
        self.next_ledger = now
        self.next_sample = now
        self.next_budget: float | None = None
        self.budgets: list[Budget] = []
        self.gpu_percent: float | None = None
        self.gpu_note = "not sampled yet"
        self.last_activity: str | None = None
        self.outcome: str | None = None
        """What the monitor did to the host (stopped it, and why); None while it holds it."""
        self.link_lost_since: float | None = None
        """Wall time the link to the host dropped, while the supervisor reconnects (for `status`); None while up."""
        self.services: list[dict[str, Any]] | None = None
        """Every project's services running on the host (the lead looks every SERVICES_SECONDS), for `status`."""
        self.next_services = self.clock()
        self._warned: set[str] = set()
        self.guarded = guarded(host, hosts)
        self.guardian_key = guardian_key(host) if self.guarded else ""
        self.guardian: dict[str, Any] | None = None
        """The guardian's latest answer (its view of the host, its decisions); None before the first beat."""
        self.guardian_offset = 0.0
        """This machine's wall clock minus the host's, at the latest answer (status shows laptop times)."""
        self.guardian_failed: str | None = None
        self._stop_plan: dict[str, Any] | None = None
        self.budget_stop_at: float | None = None
        self.budget_why: str | None = None
        self._decisions_said = 0.0
        self.stalled: list[str] = []
        """Runs alive without progress for stall_minutes, not activity: "run r-3 stalled since 18:03:10"."""

    # -- scheduling

    def wait_seconds(self) -> float:
        """How long the supervisor may sleep before the next tick is due."""
        due = [self.next_link, self.next_ledger]
        if self.autostop or self.guarded:
            due.append(self.next_sample)
            # Once the window has run out without a stop (warned instead), only new samples matter.
            if self.tracker.idle_since is not None and not self._warned & {"autostop", "autostop-failed"}:
                due.append(self.tracker.idle_since + self.window)
        if self.next_budget is not None:
            due.append(self.next_budget)
        return max(0.05, min(due) - self.clock())

    def tick(self, *, check_link: bool = False) -> None:
        """One round; raises HostUnreachable / AgentError when the link is gone (the supervisor reconnects)."""
        now = self.clock()
        try:
            if now >= self.next_ledger or (self.next_budget is not None and now >= self.next_budget):
                self.beat_ledger()
            if self.stop.is_set():
                return
            if self.project is not None and not self.project.root.is_dir():
                # Moved, renamed or deleted: the folder gpubox holds the host for is no project any more.
                self.outcome = (
                    f"the project folder {self.project.root} is gone (moved or deleted); let go of the host"
                )
                self.say(f"! {self.outcome}")
                self.stop.set()
                return
            lead = self._leads()
            if lead and now >= self.next_services:
                self._list_services()
            leading = self.autostop and lead
            watching = self.guarded and lead and self.guardian_failed is None
            if watching and (now >= self.next_sample or check_link):
                self._beat_guardian()
                if self.stop.is_set():
                    return
            elif leading and (now >= self.next_sample or check_link):
                self._sample()
            elif check_link or now >= self.next_link:
                self.session.heartbeat()
                self.next_link = self.clock() + self.heartbeat_seconds
                if self.autostop and not leading:
                    self.tracker.reset()  # another project's supervisor watches the host; start afresh if it goes
            if leading and not watching and self.tracker.due(self.clock()):
                self._stop_host(
                    f"idle for {format_duration(self.tracker.idle_seconds(self.clock()))}", "autostop"
                )
        finally:
            self._report()

    def _leads(self) -> bool:
        """Whether this supervisor is the host's lead, which alone runs its autostop (when several projects hold
        one host, the one holding it longest; the next takes over when it lets go)."""
        with open_state(self.state_path) as state:
            lead = state.supervisor(self.host.name)
        return lead is None or lead.pid == os.getpid()

    def link_lost(self) -> None:
        """Nobody can see the host while the link is down: the idle window starts again once it is back."""
        self.tracker.reset()
        self.gpu_note = "link lost"
        if self.link_lost_since is None:
            self.link_lost_since = self.wall()
        self._report()

    def link_back(self) -> None:
        self.link_lost_since = None
        self._report()

    def sleep(self, seconds: float) -> None:
        """Wait *seconds* (or until stopped), writing the billing heartbeat meanwhile: the host bills on while
        the supervisor reconnects."""
        deadline = self.clock() + seconds
        while not self.stop.is_set():
            left = deadline - self.clock()
            if left <= 0:
                return
            self.stop.wait(min(left, self.ledger_seconds))
            if self.clock() >= self.next_ledger:
                self.beat_ledger()

    # -- money

    def beat_ledger(self) -> None:
        now = self.clock()
        self.next_ledger = now + self.ledger_seconds
        exhausted: list[Budget] = []
        with open_state(self.state_path) as state:
            if self.billing is not None:
                self.billing.beat(state)
            if self.host.budget_usd is None and (self.hosts is None or self.hosts.total_budget_usd is None):
                return
            self.budgets = budgets_for(self.host, self.hosts, state.billing(), self.wall())
            rate = (self.billing.price.amount or 0.0) if self.billing is not None else 0.0
            upcoming = []
            for budget in self.budgets:
                for threshold in budget.reached:
                    if state.record_budget_alert(
                        budget.scope, threshold, budget.budget_usd, budget.spent_usd
                    ):
                        self._budget_warning(budget, threshold)
                if budget.exhausted:
                    exhausted.append(budget)
                seconds = budget.seconds_to_next(rate)
                if seconds is not None:
                    upcoming.append(seconds)
            # Wake when the next threshold is due at this host's rate, not only at the next heartbeat.
            self.next_budget = now + min(upcoming) + 0.01 if upcoming else None
            self._budget_deadline(rate)
        if exhausted and self.host.on_budget == "stop" and self._leads():
            self._stop_host(f"budget: {exhausted[0].describe(100)}", "budget")

    def _budget_deadline(self, rate: float) -> None:
        """When the first budget runs out at this host's rate (wall clock), for the guardian to stop the host
        then if this laptop is gone by then. It assumes this host alone bills from now on: while the laptop is
        here, the exact ledger above stops it (through the guardian) at the same moment or earlier."""
        self.budget_stop_at = self.budget_why = None
        if self.host.on_budget != "stop" or rate <= 0:
            return
        for budget in self.budgets:
            at = self.wall() + max(0.0, budget.budget_usd - budget.spent_usd) * 3600.0 / rate
            if self.budget_stop_at is None or at < self.budget_stop_at:
                self.budget_stop_at = at
                spent = Budget(budget.scope, budget.budget_usd, budget.budget_usd)
                self.budget_why = f"budget: {spent.describe(100)}"

    def _budget_warning(self, budget: Budget, threshold: int) -> None:
        text = f"budget: {budget.describe(threshold)}"
        if threshold < 100:
            self.say(f"! {text}")
        elif self.host.on_budget == "warn":
            self.say(f'! {text}: {self.host.name} keeps running (on_budget = "warn")')
        elif self.host.stop_command or self.host.spec.stops_on_down:
            self.say(f"! {text}: stopping {self.host.name}")
        else:
            self.say(f"! {text}")  # what happens next (it cannot be stopped) follows in its own line

    # -- idle

    def _sample(self) -> None:
        local = self.host.spec.on_this_machine
        # The local host's terminals are the laptop's own: they say nothing about using the host.
        answer = calls.idle(self.session.agent, gpu=True, ttys=not local)
        now = self.clock()
        self.next_sample = now + self.sample_seconds
        self.next_link = now + self.heartbeat_seconds
        self.gpu_percent, self.gpu_note = gpu_readings(answer.get("nvidia_smi")).busiest()

        with open_state(self.state_path) as state:
            shells = len(state.shells(self.host.name))
            others = [r for pid, r in state.monitors(self.host.name).items() if pid != os.getpid()]
        stall = (self.host.stall_minutes or 0) * 60.0
        active = [dict(run) for run in answer.get("active") or []]
        runs, self.stalled = stalled_runs(active, float(answer["time"]), stall)
        reasons = busy_reasons(
            gpu_percent=self.gpu_percent,
            gpu_threshold=self.host.autostop_gpu_percent,
            active_runs=runs if "active" in answer else answer.get("runs"),
            busy_kernels=answer.get("kernels"),
            shells=shells,
        )
        if answer.get("runs") and "active" in answer and self.project is not None:
            reasons[0] = self._runs_reason(list(answer.get("active") or []))
        moments: list[tuple[float, str]] = []
        if self.activity is not None and self.activity.last is not None:
            moments.append((self.activity.last, "sync"))
        for other in others:
            # Another project's live sync on this host is activity too (its wall time, on this clock).
            synced_at = (other.report.get("sync") or {}).get("changed_at")
            if isinstance(synced_at, int | float):
                moments.append((now - max(0.0, self.wall() - synced_at), "sync of another project"))
        typed = [t for t in answer.get("ttys") or [] if isinstance(t.get("idle_seconds"), int | float)]
        if typed:
            latest = min(typed, key=lambda t: float(t["idle_seconds"]))
            moments.append((now - float(latest["idle_seconds"]), f"typing on {latest['tty']}"))
        last = max(moments) if moments else None
        self.last_activity = (
            f"{last[1]} {format_duration(now - last[0])} ago"
            if last is not None and now - last[0] < self.window
            else None
        )
        was_idle = self.tracker.idle_since is not None
        self.tracker.observe(now, reasons, last[0] if last else None)
        if reasons or not was_idle:
            self._warned -= {"autostop", "autostop-failed"}  # a new idle stretch may warn again

    def _list_services(self) -> None:
        """Every project's services on the host, for `gpubox status` (those of projects that let go included)."""
        self.next_services = self.clock() + SERVICES_SECONDS
        listed = calls.service_list(self.session.agent, key=None).get("services", [])
        self.services = [
            {k: row.get(k) for k in ("key", "name", "state", "port", "rss_bytes")}  # never the token
            for row in listed
            if row.get("state") != "stopped"
        ]

    def _runs_reason(self, active: Sequence[Mapping[str, Any]]) -> str:
        """`run r-7 active`, or `2 runs active (1 of other projects)`: whose runs keep the host busy."""
        assert self.project is not None
        mine = [r for r in active if r.get("project") == self.project.id]
        if len(active) == 1:
            run = active[0]
            whose = "" if mine else f" (of project {run.get('project_name') or 'unknown'})"
            return f"run {run.get('id')} active{whose}"
        others = len(active) - len(mine)
        return f"{len(active)} runs active" + (f" ({others} of other projects)" if others else "")

    # -- acting

    def stop_action(self) -> str:
        return stop_action(self.host)

    def _stop_host(self, why: str, reason: str) -> None:
        host = self.host
        laptop_stops = self.guardian_acts() and self.guardian_waits_for_laptop()
        if laptop_stops:
            # This laptop terminates the rented host itself (after its outputs), and says so to the guardian
            # first: the pull sends no beats, and the guardian must not stop the instance under it meanwhile.
            calls.guardian(
                self.session.agent,
                key=self.guardian_key,
                beat=dict(self._laptop_beat(), stopping_until=time.time() - self.guardian_offset + 1800),
            )
        if not self._pull_first(why, reason):
            if laptop_stops:
                # The guardian may stop it again if this laptop goes away.
                calls.guardian(self.session.agent, key=self.guardian_key, beat=self._laptop_beat())
            return
        if self.guardian_acts() and not laptop_stops:
            # The guardian's lock makes this the one stop, whichever side (it or this laptop) asks first.
            acted = calls.guardian(
                self.session.agent, key=self.guardian_key, stop={"reason": reason, "why": why}
            )
            record = acted.get("acted") or {}
            if record.get("ok"):
                self._stopped_by(record)
            elif reason + "-failed" not in self._warned:
                self._warned.add(reason + "-failed")
                self.say(
                    f"! {why}: {record.get('error', 'the guardian did not stop it')}; {host.name} keeps running"
                )
            return
        if self.host.stop_command:
            done = self._run_stop_command(why, reason)
            if done is None:
                return
        elif not host.spec.stops_on_down:
            if reason not in self._warned:
                self._warned.add(reason)
                self.say(
                    f"! {why}: {host.name} is an ssh host without stop_command, so it keeps running (and "
                    f"billing); set stop_command in hosts.toml, or `gpubox down {host.name}`"
                )
            return
        else:
            from gpubox.remote.providers import provider_for

            try:
                done = provider_for(host).terminate(host)
            except GpuboxError as exc:
                if reason not in self._warned:
                    self._warned.add(reason)
                    self.say(f"! {why}, but {host.name} was not terminated: {exc}")
                if laptop_stops:
                    # The guardian may stop it again if this laptop goes away.
                    calls.guardian(self.session.agent, key=self.guardian_key, beat=self._laptop_beat())
                return
        self.outcome = f"{why}: {done}"
        if self.billing is not None:
            self.billing.end_reason = reason
        self.say(f"! {self.outcome}")
        self.stop.set()

    def _pull_first(self, why: str, reason: str) -> bool:
        """The last pull of the outputs before a stop; False when the stop must not happen (a rented host whose
        outputs could not all come home: terminating it deletes its disk)."""
        if self.before_stop is None or (not self.host.spec.stops_on_down and not self.host.stop_command):
            return True
        try:
            self.say(f"{why}: {self.before_stop()}")
        except GpuboxError as exc:
            if not self.host.spec.rents:
                self.say(f"! {why}: {exc}; stopping anyway (what did not come home stays on the host's disk)")
                return True
            if reason not in self._warned:
                self._warned.add(reason)
                self.say(f"! {why}, but {self.host.name} was not terminated: {exc}")
            return False
        return True

    def _stopped_by(self, record: Mapping[str, Any]) -> None:
        """The guardian stopped the host (asked by this laptop, or on its own): end like any stop."""
        self.outcome = f"{record.get('why')}: {record.get('done')}"
        if self.billing is not None:
            self.billing.end_reason = str(record.get("reason") or "autostop")
        self.say(f"! {self.outcome}")
        self.stop.set()

    # -- the guardian

    def guardian_acts(self) -> bool:
        """Whether the guardian stops this host itself (else this laptop acts on its verdict)."""
        return self.guarded and self.guardian_failed is None and self.stop_plan()["kind"] != "none"

    def stop_plan(self) -> dict[str, Any]:
        """How the guardian stops the host (see :func:`gpubox.actions.guardian.stop_plan`)."""
        if self._stop_plan is None:
            self._stop_plan = stop_plan(self.host)
        return self._stop_plan

    def guardian_waits_for_laptop(self) -> bool:
        """A rented host's guardian leaves the stop to this laptop while it is there: the laptop brings the
        outputs home first, then terminates the instance."""
        return bool(self.stop_plan()["kind"] == "provider")

    def guardian_config(self) -> dict[str, Any]:
        host = self.host
        from gpubox.paths import machine_id

        return {
            "host": host.name,
            "laptop": machine_id(),
            "autostop_minutes": host.autostop_minutes,
            "gpu_percent": host.autostop_gpu_percent,
            # The local host's terminals are the laptop's own: they say nothing about using the host.
            "ttys": not host.spec.on_this_machine,
            "max_hours": host.max_hours or 0,
            "stall_minutes": host.stall_minutes or 0,
            "budget_stop_at": None
            if self.budget_stop_at is None
            else self.budget_stop_at - self.guardian_offset,
            "budget_why": self.budget_why,
            "beat_seconds": self.sample_seconds,
            # While this laptop is here, a stop waits for it to pull the outputs first (PROTOCOL.md).
            "laptop_grace": LAPTOP_GRACE + 2 * self.sample_seconds if self.before_stop is not None else 0,
            "stop": self.stop_plan(),
        }

    def _laptop_beat(self) -> dict[str, Any]:
        """What only this laptop knows: its open `gpubox ssh` shells and its last sync batch (host wall time)."""
        now, wall = self.clock(), self.wall()
        with open_state(self.state_path) as state:
            shells = len(state.shells(self.host.name))
            others = [r for pid, r in state.monitors(self.host.name).items() if pid != os.getpid()]
        moments = []
        if self.activity is not None and self.activity.last is not None:
            moments.append(wall - (now - self.activity.last))
        for other in others:
            synced_at = (other.report.get("sync") or {}).get("changed_at")
            if isinstance(synced_at, int | float):
                moments.append(float(synced_at))
        sync_at = max(moments) - self.guardian_offset if moments else None
        return {"shells": shells, "sync_at": sync_at, "pid": os.getpid()}

    def _beat_guardian(self) -> None:
        first = self.guardian is None
        try:
            plan = self.stop_plan()
            answer = calls.guardian(
                self.session.agent,
                key=self.guardian_key,
                config=self.guardian_config(),
                start=first,
                beat=self._laptop_beat(),
                decisions=DECISIONS_SHOWN,
                # self_stop = "key" (the user's consent): the guardian's own copy of the key, sent once.
                api_key=self.host.provider_settings().api_key() if first and plan.get("key_file") else None,
            )
        except RemoteError as exc:
            if isinstance(exc, AgentError) and not str(exc).startswith("agent on "):
                raise  # the link, not the guardian: the supervisor reconnects
            self.guardian_failed = str(exc)
            self.say(f"! no guardian on {self.host.name} ({exc}): this gpubox keeps the watch alone")
            return
        now = self.clock()
        self.next_sample = now + self.sample_seconds
        self.next_link = now + self.heartbeat_seconds
        self.guardian_offset = self.wall() - float(answer.get("time") or self.wall())
        self.guardian = dict(answer)
        if first:
            self._guardian_started(answer)
        for decision in answer.get("decisions") or []:
            at = float(decision.get("at") or 0)
            if at > self._decisions_said and decision.get("event") == "warning":
                self.say(f"! {decision.get('text')}")
            self._decisions_said = max(self._decisions_said, at)
        stopped = answer.get("stopped")
        if stopped and stopped.get("ok"):
            self._stopped_by(stopped)
            return
        status = answer.get("status") or {}
        if not status:
            self.next_sample = now + min(
                self.sample_seconds, 1.0
            )  # a new guardian's first look is moments away
        seen = status.get("autostop") or {}
        if seen:
            self.gpu_percent, self.gpu_note = seen.get("gpu_percent"), str(seen.get("gpu") or "")
            self.last_activity = seen.get("last_activity")
            if seen.get("busy"):
                self._warned -= {"autostop", "autostop-failed"}  # a new idle stretch may warn again
        due = status.get("due")
        # Due and left to this laptop: a rented host's guardian waits for it to stop it (by), a local or ssh host's
        # for it to pull the outputs first (laptop_pulls).
        if due and (not self.guardian_acts() or due.get("laptop_pulls") or due.get("by") == "laptop"):
            self._stop_host(str(due.get("why")), str(due.get("reason")))

    def _guardian_started(self, answer: Mapping[str, Any]) -> None:
        host = self.host
        how = "started" if answer.get("started") else "adopted"
        self.say(f"guardian pid {answer.get('pid')} {how} on {host.name}: {self._watch_words()}")
        previous = answer.get("previous")
        if previous and previous.get("ok"):
            at = float(previous.get("at") or 0) + self.guardian_offset
            with open_state(self.state_path) as state:
                fixed = state.record_guardian_stop(
                    host.name, at, f"{previous.get('reason')} (by the guardian)"
                )
            if fixed:
                self.say(
                    f"! while no gpubox held {host.name}, its guardian stopped it "
                    f"{format_duration(self.wall() - at)} ago ({previous.get('why')}: {previous.get('done')}); "
                    "the ledger counts until then"
                )

    def _watch_words(self) -> str:
        host = self.host
        words = []
        if host.autostop_minutes:
            words.append(f"autostop after {host.autostop_minutes:g} min idle")
        if host.budget_usd is not None or (
            self.hosts is not None and self.hosts.total_budget_usd is not None
        ):
            words.append("the budget")
        if host.max_hours:
            words.append(f"max_hours = {host.max_hours:g}")
        return "keeps " + ", ".join(words or ["watch"]) + " with the laptop gone"

    def _run_stop_command(self, why: str, reason: str) -> str | None:
        command = self.host.stop_command or ""
        try:
            result = self.session.connection.run(command, timeout=STOP_COMMAND_TIMEOUT)
        except (HostUnreachable, AgentError) as exc:
            # `sudo poweroff` often takes the connection down before it can answer.
            return f"ran `{command}` on the host (the connection closed: {exc})"
        if result.ok:
            return f"ran `{command}` on the host"
        if reason + "-failed" not in self._warned:
            self._warned.add(reason + "-failed")
            detail = (result.stderr or result.stdout).decode("utf-8", "replace").strip().splitlines()
            self.say(
                f"! {why}: `{command}` exited with status {result.exit_code}"
                f"{': ' + detail[-1] if detail else ''}; {self.host.name} keeps running"
            )
        return None

    # -- what `gpubox status` shows

    def report(self) -> dict[str, Any]:
        now, wall = self.clock(), self.wall()
        autostop: dict[str, Any] | None = None
        seen = ((self.guardian or {}).get("status") or {}).get("autostop")
        if self.autostop and seen and self.guardian_failed is None:
            autostop = self._guardian_autostop(seen)
        elif self.autostop:
            remaining = self.tracker.remaining(now)
            if self.outcome is not None:
                phase = "stopped"
            elif self.tracker.busy:
                phase = "busy"
            elif remaining is None:
                phase = "starting"
            elif "autostop" in self._warned:
                phase = "warned"
            else:
                phase = "counting"
            autostop = {
                "minutes": self.host.autostop_minutes,
                "gpu_percent_below": self.host.autostop_gpu_percent,
                "state": phase,
                "busy": list(self.tracker.busy),
                "gpu": self.gpu_note,
                "gpu_percent": self.gpu_percent,
                "last_activity": self.last_activity,
                "idle_seconds": round(self.tracker.idle_seconds(now), 1),
                "remaining_seconds": None if remaining is None else round(remaining, 1),
                "stops_at": None if remaining is None else wall + remaining,
                "action": self.stop_action(),
                "stalled": list(self.stalled),
            }
        return {
            "autostop": autostop,
            "budgets": [
                {
                    "scope": b.scope,
                    "budget_usd": b.budget_usd,
                    "spent_usd": round(b.spent_usd, 4),
                    "percent": round(b.percent, 1),
                }
                for b in self.budgets
            ],
            "outcome": self.outcome,
            "guardian": self._guardian_report(),
            "sync": None if self.sync is None else self.sync.document(),
            "link_lost_since": self.link_lost_since,
            **{part: document() for part, document in self.published.items()},
            "services": self.services,
        }

    def _guardian_autostop(self, seen: Mapping[str, Any]) -> dict[str, Any]:
        """The autostop part of the report from the guardian's own countdown: one countdown, not two."""
        assert self.guardian is not None
        status = self.guardian.get("status") or {}
        # How old the guardian's look is (host clock), so the countdown runs on from it.
        age = max(0.0, float(self.guardian.get("time") or 0) - float(status.get("at") or 0))
        age += max(0.0, self.wall() - self.guardian_offset - float(self.guardian.get("time") or 0))
        remaining = seen.get("remaining_seconds")
        left = None if remaining is None else max(0.0, float(remaining) - age)
        busy = list(seen.get("busy") or [])
        active = list(seen.get("active") or [])
        if busy and active and self.project is not None and busy[0].endswith(" active"):
            busy[0] = self._runs_reason(active)
        if self.outcome is not None:
            phase = "stopped"
        elif busy:
            phase = "busy"
        elif left is None:
            phase = "starting"
        elif status.get("due") and not self.guardian_acts():
            phase = "warned"
        else:
            phase = "counting"
        return {
            "minutes": self.host.autostop_minutes,
            "gpu_percent_below": self.host.autostop_gpu_percent,
            "state": phase,
            "busy": busy,
            "gpu": seen.get("gpu"),
            "gpu_percent": seen.get("gpu_percent"),
            "last_activity": seen.get("last_activity"),
            "idle_seconds": round(float(seen.get("idle_seconds") or 0) + (age if left is not None else 0), 1),
            "remaining_seconds": None if left is None else round(left, 1),
            "stops_at": None if left is None else self.wall() + left,
            "action": self.stop_action(),
            "stalled": list(seen.get("stalled") or []),
            "by": "guardian",
        }

    def _guardian_report(self) -> dict[str, Any] | None:
        """The guardian as `gpubox status` shows it: who it is, the deadline, its latest decisions (times on this
        machine's clock)."""
        if not self.guarded:
            return None
        if self.guardian_failed is not None:
            return {"running": False, "error": self.guardian_failed}
        if self.guardian is None:
            return {"running": None}
        status = self.guardian.get("status") or {}
        shift = self.guardian_offset

        def here(moment: Any) -> float | None:
            return None if not isinstance(moment, int | float) else float(moment) + shift

        return {
            "running": bool(self.guardian.get("running")),
            "pid": self.guardian.get("pid"),
            "acts": self.guardian_acts(),
            "action": self.stop_plan().get("action"),
            "laptop_first": self.guardian_waits_for_laptop(),
            "cannot": None if self.guardian_acts() else self.stop_plan().get("why"),
            "since": here(status.get("since")),
            "deadline_at": here(status.get("deadline_at")),
            "max_hours": self.host.max_hours,
            "budget_stop_at": self.budget_stop_at,
            "due": status.get("due"),
            "decisions": [
                {"at": here(d.get("at")), "event": d.get("event"), "text": d.get("text")}
                for d in self.guardian.get("decisions") or []
            ],
        }

    def _report(self) -> None:
        with open_state(self.state_path) as state:
            state.record_monitor(self.host.name, os.getpid(), self.report(), self.wall())
