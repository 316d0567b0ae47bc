"""Placeholder replaced by the network-namespace host fixture."""
