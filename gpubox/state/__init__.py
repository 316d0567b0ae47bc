"""The local state database: what gpubox knows between commands.

One SQLite file, ``gpubox.db`` in the user's state folder. Open it with :func:`open_state`; the
:class:`State` it returns has every table's reads and writes as methods, and every read that returns rows
returns one of the records below. Where things are:

- ``database.py``: the schema, its migrations, the connection (WAL, busy timeout, transactions)
- ``hosts.py``: hosts and their last probe, the interpreter each host's ``python`` is
- ``instances.py``: instances rented from cloud providers
- ``holders.py``: supervisors holding hosts up, their monitor reports, open shells, tunnels
- ``billing.py``: the money ledger and the budget warnings given
- ``runs.py``: what gpubox last heard about each run
- ``ancestors.py``: the sync ancestor, per host and project
- ``store.py``: :class:`State`, all of the above on one connection
"""

from gpubox.state.ancestors import AncestorEntry
from gpubox.state.billing import DIED_REASON, BillingInterval, BudgetAlert, PricedInterval
from gpubox.state.database import MIGRATIONS
from gpubox.state.holders import (
    MonitorReport,
    Supervisor,
    TunnelRecord,
    holder_alive,
    pid_alive,
    process_token,
)
from gpubox.state.hosts import HostRecord
from gpubox.state.instances import InstanceRecord
from gpubox.state.runs import RunRecord
from gpubox.state.store import State, open_state

__all__ = [
    "DIED_REASON",
    "MIGRATIONS",
    "AncestorEntry",
    "BillingInterval",
    "BudgetAlert",
    "HostRecord",
    "InstanceRecord",
    "MonitorReport",
    "PricedInterval",
    "RunRecord",
    "State",
    "Supervisor",
    "TunnelRecord",
    "holder_alive",
    "open_state",
    "pid_alive",
    "process_token",
]
