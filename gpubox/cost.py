"""What a host costs: its hourly price, the ledger of billed time, budgets, and per-run cost.

Prices, in order: the provider's live price (cloud providers, when they exist), ``price_per_hour`` in hosts.toml,
then gpubox's dated price catalog (``gpubox/data/prices.toml``) for the GPU model of the last probe, shown as an
estimate. The built-in ``local`` host is free. The live price and the GPU names come from the callers
(:func:`gpubox.remote.providers.host_price` looks both up): this module knows hosts only as configured.

The ledger (see :class:`gpubox.state.BillingInterval`) counts the time gpubox held each host up. A holder
measures that time on :func:`elapsed`, a clock that never jumps and keeps counting while the laptop sleeps (the
rented machine bills on), and writes it with a heartbeat, so a killed gpubox loses at most one heartbeat and a
wall-clock change neither stretches nor repeats time.
"""

from __future__ import annotations

import functools
import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpubox import data as data_files
from gpubox.fmt import columns, format_duration, format_usd
from gpubox.record import record

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig
    from gpubox.state import BillingInterval, State

__all__ = [
    "BUDGET_THRESHOLDS",
    "NO_ETA",
    "NO_PRICE",
    "BillingHold",
    "Budget",
    "HourlyPrice",
    "PriceCatalog",
    "PriceOf",
    "RunCost",
    "RunMoney",
    "catalog_estimate",
    "cost_report",
    "elapsed",
    "hourly_price",
    "load_catalog",
    "overrun_warnings",
    "parse_since",
    "run_cost",
    "run_money",
    "spent_usd",
]

TOTAL_SCOPE = "*"
"""The budget scope of all hosts together (``[defaults] total_budget_usd``)."""
BUDGET_THRESHOLDS = (50, 80, 100)


# ------------------------------------------------------------------------------------------------ clocks

_ELAPSED_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def elapsed() -> float:
    """Seconds on a clock that never jumps with wall-clock changes and, unlike ``time.monotonic`` on Linux,
    keeps counting through suspend (CLOCK_BOOTTIME; CLOCK_MONOTONIC elsewhere, which macOS counts the same)."""
    return time.clock_gettime(_ELAPSED_CLOCK)


# ------------------------------------------------------------------------------------------------ prices


@record
class HourlyPrice:
    amount: float | None
    """US dollars per hour; None when gpubox cannot know (an ssh host without price_per_hour nor a known GPU)."""
    source: str
    estimate: bool = False
    """True when the amount comes from gpubox's catalog rather than from the provider or the user."""

    def label(self) -> str:
        if self.amount is None:
            return f"$?/h ({self.source})"
        return f"{'~' if self.estimate else ''}{format_usd(self.amount)}/h ({self.source})"


@record
class CatalogRow:
    model: str
    pattern: re.Pattern[str]
    per_gpu_hour: float
    provider: str
    offer: str
    source: str


@record
class PriceCatalog:
    as_of: str
    rows: tuple[CatalogRow, ...]

    def match(self, gpu_name: str) -> CatalogRow | None:
        return next((row for row in self.rows if row.pattern.search(gpu_name)), None)


@functools.cache
def load_catalog() -> PriceCatalog:
    data = tomllib.loads(data_files.read_text("prices.toml"))
    sources: Mapping[str, str] = data["sources"]
    rows = tuple(
        CatalogRow(
            model=row["model"],
            pattern=re.compile(row["match"]),
            per_gpu_hour=float(row["per_gpu_hour"]),
            provider=row["provider"],
            offer=row["offer"],
            source=sources[row["source"]],
        )
        for row in data["gpu"]
    )
    return PriceCatalog(as_of=str(data["as_of"]), rows=rows)


