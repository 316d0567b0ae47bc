"""The state database as one object: :class:`State` has the reads and writes of every table."""

from __future__ import annotations

from pathlib import Path

from gpubox import paths
from gpubox.state.ancestors import AncestorTables
from gpubox.state.billing import BillingTables
from gpubox.state.holders import HolderTables
from gpubox.state.hosts import HostTables
from gpubox.state.instances import InstanceTables
from gpubox.state.runs import RunTables

__all__ = ["DB_NAME", "State", "open_state"]

DB_NAME = "gpubox.db"


class State(HostTables, InstanceTables, HolderTables, BillingTables, RunTables, AncestorTables):
    """A connection to the state database; cheap to open, safe to use from one thread.

    Each base class holds one family of tables (``gpubox/state/hosts.py``, ``billing.py``, ...), and
    :class:`gpubox.state.database.Database` the schema and the connection they share.
    """


def open_state(path: Path | None = None) -> State:
    return State(path or paths.state_dir() / DB_NAME)
