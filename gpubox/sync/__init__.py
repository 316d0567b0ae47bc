"""Live one-way-safe sync of the project folder to the host (ignore rules, scan, watch, push, pull)."""