def catalog_estimate(gpu_names: Sequence[str], catalog: PriceCatalog | None = None) -> HourlyPrice | None:
    """An estimated price for a host with these GPUs; None when there is none or one is not in the catalog."""
    catalog = catalog or load_catalog()
    if not gpu_names:
        return None
    counts: dict[CatalogRow, int] = {}
    for name in gpu_names:
        row = catalog.match(name)
        if row is None:
            return None
        counts[row] = counts.get(row, 0) + 1
    total = sum(row.per_gpu_hour * count for row, count in counts.items())
    parts = []
    for row, count in counts.items():
        each = f"{format_usd(row.per_gpu_hour)}/h"
        parts.append(
            f"{row.model} at {row.provider}'s {each}"
            if count == 1
            else f"{count}× {row.model} at {row.provider}'s {each} each"
        )
    return HourlyPrice(total, f"estimate: {' + '.join(parts)}, catalog {catalog.as_of}", estimate=True)


def hourly_price(host: HostConfig, gpus: Sequence[str] = (), *, live: float | None = None) -> HourlyPrice:
    """*host*'s price: *live* (what its provider charges now, where a provider says), else ``price_per_hour``,
    else free on this machine (``local``), else a catalog estimate for *gpus* (the GPU names of its last
    probe)."""
    if live is not None:
        return HourlyPrice(live, f"live price from {host.provider}")
    if host.price_per_hour is not None:
        return HourlyPrice(host.price_per_hour, "price_per_hour in hosts.toml")
    if host.spec.on_this_machine:
        return HourlyPrice(0.0, "your own machine")
    estimate = catalog_estimate(gpus)
    if estimate is not None:
        return estimate
    return HourlyPrice(None, "unknown: set price_per_hour in hosts.toml")


PriceOf = Callable[["HostConfig", "Mapping[str, Any] | None"], HourlyPrice]
"""A host's price from its configuration and its last probe (:func:`gpubox.remote.providers.host_price`)."""


# ------------------------------------------------------------------------------------------------ ledger


class BillingHold:
    """The billing interval of a host this process holds up: opened, heartbeaten, closed.

    Time held is measured on *elapsed* from the moment of opening; *wall* stamps the rows. Both are injectable
    so tests can move clocks instead of sleeping."""

    def __init__(
        self,
        host_name: str,
        price: HourlyPrice,
        *,
        pid: int | None = None,
        wall: Callable[[], float] = time.time,
        elapsed: Callable[[], float] = elapsed,
        state_path: Path | None = None,
    ) -> None:
        import os

        self.host_name = host_name
        self.price = price
        self.pid = os.getpid() if pid is None else pid
        self.wall = wall
        self.elapsed = elapsed
        self.state_path = state_path
        self.interval_id: int | None = None
        self._opened_at = 0.0
        self.end_reason = "released"

    def _state(self) -> State:
        from gpubox.state import open_state

        return open_state(self.state_path)

    def open(self) -> BillingHold:
        """Open the host's interval, or join the one another holder of the same host (another project's
        supervisor) has open: the host is billed once, and this holder counts on from the time already held."""
        from gpubox.state import process_token

        with self._state() as state:
            now = self.wall()
            self._opened_at = self.elapsed()
            self.interval_id = state.open_billing(
                self.host_name,
                self.price.amount,
                now,
                holder_pid=self.pid,
                holder_token=process_token(self.pid),
                price_source=self.price.source,
                estimate=self.price.estimate,
            )
            joined = state.billing_interval(self.interval_id)
            if joined is not None and joined.holder_pid not in (None, self.pid):
                self._opened_at -= joined.seconds(now)
        return self

    def held_seconds(self) -> float:
        return max(0.0, self.elapsed() - self._opened_at)

    def beat(self, state: State | None = None) -> None:
        """Write the time held so far; if someone closed the interval meanwhile, open a new one from now."""
        from gpubox.state import process_token

        if self.interval_id is None:
            return
        if state is None:
            with self._state() as own:
                return self.beat(own)
        held = self.held_seconds()
        if not state.heartbeat_billing(
            self.interval_id, held, self.wall(), holder_pid=self.pid, holder_token=process_token(self.pid)
        ):
            self.open()

    def close(self, reason: str | None = None, *, hand_to: int | None = None) -> None:
        """Close the interval with the time held; with *hand_to* (another live holder of the same host), leave it
        open for that process instead, which goes on counting it."""
        from gpubox.state import process_token

        if self.interval_id is None:
            return
        with self._state() as state:
            if hand_to is not None:
                state.heartbeat_billing(
                    self.interval_id,
                    self.held_seconds(),
                    self.wall(),
                    holder_pid=hand_to,
                    holder_token=process_token(hand_to),
                )
            else:
                state.end_billing(
                    self.interval_id, self.held_seconds(), self.wall(), reason or self.end_reason
                )
        self.interval_id = None


