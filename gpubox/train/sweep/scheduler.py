"""The sweep's scheduler: every GPU of every host is a slot; a trial starts as soon as a slot is free, as an
ordinary gpubox run; its run's output becomes Optuna's values.

One thread (the caller's) owns the study: it asks, reports, prunes and tells. Each host has a lane
(:mod:`.lane`) whose own thread does that host's SSH work and hands back what it saw. A host that stops
answering only pauses its own lane: its trials are detached runs, they go on, and the lane reattaches when the
host answers again. The scheduler process can die at any time: the trials it started are found again by the
next one (:meth:`Scheduler.adopt`), by run id or by run name.
"""

from __future__ import annotations

import itertools
import json
import queue
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from gpubox.config.sweep import SweepConfig, render_command
from gpubox.errors import GpuboxError
from gpubox.fmt import format_duration, format_usd
from gpubox.remote.agent import calls
from gpubox.train.sweep.lane import Cycle, Flight, Lane, Observation, Slot, Started, StartOrder
from gpubox.train.sweep.metrics import MetricReader
from gpubox.train.sweep.study import TrialView, counted, distributions, trial_view, trial_views

if TYPE_CHECKING:
    from gpubox.actions import Say

__all__ = ["ATTEMPTS", "FAILED_BEFORE_GIVING_UP", "POLL_SECONDS", "Scheduler"]

POLL_SECONDS = 0.5
"""How often a lane reads its running trials when it has nothing else to do."""
FAILED_BEFORE_GIVING_UP = 3
"""The sweep stops starting trials once this many (or all planned, if fewer) ended and every one failed."""
ATTEMPTS = 2
"""A trial whose run is lost (its process vanished, or its host forgot it) is asked again with the same params,
as a new trial, this many times in all at most."""


