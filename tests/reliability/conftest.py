"""Fixtures shared by the reliability tests: one namespace host, and counters of what the checks covered.

Set GPUBOX_RELIABILITY_COUNTERS=/path/file.json to have every test add what it injected and checked there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Counters
from tests.support.netns import NetnsHost, NetnsHostsFactory


@pytest.fixture
def lab(netns_hosts: NetnsHostsFactory) -> NetnsHost:
    """One host in its own network namespace (skipped, with the reason, where namespaces need root)."""
    (host,) = netns_hosts(1)
    return host


@pytest.fixture
def counters() -> Iterator[Counters]:
    found = Counters()
    yield found
    target = os.environ.get("GPUBOX_RELIABILITY_COUNTERS")
    if target:
        found.write(Path(target))