def spent_usd(intervals: Iterable[tuple[str, float, float, float | None]], now: float | None = None) -> float:
    """Sum of price × hours over (host, $/h, start, end or None while still open) wall-clock intervals."""
    now = time.time() if now is None else now
    total = 0.0
    for _host, price, started, ended in intervals:
        end = now if ended is None else ended
        total += price * max(0.0, end - started) / 3600.0
    return total


def seconds_in_window(interval: BillingInterval, now: float, since: float | None = None) -> float:
    """The part of *interval*'s billed time that falls after *since* (all of it without one)."""
    seconds = interval.seconds(now)
    if since is None or since <= interval.started_at:
        return seconds
    return max(0.0, min(seconds, interval.started_at + seconds - since))


@record
class HostSpend:
    seconds: float = 0.0
    spent_usd: float = 0.0
    unpriced_seconds: float = 0.0
    estimated: bool = False
    billing_now: bool = False


def host_spend(intervals: Iterable[BillingInterval], now: float, since: float | None = None) -> HostSpend:
    seconds = spent = unpriced = 0.0
    estimated = billing_now = False
    for interval in intervals:
        part = seconds_in_window(interval, now, since)
        billing_now = billing_now or interval.open
        seconds += part
        if interval.price_per_hour is None:
            unpriced += part
            continue
        spent += interval.price_per_hour * part / 3600.0
        estimated = estimated or (interval.estimate and part > 0)
    return HostSpend(seconds, spent, unpriced, estimated, billing_now)


# -------------------------------------------------------------------------------------------------- runs


@record
class RunCost:
    seconds: float
    per_host: Mapping[str, float | None]
    """Each host's share: the run's duration × that host's rate (None where the rate is unknown)."""
    estimate: bool

    @property
    def total_usd(self) -> float | None:
        shares = list(self.per_host.values())
        if not shares or any(share is None for share in shares):
            return None
        return sum(share for share in shares if share is not None)


def rate_at(intervals: Sequence[BillingInterval], at: float) -> BillingInterval | None:
    """The interval whose price applied at wall time *at*: the one covering it, else the latest that began
    before it, else the first."""
    if not intervals:
        return None
    covering = [i for i in intervals if i.started_at <= at <= i.started_at + i.seconds(at)]
    if covering:
        return covering[-1]
    before = [i for i in intervals if i.started_at <= at]
    return before[-1] if before else intervals[0]


def run_cost(
    started_at: float, ended_at: float, intervals_by_host: Mapping[str, Sequence[BillingInterval]]
) -> RunCost:
    """What a run cost: its duration × the rate of each host it ran on (a multi-host run adds each host's
    share). Runs arrive with `gpubox run`; their rows in :func:`cost_report` will come from this."""
    seconds = max(0.0, ended_at - started_at)
    shares: dict[str, float | None] = {}
    estimate = False
    for host, intervals in intervals_by_host.items():
        interval = rate_at(intervals, started_at)
        if interval is None or interval.price_per_hour is None:
            shares[host] = None
            continue
        shares[host] = interval.price_per_hour * seconds / 3600.0
        estimate = estimate or interval.estimate
    return RunCost(seconds, shares, estimate)


def run_rows(state: State, now: float, since: float | None) -> list[dict[str, Any]]:
    """Per-run cost rows for `gpubox cost`, from the runs gpubox has seen (a run still going counts up to now)."""
    rows = []
    ledgers: dict[str, Sequence[BillingInterval]] = {}
    for run in state.cached_runs():
        started = run.started_at
        if started is None:
            continue
        ended = run.ended_at if run.ended_at is not None else now
        if since is not None and ended < since:
            continue
        host = run.host
        if host not in ledgers:
            ledgers[host] = state.billing(host, repair=False)
        cost = run_cost(started, ended, {host: ledgers[host]})
        share = cost.per_host.get(host)
        rows.append(
            {
                "id": run.id,
                "host": host,
                "command": run.command,
                "state": run.state,
                "hours": round(cost.seconds / 3600.0, 6),
                "spent_usd": None if share is None else round(share, 4),
                "spent_is_estimate": cost.estimate,
            }
        )
    return rows


