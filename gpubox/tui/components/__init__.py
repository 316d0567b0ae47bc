"""Widgets and cell renderers of the dashboard: they draw snapshots, nothing else."""
