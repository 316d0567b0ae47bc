"""Multi-host runs: one worker per host, wired for TensorFlow's own distributed engine (and for torchrun).

``gpubox run --hosts a,b -- python train.py`` syncs the project and builds its env on every host, then starts
one ordinary detached run (``r-N``, see :mod:`gpubox.train.runs`) per host, each with ``TF_CONFIG`` set for
``tf.distribute.MultiWorkerMirroredStrategy``::

    {"cluster": {"worker": ["10.0.0.5:41234", "10.0.0.6:40211"]}, "task": {"type": "worker", "index": 1}}

and ``GPUBOX_NODE_RANK``, ``GPUBOX_NUM_NODES``, ``GPUBOX_NODE_IPS`` (comma-separated), ``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK`` (one process per node: torchrun users pass ``--nnodes
$GPUBOX_NUM_NODES --node_rank $GPUBOX_NODE_RANK --master_addr $MASTER_ADDR --master_port $MASTER_PORT``), plus
``GPUBOX_MULTIHOST_RUN``, the id of the whole run.

Where the other workers reach a host: the IP gpubox connects to when hosts.toml (or ``~/.ssh/config``) gives
one that is not a loopback address; otherwise (a DNS name, an alias, the ``local`` host) the address the host
itself sends from toward another worker, which its agent finds with a UDP ``connect`` (no packet is sent).
Each worker listens on a TCP port its agent found free a moment before (``MASTER_PORT`` is a second one on
worker 0): a port taken in between makes the worker fail to start, and the run fails like any other.

The run is one id, ``m-N``. Its record (which ``r-N`` on which host is which worker) is a small JSON file in
gpubox's local state folder, ``multihost/m-N.json``; each part's state, log and exit code stay on its host,
which remains the source of truth. The run's state is derived from its parts: ``failed`` as soon as one part
failed or was lost (its exit code is the run's), else ``running`` while one runs, else ``stopped`` when one
was stopped, else ``succeeded``.

Fail fast: when a worker fails, the others would wait for it in their collectives forever, so gpubox stops
them. Whoever is watching does it: ``run -f`` and ``logs m-N -f`` while they stream, and a small detached
watcher process that ``run --hosts`` leaves behind (it polls the parts every second and exits once they have
all ended, or after ten minutes in which no host of the run answered). A run whose watcher could not do its
job (the laptop was off) is finished by the next ``logs m-N -f`` or ``stop m-N``.

Where things are: ``record.py`` (the run's record and its marks), ``wiring.py`` (``--hosts``, TF_CONFIG and the
torchrun variables), ``launch.py`` (``run --hosts``), ``status.py`` (the run's state, fail-fast, listings),
``logs.py`` (prefixed, followed logs), ``watcher.py`` (the detached watcher); the sessions to the hosts come
from :class:`gpubox.remote.pool.SessionPool`.
"""

from typing import TYPE_CHECKING

from gpubox.lazy import lazy_exports

# The names below load their module on first use (PEP 562), not with the package: `gpubox runs` needs the listing
# helpers of status.py, not the launcher, the log streams and the watcher.
if TYPE_CHECKING:
    from gpubox.train.multihost.launch import launch, run_on_hosts
    from gpubox.train.multihost.logs import follow_logs, tail_offsets
    from gpubox.train.multihost.record import (
        MultiRun,
        Part,
        all_runs,
        check_multi_id,
        is_multi_id,
        load_run,
        new_run,
        save_run,
    )
    from gpubox.train.multihost.status import (
        MultiStatus,
        aggregate,
        exit_code,
        fetch_status,
        split_listing,
        status_of,
        statuses,
        stop_multi,
        table_lines,
    )
    from gpubox.train.multihost.watcher import spawn_watcher, watch
    from gpubox.train.multihost.wiring import host_port, pick_hosts, worker_env

_WHERE = {
    "MultiRun": "record",
    "MultiStatus": "status",
    "Part": "record",
    "aggregate": "status",
    "all_runs": "record",
    "check_multi_id": "record",
    "exit_code": "status",
    "fetch_status": "status",
    "follow_logs": "logs",
    "host_port": "wiring",
    "is_multi_id": "record",
    "launch": "launch",
    "load_run": "record",
    "new_run": "record",
    "pick_hosts": "wiring",
    "run_on_hosts": "launch",
    "save_run": "record",
    "spawn_watcher": "watcher",
    "split_listing": "status",
    "status_of": "status",
    "statuses": "status",
    "stop_multi": "status",
    "table_lines": "status",
    "tail_offsets": "logs",
    "watch": "watcher",
    "worker_env": "wiring",
}


__getattr__ = lazy_exports(__name__, _WHERE)

__all__ = [
    "MultiRun",
    "MultiStatus",
    "Part",
    "aggregate",
    "all_runs",
    "check_multi_id",
    "exit_code",
    "fetch_status",
    "follow_logs",
    "host_port",
    "is_multi_id",
    "launch",
    "load_run",
    "new_run",
    "pick_hosts",
    "run_on_hosts",
    "save_run",
    "spawn_watcher",
    "split_listing",
    "status_of",
    "statuses",
    "stop_multi",
    "table_lines",
    "tail_offsets",
    "watch",
    "worker_env",
]