NO_PRICE = "N/A"
"""What a money cell shows for a host without a price."""
NO_ETA = "—"
"""What a cost-to-finish cell shows for a run whose end gpubox cannot foresee (``--json`` says why)."""


@record
class RunMoney:
    """An active run's money: what it cost so far and what it will cost to finish (its ETA × the host's $/h)."""

    run_id: str
    host: str
    spent_usd: float | None
    to_finish_usd: float | None
    eta_seconds: float | None
    price_per_hour: float | None
    estimate: bool
    why: str | None = None
    """Why there is no cost to finish (no price, no ETA yet), or None."""

    def document(self) -> dict[str, Any]:
        return {
            "spent_usd": None if self.spent_usd is None else round(self.spent_usd, 4),
            "to_finish_usd": None if self.to_finish_usd is None else round(self.to_finish_usd, 4),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "price_per_hour": self.price_per_hour,
            "estimate": self.estimate,
            "to_finish_why": self.why,
        }

    def spent_text(self) -> str:
        return (
            NO_PRICE
            if self.spent_usd is None
            else ("~" if self.estimate else "") + format_usd(self.spent_usd)
        )

    def to_finish_text(self) -> str:
        if self.price_per_hour is None:
            return NO_PRICE
        if self.to_finish_usd is None:
            return NO_ETA
        return ("~" if self.estimate else "") + format_usd(self.to_finish_usd)

    def line(self) -> str:
        """``r-7: $0.40 so far · $1.10 to finish (ETA 0:51:00 at $1.29/h)``."""
        text = f"{self.run_id}: {self.spent_text()} so far · {self.to_finish_text()} to finish"
        if (
            self.to_finish_usd is not None
            and self.eta_seconds is not None
            and self.price_per_hour is not None
        ):
            text += f" (ETA {format_duration(self.eta_seconds)} at {format_usd(self.price_per_hour)}/h)"
        elif self.why:
            text += f" ({self.why})"
        return text


def run_money(
    run_id: str,
    host: str,
    *,
    started_at: float | None,
    progress: Mapping[str, Any] | None,
    price: HourlyPrice,
    now: float,
) -> RunMoney:
    """What an active run has cost since it started and will cost to finish, at the host's rate *price*."""
    rate = price.amount
    seconds = max(0.0, now - started_at) if started_at is not None else None
    spent = None if rate is None or seconds is None else rate * seconds / 3600.0
    progress = progress or {}
    eta = progress.get("eta_seconds")
    eta = float(eta) if isinstance(eta, int | float) and not isinstance(eta, bool) else None
    why = None
    if rate is None:
        why = f"no price for {host} ({price.source}): set price_per_hour in hosts.toml"
    elif eta is None:
        if not progress.get("epochs"):
            why = "no ETA: its log shows no Keras 'Epoch i/N' line, so gpubox cannot tell how much is left"
        else:
            why = "no ETA yet: the first epoch has not ended"
    to_finish = None if rate is None or eta is None else rate * eta / 3600.0
    return RunMoney(run_id, host, spent, to_finish, eta, rate, price.estimate, why)


def overrun_warnings(money: RunMoney, budgets: Sequence[Budget]) -> list[str]:
    """Each budget that *money*'s run would pass before it ends: what it needs, and what is left."""
    if money.to_finish_usd is None:
        return []
    found = []
    for budget in budgets:
        left = max(0.0, budget.budget_usd - budget.spent_usd)
        if money.to_finish_usd > left:
            whose = "the total_budget_usd" if budget.scope == TOTAL_SCOPE else f"{budget.scope}'s budget"
            found.append(
                f"run {money.run_id} needs ~{format_usd(money.to_finish_usd)} more to finish (ETA "
                f"{format_duration(money.eta_seconds or 0)} at {format_usd(money.price_per_hour or 0)}/h), but only "
                f"{format_usd(left)} is left of {whose} of {format_usd(budget.budget_usd)}"
            )
    return found


