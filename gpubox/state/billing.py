"""The money ledger: billing intervals (the time gpubox held each host up) and the budget warnings given.

A supervisor opens an interval with itself as holder, writes a heartbeat (time held so far, measured on a clock
that never jumps) every few seconds, and closes it with the final time when it lets go. An interval whose
holder died (kill -9, a crash, power loss) is closed at its last heartbeat by whoever sees it next: nothing
stays open forever, and no time is counted twice.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

from gpubox.record import record
from gpubox.state.database import Database
from gpubox.state.holders import holder_alive

__all__ = [
    "DIED_REASON",
    "EXTRAPOLATE_MAX_SECONDS",
    "BillingInterval",
    "BillingTables",
    "BudgetAlert",
    "PricedInterval",
]

EXTRAPOLATE_MAX_SECONDS = 60.0
"""How far past an open interval's last heartbeat a reader counts while its holder lives (the holder writes one
every few seconds; a holder that stalls longer catches up at its next heartbeat)."""
DIED_REASON = "gpubox holding the host died; closed at its last heartbeat"


@record
class BillingInterval:
    """One stretch of time a host was billing, as the ledger holds it.

    Its length is ``held_seconds``, measured by the holder on a clock that never jumps (wall-clock changes do
    not stretch, shrink or repeat it); ``started_at``, ``heartbeat_at`` and ``ended_at`` are wall-clock times
    for showing and for ``--since``.
    """

    id: int
    host: str
    price_per_hour: float | None
    """US dollars per hour; None when unknown (the hours still count)."""
    price_source: str | None
    estimate: bool
    started_at: float
    held_seconds: float
    heartbeat_at: float | None
    ended_at: float | None
    holder_pid: int | None
    end_reason: str | None

    @property
    def open(self) -> bool:
        return self.ended_at is None

    def seconds(self, now: float | None = None) -> float:
        """Billed seconds so far: what the holder measured, plus, while open, the time since its last heartbeat
        (never negative, and at most :data:`EXTRAPOLATE_MAX_SECONDS` when a holder is known)."""
        if self.ended_at is not None:
            return self.held_seconds
        now = time.time() if now is None else now
        if self.holder_pid is None:
            return max(self.held_seconds, now - self.started_at, 0.0)
        since_beat = now - (self.heartbeat_at if self.heartbeat_at is not None else self.started_at)
        return self.held_seconds + min(max(0.0, since_beat), EXTRAPOLATE_MAX_SECONDS)

    def spent_usd(self, now: float | None = None) -> float:
        return (self.price_per_hour or 0.0) * self.seconds(now) / 3600.0


class PricedInterval(NamedTuple):
    """A billing interval with a known price, reduced to when and at what price."""

    host: str
    price_per_hour: float
    started_at: float
    ended_at: float | None
    """None while open."""


class BudgetAlert(NamedTuple):
    """A budget warning given: *scope* (a host name, or ``*`` for all hosts) reached *threshold* % of
    *budget_usd*, having spent *spent_usd*, at *at*."""

    scope: str
    threshold: int
    budget_usd: float
    spent_usd: float
    at: float


class BillingTables(Database):
    """The billing and budget_alerts tables (part of :class:`gpubox.state.State`)."""

    _BILLING_COLUMNS = (
        "id, host, price_per_hour, price_source, estimate, started_at, held_seconds, heartbeat_at, ended_at, "
        "holder_pid, end_reason"
    )

    def open_billing(
        self,
        host: str,
        price_per_hour: float | None,
        at: float | None = None,
        *,
        holder_pid: int | None = None,
        holder_token: str | None = None,
        price_source: str | None = None,
        estimate: bool = False,
    ) -> int:
        """Start a billing interval for *host* held by *holder_pid*, unless one is already open; return its id.

        Intervals left open by a dead holder are closed first (at their last heartbeat); an open interval with
        no holder (recorded without one) is closed now when a holder takes over."""
        at = time.time() if at is None else at
        with self.transaction():
            self._repair_billing(host)
            row = self.db.execute(
                "SELECT id, holder_pid FROM billing WHERE host = ? AND ended_at IS NULL ORDER BY id", (host,)
            ).fetchone()
            if row and (holder_pid is None or row[1] is not None):
                return int(row[0])
            if row:
                self._close_open(host, at, "taken over by a gpubox process")
            cursor = self.db.execute(
                "INSERT INTO billing(host, price_per_hour, price_source, estimate, started_at, heartbeat_at, "
                "holder_pid, holder_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (host, price_per_hour, price_source, int(estimate), at, at, holder_pid, holder_token),
            )
            return int(cursor.lastrowid or 0)

    def heartbeat_billing(
        self,
        interval_id: int,
        held_seconds: float,
        at: float | None = None,
        *,
        holder_pid: int | None = None,
        holder_token: str | None = None,
    ) -> bool:
        """The holder's heartbeat: *held_seconds* so far (never decreases). False when the interval was closed
        meanwhile (by `gpubox down`, say), so the holder knows to open a new one if it still holds the host.
        With *holder_pid*, that process becomes the interval's holder (of the processes holding one host for
        several projects, the one that beat last, or the one a leaving holder hands it to)."""
        at = time.time() if at is None else at
        with self.transaction():
            if holder_pid is None:
                cursor = self.db.execute(
                    "UPDATE billing SET held_seconds = MAX(held_seconds, ?), heartbeat_at = ? "
                    "WHERE id = ? AND ended_at IS NULL",
                    (max(0.0, held_seconds), at, interval_id),
                )
            else:
                cursor = self.db.execute(
                    "UPDATE billing SET held_seconds = MAX(held_seconds, ?), heartbeat_at = ?, holder_pid = ?, "
                    "holder_token = ? WHERE id = ? AND ended_at IS NULL",
                    (max(0.0, held_seconds), at, holder_pid, holder_token, interval_id),
                )
            return cursor.rowcount == 1

    def billing_interval(self, interval_id: int) -> BillingInterval | None:
        row = self.db.execute(
            f"SELECT {self._BILLING_COLUMNS} FROM billing WHERE id = ?", (interval_id,)
        ).fetchone()
        return None if row is None else self._interval(row)

    def end_billing(
        self, interval_id: int, held_seconds: float, at: float | None = None, reason: str = "released"
    ) -> None:
        """The holder closes its own interval with the final time held."""
        at = time.time() if at is None else at
        with self.transaction():
            self.db.execute(
                "UPDATE billing SET held_seconds = MAX(held_seconds, ?), heartbeat_at = ?, ended_at = ?, "
                "end_reason = ? WHERE id = ? AND ended_at IS NULL",
                (max(0.0, held_seconds), at, at, reason, interval_id),
            )

    def close_billing(self, host: str, at: float | None = None, reason: str = "closed") -> None:
        """Close *host*'s open intervals from outside their holder (`gpubox down`, after stopping it)."""
        at = time.time() if at is None else at
        with self.transaction():
            self._repair_billing(host)
            self._close_open(host, at, reason)

    def _close_open(self, host: str, at: float, reason: str) -> None:
        # No holder: the wall clock is all there is. A live holder (rare: it is normally stopped first): its
        # time held plus the time since its heartbeat, never negative.
        self.db.execute(
            "UPDATE billing SET held_seconds = CASE WHEN holder_pid IS NULL "
            "THEN MAX(held_seconds, ? - started_at, 0) "
            "ELSE held_seconds + MIN(MAX(? - COALESCE(heartbeat_at, started_at), 0), ?) END, "
            "ended_at = ?, end_reason = ? WHERE host = ? AND ended_at IS NULL",
            (at, at, EXTRAPOLATE_MAX_SECONDS, at, reason, host),
        )

    def record_guardian_stop(self, host: str, at: float, reason: str) -> bool:
        """The host's guardian stopped *host* at *at* after its holder died: the interval that died with the
        holder (closed at its last heartbeat) billed on until then. True when an interval was extended."""
        with self.transaction():
            self._repair_billing(host)
            row = self.db.execute(
                "SELECT id, ended_at, end_reason FROM billing WHERE host = ? AND started_at <= ? "
                "ORDER BY started_at DESC, id DESC LIMIT 1",
                (host, at),
            ).fetchone()
            if row is None or row[2] != DIED_REASON or row[1] is None or float(row[1]) > at:
                return False
            self.db.execute(
                "UPDATE billing SET held_seconds = held_seconds + ?, heartbeat_at = ?, ended_at = ?, end_reason = ? "
                "WHERE id = ?",
                (at - float(row[1]), at, at, reason, row[0]),
            )
            return True

    def repair_billing(self, host: str | None = None) -> int:
        """Close intervals whose holder is gone, at their last heartbeat; return how many."""
        with self.transaction():
            return self._repair_billing(host)

    def _repair_billing(self, host: str | None) -> int:
        query = "SELECT id, holder_pid, holder_token FROM billing WHERE ended_at IS NULL AND holder_pid IS NOT NULL"
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " AND host = ?"
            args = (host,)
        dead = [row[0] for row in self.db.execute(query, args) if not holder_alive(row[1], row[2])]
        for interval_id in dead:
            self.db.execute(
                "UPDATE billing SET ended_at = COALESCE(heartbeat_at, started_at + held_seconds), end_reason = ? "
                "WHERE id = ?",
                (DIED_REASON, interval_id),
            )
        return len(dead)

    def billing(self, host: str | None = None, *, repair: bool = True) -> list[BillingInterval]:
        """The ledger, oldest first; intervals of dead holders are closed on the way (unless *repair* is off)."""
        if repair and self._has_dead_holders(host):
            self.repair_billing(host)
        query = f"SELECT {self._BILLING_COLUMNS} FROM billing"
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " WHERE host = ?"
            args = (host,)
        return [self._interval(r) for r in self.db.execute(query + " ORDER BY started_at, id", args)]

    @staticmethod
    def _interval(r: Any) -> BillingInterval:
        return BillingInterval(
            id=int(r[0]),
            host=str(r[1]),
            price_per_hour=None if r[2] is None else float(r[2]),
            price_source=r[3],
            estimate=bool(r[4]),
            started_at=float(r[5]),
            held_seconds=float(r[6]),
            heartbeat_at=None if r[7] is None else float(r[7]),
            ended_at=None if r[8] is None else float(r[8]),
            holder_pid=None if r[9] is None else int(r[9]),
            end_reason=r[10],
        )

    def _has_dead_holders(self, host: str | None) -> bool:
        query = (
            "SELECT holder_pid, holder_token FROM billing WHERE ended_at IS NULL AND holder_pid IS NOT NULL"
        )
        args: tuple[Any, ...] = ()
        if host is not None:
            query += " AND host = ?"
            args = (host,)
        return any(not holder_alive(pid, token) for pid, token in self.db.execute(query, args))

    def billing_intervals(self, host: str | None = None) -> list[PricedInterval]:
        """The priced intervals, oldest first."""
        return [
            PricedInterval(i.host, i.price_per_hour, i.started_at, i.ended_at)
            for i in self.billing(host)
            if i.price_per_hour is not None
        ]

    # -- budget warnings (each threshold of each budget once)

    def record_budget_alert(
        self, scope: str, threshold: int, budget_usd: float, spent_usd: float, at: float | None = None
    ) -> bool:
        """Record that *scope* (a host name, or ``*`` for all hosts) reached *threshold* % of *budget_usd*;
        True only the first time, so each warning is given once even with several gpubox processes."""
        with self.transaction():
            cursor = self.db.execute(
                "INSERT OR IGNORE INTO budget_alerts(scope, threshold, budget_usd, spent_usd, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (scope, threshold, budget_usd, spent_usd, time.time() if at is None else at),
            )
            return cursor.rowcount == 1

    def budget_alerts(self, scope: str | None = None) -> list[BudgetAlert]:
        """The warnings given, oldest first."""
        query = "SELECT scope, threshold, budget_usd, spent_usd, at FROM budget_alerts"
        args: tuple[Any, ...] = ()
        if scope is not None:
            query += " WHERE scope = ?"
            args = (scope,)
        return [
            BudgetAlert(str(s), int(t), float(b), float(p), float(a))
            for s, t, b, p, a in self.db.execute(query + " ORDER BY at, threshold", args)
        ]
