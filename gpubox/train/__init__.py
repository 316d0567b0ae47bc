"""Runs on the host: environments, detached runs, logs, services, multi-host launch."""