# ----------------------------------------------------------------------------------------------- budgets


@record
class Budget:
    scope: str
    """A host name, or :data:`TOTAL_SCOPE` for all hosts together."""
    budget_usd: float
    spent_usd: float

    @property
    def percent(self) -> float:
        return 100.0 * self.spent_usd / self.budget_usd

    @property
    def reached(self) -> list[int]:
        """The warning thresholds (50, 80, 100 %) reached. Compared in cents, so $25.00 of $50.00 is 50 %."""
        cents = round(self.spent_usd * 100, 6)
        return [t for t in BUDGET_THRESHOLDS if cents >= round(self.budget_usd * t, 6)]

    @property
    def exhausted(self) -> bool:
        return 100 in self.reached

    def seconds_to_next(self, rate_per_hour: float) -> float | None:
        """How long until the next threshold at *rate_per_hour*; None when all are reached or nothing accrues."""
        upcoming = [t for t in BUDGET_THRESHOLDS if t not in self.reached]
        if not upcoming or rate_per_hour <= 0:
            return None
        return max(0.0, (self.budget_usd * upcoming[0] / 100 - self.spent_usd) * 3600.0 / rate_per_hour)

    def describe(self, threshold: int | None = None) -> str:
        """``box cost $40.00, 80 % of its $50.00 budget``; with *threshold*, the warning for reaching it:
        ``box reached 80 % of its $50.00 budget ($40.02 spent)``."""
        whose = "all hosts together" if self.scope == TOTAL_SCOPE else self.scope
        which = "total_budget_usd" if self.scope == TOTAL_SCOPE else "budget"
        of = f"{'the' if self.scope == TOTAL_SCOPE else 'its'} {format_usd(self.budget_usd)} {which}"
        if threshold is None:
            return f"{whose} cost {format_usd(self.spent_usd)}, {self.percent:.0f} % of {of}"
        if threshold >= 100:
            return f"{whose} used up {of} ({format_usd(self.spent_usd)} spent)"
        return f"{whose} reached {threshold} % of {of} ({format_usd(self.spent_usd)} spent)"

    def document(self, alerts: Sequence[tuple[str, int, float, float, float]] = ()) -> dict[str, Any]:
        return {
            "budget_usd": self.budget_usd,
            "spent_usd": round(self.spent_usd, 4),
            "percent": round(self.percent, 1),
            "warned": sorted(
                {t for scope, t, b, _s, _a in alerts if scope == self.scope and b == self.budget_usd}
            ),
        }


def budgets_for(
    host: HostConfig, hosts: HostsConfig | None, intervals: Sequence[BillingInterval], now: float
) -> list[Budget]:
    """The budgets that apply to *host*: its own ``budget_usd`` and ``[defaults] total_budget_usd``."""
    found = []
    if host.budget_usd is not None:
        own = host_spend((i for i in intervals if i.host == host.name), now).spent_usd
        found.append(Budget(host.name, host.budget_usd, own))
    if hosts is not None and hosts.total_budget_usd is not None:
        found.append(Budget(TOTAL_SCOPE, hosts.total_budget_usd, host_spend(intervals, now).spent_usd))
    return found


def over_budget(host: HostConfig, hosts: HostsConfig, state: State) -> str | None:
    """Why `gpubox up` should not start *host* (a budget with on_budget = "stop" is used up), or None."""
    if host.on_budget != "stop":
        return None
    for budget in budgets_for(host, hosts, state.billing(), time.time()):
        if budget.exhausted:
            key = "total_budget_usd in [defaults]" if budget.scope == TOTAL_SCOPE else "budget_usd"
            return f'{budget.describe(100)}: raise {key} in hosts.toml, or set on_budget = "warn" for {host.name}'
    return None


# The idle rules (busy_reasons, IdleTracker) live in the agent's file, gpubox/remote/agent/host.py: the one
# implementation that the laptop's monitor and the host's guardian both run.


