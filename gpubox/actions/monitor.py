"""The money and idle monitor of a held host, run from the supervisor's loop.

Each tick it may: write the billing heartbeat (every :data:`LEDGER_BEAT_SECONDS`), check budgets (warnings at
50, 80 and 100 %, each once; at 100 % stop the host unless ``on_budget = "warn"``), sample the host with the
agent's ``idle`` op (GPU utilisation, terminals) and stop the host once it has been idle for
``autostop_minutes``, and record what it saw for ``gpubox status`` (the countdown). Every clock is injectable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox.config import HostConfig, HostsConfig
from gpubox.cost import BillingHold, Budget, IdleTracker, budgets_for, busy_reasons, elapsed
from gpubox.errors import AgentError, HostUnreachable
from gpubox.fmt import format_duration
from gpubox.remote.agent import calls
from gpubox.remote.gpu import gpu_readings
from gpubox.state import open_state

if TYPE_CHECKING:
    from gpubox.config import ProjectConfig
    from gpubox.remote.session import HostSession

__all__ = ["LEDGER_BEAT_SECONDS", "HostMonitor", "SyncActivity", "SyncStatus"]

LEDGER_BEAT_SECONDS = 2.0
"""How often the billing heartbeat is written: a killed gpubox loses at most this much billed time."""
MIN_SAMPLE_SECONDS = 0.5
MAX_SAMPLE_SECONDS = 30.0
STOP_COMMAND_TIMEOUT = 120.0
SERVICES_SECONDS = 30.0
"""How often the host's lead supervisor lists every project's services (for `gpubox status`)."""


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
        self.before_terminate: Callable[[], str] | None = None
        """For a rented host: what to do before terminating it (pull the outputs); raising stops the
        termination."""
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
        self.sample_seconds = min(MAX_SAMPLE_SECONDS, max(MIN_SAMPLE_SECONDS, self.window / 6))
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
        self.services: list[dict[str, Any]] | None = None
        """Every project's services running on the host (the lead looks every SERVICES_SECONDS), for `status`."""
        self.next_services = self.clock()
        self._warned: set[str] = set()

    # -- scheduling

    def wait_seconds(self) -> float:
        """How long the supervisor may sleep before the next tick is due."""
        due = [self.next_link, self.next_ledger]
        if self.autostop:
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
            if leading and (now >= self.next_sample or check_link):
                self._sample()
            elif check_link or now >= self.next_link:
                self.session.heartbeat()
                self.next_link = self.clock() + self.heartbeat_seconds
                if self.autostop and not leading:
                    self.tracker.reset()  # another project's supervisor watches the host; start afresh if it goes
            if leading and self.tracker.due(self.clock()):
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
        if exhausted and self.host.on_budget == "stop" and self._leads():
            self._stop_host(f"budget: {exhausted[0].describe(100)}", "budget")

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
        reasons = busy_reasons(
            gpu_percent=self.gpu_percent,
            gpu_threshold=self.host.autostop_gpu_percent,
            active_runs=answer.get("runs"),
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
        if self.host.stop_command:
            return "run stop_command on the host"
        if self.host.spec.runs_own_sshd:
            return "stop the local sshd"
        if not self.host.spec.stops_on_down:
            return "warn only (no stop_command for this ssh host)"
        return "terminate the instance"

    def _stop_host(self, why: str, reason: str) -> None:
        host = self.host
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
            from gpubox.errors import GpuboxError
            from gpubox.remote.providers import provider_for

            try:
                if host.spec.rents and self.before_terminate is not None:
                    # Terminating a rented machine deletes its disk: bring the outputs home first.
                    self.say(f"· {why}: {self.before_terminate()}")
                done = provider_for(host).terminate(host)
            except GpuboxError as exc:
                if reason not in self._warned:
                    self._warned.add(reason)
                    self.say(f"! {why}, but {host.name} was not terminated: {exc}")
                return
        self.outcome = f"{why}: {done}"
        if self.billing is not None:
            self.billing.end_reason = reason
        self.say(f"! {self.outcome}")
        self.stop.set()

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
        if self.autostop:
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
            "sync": None if self.sync is None else self.sync.document(),
            "services": self.services,
        }

    def _report(self) -> None:
        with open_state(self.state_path) as state:
            state.record_monitor(self.host.name, os.getpid(), self.report(), self.wall())
