"""Instances gpubox rented from cloud providers, recorded the moment the provider gives an id (before waiting
for SSH), so a machine that never came up is still known, shown as billing and terminable."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gpubox.record import record
from gpubox.state.database import Database

__all__ = ["InstanceRecord", "InstanceTables"]


@record
class InstanceRecord:
    """A rented instance as gpubox recorded it; the provider's API stays the truth about whether it runs."""

    provider: str
    instance_id: str
    host: str
    name: str
    api_url: str
    launched_at: float
    price_per_hour: float | None
    gpu: str | None
    region: str | None
    ssh_host: str | None
    ssh_port: int | None
    state: str
    """``launching`` (id known, not yet answering SSH), ``running``, ``stopped`` (its disk kept, its GPU not
    billed), ``terminate-failed``, ``ended``."""
    ended_at: float | None
    end_reason: str | None
    stopped_at: float | None = None
    """When it stopped, where known (the provider's record, else when gpubox found it stopped)."""
    stop_reason: str | None = None

    @property
    def billing(self) -> bool:
        """Whether its machine bills by the hour (a stopped one bills only for its disk, at the provider's
        storage rate, which gpubox does not count)."""
        return self.ended_at is None and self.state != "stopped"

    @property
    def stopped(self) -> bool:
        return self.ended_at is None and self.state == "stopped"


_INSTANCE_COLUMNS = (
    "provider, instance_id, host, name, api_url, launched_at, price_per_hour, gpu, region, ssh_host, ssh_port, "
    "state, ended_at, end_reason, stopped_at, stop_reason"
)


def _instance(row: Sequence[Any]) -> InstanceRecord:
    return InstanceRecord(
        provider=str(row[0]),
        instance_id=str(row[1]),
        host=str(row[2]),
        name=str(row[3]),
        api_url=str(row[4]),
        launched_at=float(row[5]),
        price_per_hour=None if row[6] is None else float(row[6]),
        gpu=row[7],
        region=row[8],
        ssh_host=row[9],
        ssh_port=None if row[10] is None else int(row[10]),
        state=str(row[11]),
        ended_at=None if row[12] is None else float(row[12]),
        end_reason=row[13],
        stopped_at=None if row[14] is None else float(row[14]),
        stop_reason=row[15],
    )


class InstanceTables(Database):
    """The instances table (part of :class:`gpubox.state.State`)."""

    def record_instance(
        self,
        *,
        provider: str,
        instance_id: str,
        host: str,
        name: str,
        api_url: str,
        price_per_hour: float | None,
        gpu: str | None = None,
        region: str | None = None,
        at: float | None = None,
    ) -> None:
        """Write down a just-launched instance; called before anything else can fail."""
        at = time.time() if at is None else at
        with self.transaction():
            self.db.execute(
                f"INSERT OR REPLACE INTO instances({_INSTANCE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 'launching', NULL, NULL, NULL, NULL)",
                (provider, instance_id, host, name, api_url, at, price_per_hour, gpu, region),
            )

    def update_instance(
        self,
        provider: str,
        instance_id: str,
        *,
        instance_state: str | None = None,
        ssh_host: str | None = None,
        ssh_port: int | None = None,
        price_per_hour: float | None = None,
    ) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE instances SET state = COALESCE(?, state), ssh_host = COALESCE(?, ssh_host), "
                "ssh_port = COALESCE(?, ssh_port), price_per_hour = COALESCE(?, price_per_hour) "
                "WHERE provider = ? AND instance_id = ?",
                (instance_state, ssh_host, ssh_port, price_per_hour, provider, instance_id),
            )

    def stop_instance(self, provider: str, instance_id: str, reason: str, at: float | None = None) -> bool:
        """The instance stopped with its disk kept; True the first time it is recorded so."""
        with self.transaction():
            cursor = self.db.execute(
                "UPDATE instances SET state = 'stopped', stopped_at = ?, stop_reason = ? "
                "WHERE provider = ? AND instance_id = ? AND ended_at IS NULL AND state != 'stopped'",
                (time.time() if at is None else at, reason, provider, instance_id),
            )
            return cursor.rowcount > 0

    def resume_instance(self, provider: str, instance_id: str) -> None:
        """A stopped instance was started again: it is launching (billing) until it answers SSH."""
        with self.transaction():
            self.db.execute(
                "UPDATE instances SET state = 'launching', stopped_at = NULL, stop_reason = NULL "
                "WHERE provider = ? AND instance_id = ? AND ended_at IS NULL",
                (provider, instance_id),
            )

    def end_instance(self, provider: str, instance_id: str, reason: str, at: float | None = None) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE instances SET state = 'ended', ended_at = ?, end_reason = ? "
                "WHERE provider = ? AND instance_id = ? AND ended_at IS NULL",
                (time.time() if at is None else at, reason, provider, instance_id),
            )

    def current_instance(self, host: str) -> InstanceRecord | None:
        """The newest instance recorded for *host* that has not ended."""
        row = self.db.execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE host = ? AND ended_at IS NULL "
            "ORDER BY launched_at DESC LIMIT 1",
            (host,),
        ).fetchone()
        return _instance(row) if row else None

    def kept_instances(self) -> list[InstanceRecord]:
        """Every recorded instance the provider still keeps (running, launching or stopped), oldest first."""
        rows = self.db.execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE ended_at IS NULL ORDER BY launched_at"
        ).fetchall()
        return [_instance(row) for row in rows]

    def instance(self, provider: str, instance_id: str) -> InstanceRecord | None:
        row = self.db.execute(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE provider = ? AND instance_id = ?",
            (provider, instance_id),
        ).fetchone()
        return _instance(row) if row else None
