"""Snapshots of the dashboard (pytest-textual-snapshot): no hosts, one host with a training running, many hosts
and runs, each at 80×24 and 200×50. The data is synthetic and the clock fixed (tests/tui/synthetic.py), fed
through the real data layer; `--snapshot-update` regenerates the SVGs in __snapshots__/."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from gpubox.config import HostsConfig
from gpubox.dashboard.model import Dashboard
from gpubox.tui.app import GpuboxApp
from tests.tui import synthetic

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((200, 50), id="200x50")]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Clock times on screen ("unreachable since 10:12:01") in one time zone wherever the tests run."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _app(build: Callable[[], tuple[Dashboard, HostsConfig]]) -> GpuboxApp:
    model, hosts = build()
    model.take_events()  # notifications of the synthetic history would cover the panels
    return GpuboxApp(hosts, synthetic.project(), model=model, live=False)


@pytest.mark.parametrize("size", SIZES)
def test_no_hosts(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(_app(synthetic.empty), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_one_host_training(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(_app(synthetic.one_training), terminal_size=size)


@pytest.mark.parametrize("size", SIZES)
def test_many_hosts_and_runs(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(_app(synthetic.many_after), terminal_size=size)
