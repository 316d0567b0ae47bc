"""Reliability: faults (links, sshd, killed gpubox, full disks) and bad input, with invariant checks."""
