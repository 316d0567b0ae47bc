"""Cost to finish, for every active run: what it cost so far and what it will cost to finish (its ETA × the
host's $/h), and a warning, once per run and budget, when finishing would pass what is left of a budget.

`gpubox runs` computes it from the run listing it fetches; the supervisor holding a host runs a
:class:`RunMoneyWatch` that lists the project's runs every :data:`RUNS_SECONDS` and publishes them in its monitor
report, for `gpubox status` and the dashboard, and says each warning in the `up` terminal.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gpubox.cost import RunMoney, budgets_for, overrun_warnings, run_money
from gpubox.state import open_state
from gpubox.train.runs import list_runs

if TYPE_CHECKING:
    from gpubox.config import HostConfig, HostsConfig, ProjectConfig
    from gpubox.cost import HourlyPrice
    from gpubox.remote.session import HostSession
    from gpubox.train.runs import RunInfo

__all__ = ["RUNS_SECONDS", "RunMoneyWatch", "active_money", "money_lines"]

RUNS_SECONDS = 10.0
"""How often the supervisor lists its project's runs for their cost to finish."""


def active_money(
    runs: Sequence[RunInfo], host: HostConfig, hosts: HostsConfig | None, price: HourlyPrice, now: float
) -> tuple[list[RunMoney], list[tuple[str, str]]]:
    """The money of each active run of *runs*, and (run id, warning) for each budget one would pass."""
    money = [
        run_money(r.id, host.name, started_at=r.started_at, progress=r.progress, price=price, now=now)
        for r in runs
        if not r.finished
    ]
    warnings: list[tuple[str, str]] = []
    if money and (host.budget_usd is not None or (hosts is not None and hosts.total_budget_usd is not None)):
        with open_state() as state:
            budgets = budgets_for(host, hosts, state.billing(), now)
        warnings = [(m.run_id, text) for m in money for text in overrun_warnings(m, budgets)]
    return money, warnings


def money_lines(document: Sequence[dict[str, Any]] | None) -> list[str]:
    """`gpubox status`'s lines for the runs of a monitor report's ``runs`` part (none on a host that costs
    nothing, such as `local`: "$0.00 so far · — to finish" would only be noise there)."""
    lines = []
    for row in document or ():
        if row.get("price_per_hour") == 0:
            continue
        money = RunMoney(
            run_id=str(row.get("id")),
            host="",
            spent_usd=row.get("spent_usd"),
            to_finish_usd=row.get("to_finish_usd"),
            eta_seconds=row.get("eta_seconds"),
            price_per_hour=row.get("price_per_hour"),
            estimate=bool(row.get("estimate")),
            why=row.get("to_finish_why"),
        )
        lines.append(f"run       {money.line()}")
        lines += [f"  ! {text}" for text in row.get("warnings") or ()]
    return lines


class RunMoneyWatch:
    """The supervisor's view of its project's active runs and their cost to finish (a thread of its own)."""

    def __init__(
        self,
        session: HostSession,
        project: ProjectConfig,
        hosts: HostsConfig | None,
        price: HourlyPrice,
        *,
        say: Callable[[str], None],
        every: float = RUNS_SECONDS,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.project = project
        self.hosts = hosts
        self.price = price
        self.say = say
        self.every = every
        self.wall = wall
        self.stopping = threading.Event()
        self.rows: list[dict[str, Any]] = []
        self._told: set[tuple[str, str]] = set()

    def start(self) -> RunMoneyWatch:
        threading.Thread(target=self._loop, name="gpubox-run-money", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        while True:
            # A dropped link (the supervisor reconnects) or an odd answer: the next look tries again.
            with contextlib.suppress(Exception):
                self.look()
            if self.stopping.wait(self.every):
                return

    def look(self) -> None:
        host = self.session.host
        folders = [self.session.folder.path] if self.session.folder is not None else []
        runs = [r for r in list_runs(self.session) if r.belongs_to(self.project.id, folders)]
        money, warnings = active_money(runs, host, self.hosts, self.price, self.wall())
        said: dict[str, list[str]] = {}
        for run_id, text in warnings:
            said.setdefault(run_id, []).append(text)
            # Once per run and budget: the figures move at every look, the warning does not repeat.
            key = (run_id, text.rpartition(" left of ")[2])
            if key not in self._told:
                self._told.add(key)
                self.say(f"! {text}")
        self.rows = [{"id": m.run_id, **m.document(), "warnings": said.get(m.run_id, [])} for m in money]

    def document(self) -> list[dict[str, Any]]:
        return list(self.rows)