class Scheduler:
    """Runs the sweep's trials on the lanes' slots until the planned number ended, or it is told to stop."""

    def __init__(
        self,
        study: optuna.Study,
        config: SweepConfig,
        *,
        name: str,
        owner: str,
        lanes: Sequence[Lane],
        planned: int,
        say: Say,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.study = study
        self.config = config
        self.name = name
        self.owner = owner
        self.lanes: dict[str, Lane] = {lane.name: lane for lane in lanes}
        self.planned = planned
        self.say = say
        self.poll_seconds = poll_seconds
        self.flights: dict[int, Flight] = {}
        self.results: queue.Queue[Cycle] = queue.Queue()
        self.starting: dict[str, list[StartOrder]] = {lane.name: [] for lane in lanes}
        self.halt: str | None = None
        """Why no more trials start (the budget, every trial failed), once that is so."""
        self.study.set_user_attr("planned", planned)

    def _views(self) -> list[TrialView]:
        return trial_views(self.study.get_trials(deepcopy=False))

    def _run_name(self, number: int) -> str:
        return f"{self.name}#{number}"

    def add_lane(self, lane: Lane) -> None:
        self.lanes[lane.name] = lane
        self.starting.setdefault(lane.name, [])

    # -- adoption

    def adopt(self, lane_for: Callable[[str], Lane | None]) -> int:
        """Take over this machine's trials that a scheduler before this one left running: each is looked for on
        its host (by run id, or by run name when the scheduler died before the start came back), then followed
        to its end, or re-asked when its run is gone. *lane_for* makes a lane for a host this sweep no longer
        names (None when hosts.toml does not have it any more). Returns how many were taken over."""
        taken = 0
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            view = trial_view(frozen)
            if view.owner != self.owner:
                continue
            lane = self.lanes.get(view.host or "")
            if lane is None and view.host:
                lane = lane_for(view.host)
                if lane is not None:
                    self.add_lane(lane)
            trial = optuna.Trial(self.study, frozen._trial_id)
            attempt = frozen.user_attrs.get("attempt", 1)
            flight = Flight(
                trial,
                lane if lane is not None else next(iter(self.lanes.values())),
                None,
                dict(frozen.params),
                MetricReader(self.config.metric),
                run_id=view.run,
                run_name=self._run_name(frozen.number),
                verified=False,
                started_at=view.started_at,
                usd_per_hour=frozen.user_attrs.get("usd_per_hour"),
                attempt=attempt if isinstance(attempt, int) else 1,
                reported=set(frozen.intermediate_values),
                want_slot=frozen.user_attrs.get("slot"),
            )
            if lane is None:
                self._replace(flight, f"its host {view.host or '?'} is not in hosts.toml any more")
                continue
            self.flights[frozen.number] = flight
            taken += 1
            self.say(f"  · trial {frozen.number}: looking for {view.run or 'its run'} on {lane.name}")
        return taken

    def requeue_stopped(self) -> int:
        """Ask the params of this machine's trials that `--stop` stopped again, as new trials: a resumed sweep
        finishes the work it was stopped in (a grid its missing points). Returns how many."""
        count = 0
        for view in self._views():
            if (
                view.stopped
                and view.replaced_by is None
                and view.owner == self.owner
                and view.state == "failed"
            ):
                # Linked from the new trial (retry_of): a finished trial takes no new attribute.
                self.study.enqueue_trial(
                    view.params, user_attrs={"attempt": 1, "retry_of": view.number}, skip_if_exists=False
                )
                count += 1
        return count

    # -- the loop

    def start_up(self, timeout: float) -> None:
        """Connect to and prepare every host (probe, sync, env); return once one of them can take trials. When
        none can, raise what went wrong on the first (a host that cannot be reached: HostUnreachable)."""
        for lane in self.lanes.values():
            lane.submit(self.results, self._flights_of(lane), [])
        deadline = time.monotonic() + timeout
        failed: dict[str, BaseException] = {}
        while not any(lane.usable for lane in self.lanes.values()):
            try:
                cycle = self.results.get(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise GpuboxError(f"no host of the sweep was ready after {timeout:g} s") from None
                continue
            self._handle(cycle)
            if cycle.error is not None:
                failed.setdefault(cycle.lane.name, cycle.error)
            if len(failed) == len(self.lanes):
                first = failed[next(iter(self.lanes))]
                if isinstance(first, GpuboxError):
                    raise first
                raise GpuboxError(f"{next(iter(self.lanes))}: {first}")
            for lane in self.lanes.values():
                if not lane.busy and lane.fatal is None and lane.name not in failed:
                    lane.submit(self.results, self._flights_of(lane), [])

    def run(self, should_stop: Callable[[], bool]) -> str:
        """Schedule until every planned trial ended ("finished"; "failed" when they all failed or no host can be
        used) or until *should_stop* says so ("interrupted": the running trials are left running)."""
        while True:
            if should_stop():
                return "interrupted"
            self._fill_slots()
            done = self._done()
            if done is not None:
                return done
            self._submit_due()
            try:
                cycle = self.results.get(timeout=self.poll_seconds / 4)
            except queue.Empty:
                continue
            self._handle(cycle)

    def _submit_due(self) -> None:
        now = time.monotonic()
        for lane in self.lanes.values():
            if lane.stalled(now):
                self.say(
                    f"  ! {lane.name}: no answer for {lane.patience:.0f} s; dropping the link to reconnect"
                )
                lane.abandon()
            if lane.busy or lane.fatal is not None:
                continue
            orders = self.starting[lane.name]
            flights = self._flights_of(lane)
            urgent = orders or any((f.prune or f.stop_for_user) and not f.stop_sent for f in flights)
            if urgent or now - lane.last_cycle >= self.poll_seconds:
                self.starting[lane.name] = []
                lane.submit(self.results, flights, orders)

    def stop_trials(self, timeout: float = 60.0) -> list[int]:
        """Stop every running trial of this scheduler (the user stopped the sweep). Returns the numbers of those
        it could not stop in time (their hosts did not answer): they are still running."""
        for orders in self.starting.values():
            for order in orders:
                flight = self.flights.get(order.number)
                if flight is not None:
                    self._fail(flight, note="stopped with the sweep before it started", stopped=True)
            orders.clear()
        for flight in self.flights.values():
            flight.stop_for_user = True
        deadline = time.monotonic() + timeout
        while self.flights and time.monotonic() < deadline:
            self._submit_due()
            try:
                cycle = self.results.get(timeout=self.poll_seconds / 4)
            except queue.Empty:
                continue
            self._handle(cycle)
        return sorted(self.flights)

    def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()

    def _flights_of(self, lane: Lane) -> list[Flight]:
        return [f for f in self.flights.values() if f.lane is lane]

    # -- what a cycle brought back

    def _handle(self, cycle: Cycle) -> None:
        lane = cycle.lane
        lane.busy = False
        if cycle.fatal is not None:
            if lane.fatal is None:
                lane.fatal = cycle.fatal
                self.say(f"  ✗ {lane.name}: {cycle.fatal}; no trial starts there")
            self._lost_orders(cycle)
            return
        if cycle.lost_link is not None:
            if lane.down_since is None:
                lane.down_since = time.monotonic()
                self.say(f"  ! {lane.name}: {cycle.lost_link}; its trials keep running there, reconnecting")
            self._lost_orders(cycle)
            return
        if lane.down_since is not None and lane.session is not None:
            self.say(f"  ✓ {lane.name}: back after {format_duration(time.monotonic() - lane.down_since)}")
            lane.down_since = None
        if cycle.prepared:
            self._place_adopted(lane)
            if lane.accepts_new:
                count = len(lane.slots)
                what = f"{len(lane.gpus)} GPU{'s' if len(lane.gpus) != 1 else ''}" if lane.gpus else "no GPU"
                self.say(f"  ✓ {lane.name}: {what}, {count} trial{'s' if count != 1 else ''} at a time")
        for number in cycle.stopped:
            if number in self.flights:
                self.flights[number].stop_sent = True
        for started in cycle.started:
            self._started(started)
        for observation in cycle.observations:
            flight = self.flights.get(observation.number)
            if flight is not None:
                self._observed(flight, observation)

    def _lost_orders(self, cycle: Cycle) -> None:
        """Starts a failed cycle carried may have happened or not: look for them by name next time."""
        came_back = {started.number for started in cycle.started}
        for order in cycle.orders:
            flight = self.flights.get(order.number)
            if flight is not None and order.number not in came_back:
                flight.verified = False

    def _place_adopted(self, lane: Lane) -> None:
        """Give the trials adopted on *lane* their slots back (the GPU each was started on, when it still has
        it)."""
        for flight in self._flights_of(lane):
            if flight.slot is not None:
                continue
            free = [s for s in lane.slots if s.busy is None]
            slot = next((s for s in free if [s.gpu, s.index] == flight.want_slot), free[0] if free else None)
            if slot is not None:
                slot.busy = flight.number
                flight.slot = slot

    def _started(self, started: Started) -> None:
        flight = self.flights.get(started.number)
        if flight is None:
            return
        if started.run is None:
            self._fail(flight, note=f"could not start: {started.error}")
            return
        run = started.run
        flight.run_id = run.id
        flight.order = None
        flight.started_at = run.started_at or time.time()
        flight.trial.set_user_attr("run", run.id)
        flight.trial.set_user_attr("started_at", flight.started_at)
        shown = ", ".join(f"{k}={_shown(v)}" for k, v in sorted(flight.params.items()))
        where = flight.slot.label if flight.slot is not None else flight.lane.name
        self.say(f"  · trial {flight.number} started on {where} as {run.id}: {shown}")

    def _observed(self, flight: Flight, observation: Observation) -> None:
        row = observation.row
        if row is None:
            if flight.order is not None:
                # The start never reached the host (the link dropped first): send it again.
                flight.verified = True
                self.starting[flight.lane.name].append(flight.order)
                return
            self._replace(flight, "its run is not on the host" if flight.run_id else "its run never started")
            return
        if not flight.verified and row.get("name") != flight.run_name:
            # Run ids are reused once a run's folder is gone: this one is another run now.
            self._replace(flight, f"its run is not on the host ({row.get('id')} is another run now)")
            return
        if not flight.verified:
            flight.verified = True
            if flight.run_id is None:
                flight.run_id = str(row["id"])
                flight.order = None
                flight.trial.set_user_attr("run", flight.run_id)
                flight.started_at = row.get("started_at") or flight.started_at
                if flight.started_at is not None:
                    flight.trial.set_user_attr("started_at", flight.started_at)
            self.say(
                f"  ✓ trial {flight.number}: following {flight.run_id} on {flight.lane.name} ({row.get('state')})"
            )
        state = str(row.get("state"))
        ended = state not in ("starting", "running")
        if observation.log_from is not None and observation.log_from != flight.reader.log_offset:
            flight.reader.restart_log(observation.log_from)
        flight.reader.feed_log(observation.log, final=ended)
        flight.reader.feed_scalars(observation.scalars)
        self._report(flight)
        if ended:
            self._ended(flight, row)
            return
        if (
            self.config.prune is not None
            and not flight.prune
            and flight.reported
            and flight.trial.should_prune()
        ):
            flight.prune = True
            step = max(flight.reported)
            value = flight.reader.values().get(step)
            shown = "" if value is None else f" ({self.config.metric} {value:.4g})"
            self.say(
                f"  · trial {flight.number} behind the median at epoch {step + 1}{shown}: pruning, stopping {flight.run_id}"
            )

    def _report(self, flight: Flight) -> None:
        for step, value in sorted(flight.reader.values().items()):
            if step not in flight.reported:
                flight.trial.report(value, step)
                flight.reported.add(step)

    def _ended(self, flight: Flight, row: calls.RunRow) -> None:
        state = str(row.get("state"))
        exit_code = row.get("exit_code")
        ended_at = float(row.get("ended_at") or time.time())
        started = row.get("started_at") or flight.started_at
        attrs: dict[str, Any] = {
            "ended_at": ended_at,
            "exit_code": exit_code,
            "last_line": flight.reader.last_line,
        }
        took = ""
        if started is not None:
            attrs["started_at"] = float(started)
            seconds = max(0.0, ended_at - float(started))
            took = f", {format_duration(seconds)}"
            if flight.usd_per_hour is not None:
                attrs["cost_usd"] = flight.usd_per_hour * seconds / 3600.0
        for key, value in attrs.items():
            flight.trial.set_user_attr(key, value)
        value = flight.reader.final()
        if flight.prune:
            self._tell(flight, state=TrialState.PRUNED)
            self.say(f"  · trial {flight.number} pruned ({flight.run_id}{took})")
            return
        if flight.stop_for_user:
            flight.trial.set_user_attr("stopped", True)
            flight.trial.set_user_attr("note", "stopped with the sweep")
            self._tell(flight, state=TrialState.FAIL)
            self.say(f"  · trial {flight.number} stopped ({flight.run_id})")
            return
        if state == "lost":
            self._replace(flight, "its process vanished on the host without an exit code")
            return
        if state == "succeeded" and value is not None:
            self._tell(flight, value=value)
            self.say(
                f"  ✓ trial {flight.number} complete: {self.config.metric} {value:.6g} ({flight.run_id}{took})"
            )
            return
        if state == "succeeded":
            note = (
                f"the run reported no {self.config.metric} (a TensorBoard scalar, or "
                f"`{self.config.metric}: X` in its log)"
            )
        elif state == "stopped":
            note = "its run was stopped (gpubox stop)"
        else:
            note = f"exit {exit_code}"
        flight.trial.set_user_attr("note", note)
        self._tell(flight, state=TrialState.FAIL)
        last = f": {flight.reader.last_line}" if flight.reader.last_line else ""
        self.say(f"  ✗ trial {flight.number} failed ({note}, {flight.run_id}{took}){last}")

    def _tell(self, flight: Flight, value: float | None = None, state: TrialState | None = None) -> None:
        if state is None:
            self.study.tell(flight.trial, value)
        else:
            self.study.tell(flight.trial, state=state)
        self._release(flight)

    def _release(self, flight: Flight) -> None:
        if flight.slot is not None and flight.slot.busy == flight.number:
            flight.slot.busy = None
        self.flights.pop(flight.number, None)

    def _fail(self, flight: Flight, *, note: str, stopped: bool = False) -> None:
        flight.trial.set_user_attr("note", note)
        if stopped:
            flight.trial.set_user_attr("stopped", True)
        self._tell(flight, state=TrialState.FAIL)
        self.say(f"  ✗ trial {flight.number} failed: {note}")

    def _replace(self, flight: Flight, why: str) -> None:
        """The trial's run is lost: fail it and ask its params again as a new trial (ATTEMPTS in all)."""
        if flight.attempt >= ATTEMPTS:
            self._fail(flight, note=f"lost: {why}")
            return
        self.study.enqueue_trial(
            flight.params,
            user_attrs={"attempt": flight.attempt + 1, "retry_of": flight.number},
            skip_if_exists=False,
        )
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        replacement = max(t.number for t in waiting)
        flight.trial.set_user_attr("replaced_by", replacement)
        flight.trial.set_user_attr("note", f"lost: {why}; again as trial {replacement}")
        self.study.tell(flight.trial, state=TrialState.FAIL)
        self._release(flight)
        self.say(f"  · trial {flight.number}: {why}; its params go again as trial {replacement}")

    # -- starting trials

    def _fill_slots(self) -> None:
        if self.halt is not None:
            return
        per_lane = [lane.free_slots() for lane in self.lanes.values()]
        # Round robin over the hosts, so the first trials spread over all of them.
        free = [slot for row in itertools.zip_longest(*per_lane) for slot in row if slot is not None]
        if not free:
            return
        views = self._views()
        if self._check_halt(views):
            return
        remaining = self.planned - len(counted(views))
        for slot in free:
            if remaining <= 0 or not self._budget_allows(views, slot):
                return
            self._ask_into(slot)
            remaining -= 1

    def _ask_into(self, slot: Slot) -> None:
        lane = self.lanes[slot.host]
        trial = self.study.ask(distributions(self.config))
        params = dict(trial.params)
        number = int(trial.number)
        attempt = trial.user_attrs.get("attempt", 1)
        share = None if lane.host_usd_per_hour is None else lane.host_usd_per_hour / max(1, len(lane.slots))
        for key, value in {
            "owner": self.owner,
            "host": lane.name,
            "slot": [slot.gpu, slot.index],
            "usd_per_hour": share,
        }.items():
            trial.set_user_attr(key, value)
        env = {
            "GPUBOX_SWEEP": self.name,
            "GPUBOX_TRIAL": str(number),
            "GPUBOX_TRIAL_PARAMS": json.dumps(params, sort_keys=True),
        }
        if slot.gpu is not None:
            # nvidia-smi numbers GPUs by PCI bus, CUDA fastest first by default: make them agree.
            env["CUDA_VISIBLE_DEVICES"] = str(slot.gpu)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        order = StartOrder(number, render_command(self.config, params), env, self._run_name(number))
        self.flights[number] = Flight(
            trial,
            lane,
            slot,
            params,
            MetricReader(self.config.metric),
            run_name=order.name,
            usd_per_hour=share,
            attempt=attempt if isinstance(attempt, int) else 1,
            order=order,
        )
        slot.busy = number
        self.starting[lane.name].append(order)

    def _check_halt(self, views: Sequence[TrialView]) -> bool:
        ended = [v for v in views if v.counts and v.ended]
        enough = bool(ended) and len(ended) >= min(FAILED_BEFORE_GIVING_UP, self.planned)
        if not enough or any(v.state != "failed" for v in ended):
            return False
        last = max(ended, key=lambda v: v.number)
        detail = (last.note or "failed") + (f": {last.last_line}" if last.last_line else "")
        self.halt = f"every trial failed ({len(ended)} of them); the last: {detail}"
        self.say(f"  ✗ {self.halt}; no more trials start")
        return True

    def _budget_allows(self, views: Sequence[TrialView], slot: Slot) -> bool:
        limit = self.config.max_cost_usd
        if limit is None:
            return True
        now = time.time()
        spent = sum(v.cost_usd or 0.0 for v in views)
        known = [d for d in (v.duration_s(now) for v in views if v.ended) if d is not None]
        mean = sum(known) / len(known) if known else 0.0
        lane = self.lanes[slot.host]
        share = (lane.host_usd_per_hour or 0.0) / max(1, len(lane.slots))
        ahead = sum(
            (f.usd_per_hour or 0.0) * max(0.0, mean - (now - f.started_at)) / 3600.0
            for f in self.flights.values()
            if f.started_at is not None
        )
        expected = spent + ahead + share * mean / 3600.0
        if spent >= limit or expected > limit:
            self.halt = (
                f"the next trial would take the sweep past max_cost_usd {format_usd(limit)} "
                f"({format_usd(spent)} spent, about {format_usd(expected)} with the running ones and one more)"
            )
            self.say(f"  · {self.halt}; no more trials start")
            return False
        return True

    # -- the end

    def _done(self) -> str | None:
        if self.flights or any(self.starting.values()):
            return None
        if self.halt is not None:
            return "failed" if self.halt.startswith("every trial failed") else "finished"
        if len(counted(self._views())) >= self.planned:
            return "finished"
        lanes = list(self.lanes.values())
        if lanes and all(lane.fatal is not None for lane in lanes):
            self.halt = "no host can take trials: " + "; ".join(
                f"{lane.name}: {lane.fatal}" for lane in lanes
            )
            return "failed"
        return None


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)