# ------------------------------------------------------------------------------------------ `gpubox cost`

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([dhm])$")


def parse_since(text: str, now: float | None = None) -> float:
    """``2026-11-01``, ``2026-11-01T09:30`` (local time unless it names a zone) or ``7d`` / ``12h`` / ``30m``
    ago, as a wall-clock timestamp."""
    from gpubox.errors import UsageError

    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        unit = {"d": 86400, "h": 3600, "m": 60}[relative.group(2)]
        # Further back than the ledger can go (before 1970) is "everything": never an overflow later on.
        return max(0.0, (time.time() if now is None else now) - float(relative.group(1)) * unit)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f'--since: expected a date like 2026-11-01, a time like 2026-11-01T09:30, or 7d / 12h / 30m, got "{text}"'
        ) from None
    try:
        return max(0.0, moment.timestamp())
    except (ValueError, OverflowError):  # a date in year 1: before anything the ledger holds
        return 0.0


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def cost_report(
    state: State,
    hosts: HostsConfig,
    price_of: PriceOf,
    *,
    since: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The `gpubox cost --json` document: per host its price (from *price_of*), hours and spend (in the
    window), budgets, per-run rows (once runs exist) and totals."""
    now = time.time() if now is None else now
    intervals = state.billing()
    by_host: dict[str, list[BillingInterval]] = {}
    for interval in intervals:
        by_host.setdefault(interval.host, []).append(interval)
    alerts = state.budget_alerts()
    names = list(hosts.hosts) + [name for name in by_host if name not in hosts.hosts]
    rows = []
    total = HostSpend()
    estimated_any = False
    for name in names:
        host = hosts.hosts.get(name)
        spend = host_spend(by_host.get(name, []), now, since)
        row: dict[str, Any] = {
            "name": name,
            "provider": host.provider if host else None,
            "configured": bool(host),
        }
        if host is not None:
            record = state.host(name)
            price = price_of(host, record.probe if record else None)
            row |= {
                "price_per_hour": price.amount,
                "price_source": price.source,
                "price_estimate": price.estimate,
            }
            estimated_any = estimated_any or price.estimate
        else:
            row |= {
                "price_per_hour": None,
                "price_source": "not in hosts.toml any more",
                "price_estimate": False,
            }
        budget = None
        if host is not None and host.budget_usd is not None:
            all_time = host_spend(by_host.get(name, []), now).spent_usd
            budget = Budget(name, host.budget_usd, all_time).document(alerts) | {"on_budget": host.on_budget}
        row |= {
            "hours": round(spend.seconds / 3600.0, 6),
            "spent_usd": round(spend.spent_usd, 4),
            "unpriced_hours": round(spend.unpriced_seconds / 3600.0, 6),
            "spent_includes_estimate": spend.estimated,
            "billing_now": spend.billing_now,
            "budget": budget,
        }
        estimated_any = estimated_any or spend.estimated
        rows.append(row)
        total = HostSpend(
            total.seconds + spend.seconds,
            total.spent_usd + spend.spent_usd,
            total.unpriced_seconds + spend.unpriced_seconds,
            total.estimated or spend.estimated,
            total.billing_now or spend.billing_now,
        )
    total_budget = None
    if hosts.total_budget_usd is not None:
        all_time = host_spend(intervals, now).spent_usd
        total_budget = Budget(TOTAL_SCOPE, hosts.total_budget_usd, all_time).document(alerts)
    catalog = load_catalog()
    return {
        "currency": "USD",
        "since": None if since is None else _iso(since),
        "at": _iso(now),
        "hosts": rows,
        "runs": run_rows(state, now, since),
        "totals": {
            "hours": round(total.seconds / 3600.0, 6),
            "spent_usd": round(total.spent_usd, 4),
            "unpriced_hours": round(total.unpriced_seconds / 3600.0, 6),
            "spent_includes_estimate": total.estimated,
        },
        "total_budget": total_budget,
        "catalog": {"as_of": catalog.as_of} if estimated_any else None,
    }


RUNS_SHOWN = 5
"""Runs listed per host by `gpubox cost` (those that cost the most); ``--all`` lists every one."""


def render_cost(document: Mapping[str, Any], *, all_runs: bool = False) -> list[str]:
    """The text form of :func:`cost_report`: hosts, totals, then the runs grouped by host (each host's count,
    hours and spend, and the :data:`RUNS_SHOWN` that cost the most; every run with *all_runs*)."""
    lines = [
        f"cost since {document['since'][:16].replace('T', ' ')}"
        if document["since"]
        else "cost over all the time gpubox recorded"
    ]
    header = ["HOST", "PROVIDER", "$/H", "HOURS", "SPENT", "BUDGET"]
    table: list[list[str]] = []

    def money(amount: float | None, estimated: bool) -> str:
        if amount is None:
            return "?"  # a run on a host gpubox never held up: no price in the ledger for its time
        return ("~" if estimated else "") + format_usd(amount)

    def budget_cell(budget: Mapping[str, Any] | None) -> str:
        if not budget:
            return ""
        mark = " !" if budget["percent"] >= 100 else ""
        return f"{budget['percent']:.0f} % of {format_usd(budget['budget_usd'])}{mark}"

    for row in document["hosts"]:
        price = row["price_per_hour"]
        rate = "?" if price is None else money(price, row["price_estimate"])
        spent = money(row["spent_usd"], row["spent_includes_estimate"])
        if row["unpriced_hours"]:
            spent += f" (+{row['unpriced_hours']:.2f} h unpriced)"
        name = row["name"] + ("" if row["configured"] else " (gone)")
        table.append(
            [name, row["provider"] or "-", rate, f"{row['hours']:.2f}", spent, budget_cell(row["budget"])]
        )
    totals = document["totals"]
    table.append(
        [
            "total",
            "",
            "",
            f"{totals['hours']:.2f}",
            money(totals["spent_usd"], totals["spent_includes_estimate"]),
            budget_cell(document["total_budget"]) + (" (all hosts)" if document["total_budget"] else ""),
        ]
    )
    lines += columns(header, table)
    lines += _run_groups(document["runs"], money, all_runs=all_runs)
    if document["catalog"]:
        lines.append(
            f"~ estimated from gpubox's price catalog ({document['catalog']['as_of']}); "
            "set price_per_hour in hosts.toml for exact figures"
        )
    return lines


def _run_groups(
    runs: Sequence[Mapping[str, Any]], money: Callable[[float, bool], str], *, all_runs: bool
) -> list[str]:
    if not runs:
        return []
    by_host: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_host.setdefault(str(run["host"]), []).append(run)
    lines = ["", "runs, by host:" if all_runs else f"runs, by host (the {RUNS_SHOWN} dearest of each):"]
    hidden = 0

    def spend(group: list[Mapping[str, Any]]) -> float:
        return sum(run["spent_usd"] or 0.0 for run in group)

    for host, group in sorted(by_host.items(), key=lambda item: (-spend(item[1]), item[0])):
        spent = spend(group)
        estimated = any(run["spent_is_estimate"] for run in group)
        hours = sum(run["hours"] for run in group)
        count = f"{len(group)} run{'s' if len(group) != 1 else ''}"
        lines.append(f"  {host}: {count}, {hours:.2f} h, {money(spent, estimated)}")
        priced = [run for run in group if all_runs or (run["spent_usd"] or 0.0) > 0]
        if not all_runs:
            # The dearest first; a run still going counts up to now.
            priced.sort(key=lambda run: (-(run["spent_usd"] or 0.0), str(run["id"])))
            hidden += len(group) - min(len(priced), RUNS_SHOWN)
            priced = priced[:RUNS_SHOWN]
        shown = [
            [
                f"    {run['id']}",
                str(run["state"]),
                f"{run['hours']:.2f} h",
                "?" if run["spent_usd"] is None else money(run["spent_usd"], run["spent_is_estimate"]),
                str(run["command"])[:60],
            ]
            for run in priced
        ]
        if shown:
            lines += columns(["", "", "", "", ""], shown)[1:]
    if hidden:
        lines.append(f"  ({hidden} more not listed; `gpubox cost --all` lists every run)")
    return lines
