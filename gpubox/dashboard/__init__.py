"""The dashboard's data: what is up, what runs where, what it costs, as immutable snapshots. No Textual here.

- :mod:`~gpubox.dashboard.views`: the records the dashboard shows (hosts, GPUs, runs, the selected run's log and
  curves, sync, tunnels, notifications) and the :class:`~gpubox.dashboard.views.DashboardSnapshot` holding them.
- :mod:`~gpubox.dashboard.read`: the state database (never the network) and one host's answer read into records.
- :mod:`~gpubox.dashboard.poller`: one agent round trip per host per refresh, over a session of its own, with
  backoff while a host does not answer; and when each poll and state read happens.
- :mod:`~gpubox.dashboard.model`: both merged into snapshots and notifications, with the GPU history, the
  selected run's log and its curves.

:mod:`gpubox.tui` draws the snapshots and acts through :mod:`gpubox.actions`.
"""
