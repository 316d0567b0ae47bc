"""The money ledger with injected clocks: restarts, kill -9, wall-clock jumps; budgets, idle window, run cost,
the price catalog and the schema migration of the billing table."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gpubox.config import HostConfig
from gpubox.cost import (
    BillingHold,
    Budget,
    HourlyPrice,
    catalog_estimate,
    host_spend,
    hourly_price,
    load_catalog,
    parse_since,
    run_cost,
    seconds_in_window,
)
from gpubox.errors import UsageError
from gpubox.remote.agent.host import IdleTracker, busy_reasons
from gpubox.remote.providers import host_price
from gpubox.state import DIED_REASON, MIGRATIONS, State

CAPTURES = Path(__file__).parents[1] / "data" / "nvidia-smi"
PRICE = HourlyPrice(1.29, "price_per_hour in hosts.toml")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _hold_for(
    hold: BillingHold, wall: Clock, mono: Clock, seconds: float, *, beat_every: float = 60.0
) -> None:
    """Let *seconds* pass for a holder that heartbeats every *beat_every* seconds."""
    done = 0.0
    while done < seconds:
        step = min(beat_every, seconds - done)
        wall.now += step
        mono.now += step
        done += step
        hold.beat()


def _cents(amount: float) -> float:
    return round(amount + 1e-9, 2)


def test_restart_kill_9_and_clock_jumps_are_exact_to_the_cent(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    wall, mono = Clock(1_800_000_000.0), Clock(5_000.0)

    def hold(pid: int) -> BillingHold:
        return BillingHold("box", PRICE, pid=pid, wall=wall, elapsed=mono, state_path=db).open()

    # 1. gpubox holds the host for 2 h and is restarted (a clean stop, then a new process).
    first = hold(os.getpid())
    _hold_for(first, wall, mono, 7200)
    first.close()
    wall.now += 600  # nobody held it for 10 min: not billed
    mono.now += 600

    # 2. The next gpubox is killed with SIGKILL after 1.5 h of heartbeats, 4 s after its last one.
    victim = subprocess.Popen(["sleep", "600"])
    try:
        second = hold(victim.pid)
        _hold_for(second, wall, mono, 5400)
        wall.now += 4
        mono.now += 4
    finally:
        victim.kill()
        victim.wait()
    with State(db) as state:
        open_before = [i for i in state.billing(repair=False) if i.open]
        assert [i.holder_pid for i in open_before] == [victim.pid]
        # Seen by the next reader: closed at its last heartbeat, not left open, not extended to now.
        killed = state.billing()[1]
        assert not killed.open and killed.end_reason == DIED_REASON
        assert killed.held_seconds == 5400 and killed.ended_at == killed.heartbeat_at
        assert killed.seconds(wall.now + 86400) == 5400

    # 3. A third gpubox holds it 30 min while the wall clock jumps back a day, then forward three days.
    third = hold(os.getpid())
    _hold_for(third, wall, mono, 600)
    wall.now -= 86400
    _hold_for(third, wall, mono, 600)
    with State(db) as state:
        live = state.billing()[-1]
        # While open and read with a wall clock behind its heartbeat, it never goes negative or backwards.
        assert live.seconds(wall.now - 3600) == 1200
    wall.now += 3 * 86400
    _hold_for(third, wall, mono, 600)
    third.close()

    with State(db) as state:
        intervals = state.billing()
        assert [i.held_seconds for i in intervals] == [7200, 5400, 1800]
        assert all(not i.open for i in intervals)
        spend = host_spend(intervals, now=wall.now + 10 * 86400)
        assert spend.seconds == 4 * 3600
        assert _cents(spend.spent_usd) == 5.16  # 4 h × $1.29
        # Reading again changes nothing (no double counting on repeated repairs).
        assert state.billing() == intervals


def test_a_reused_pid_is_not_taken_for_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    wall, mono = Clock(1000.0), Clock(0.0)
    hold = BillingHold("box", PRICE, pid=os.getpid(), wall=wall, elapsed=mono, state_path=db).open()
    _hold_for(hold, wall, mono, 60)
    with State(db) as state:
        # As if our pid had been handed to a new process after the holder died.
        state.db.execute("UPDATE billing SET holder_token = 'another-process'")
        (interval,) = state.billing()
    assert not interval.open and interval.held_seconds == 60


def test_an_interval_closed_by_someone_else_is_reopened_by_its_holder(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    wall, mono = Clock(1000.0), Clock(0.0)
    hold = BillingHold("box", PRICE, pid=os.getpid(), wall=wall, elapsed=mono, state_path=db).open()
    _hold_for(hold, wall, mono, 100)
    with State(db) as state:
        state.close_billing("box", at=wall.now, reason="gpubox down")
    _hold_for(hold, wall, mono, 50)
    hold.close()
    with State(db) as state:
        held = [i.held_seconds for i in state.billing()]
    # The beat after the outside close opens a new interval from then (at most one beat is not counted).
    assert held[0] == 100 and sum(held) <= 150 and len(held) == 2


def test_legacy_open_interval_without_holder_counts_wall_time(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        first = state.open_billing("box", 2.0, at=100.0)
        assert state.open_billing("box", 2.0, at=200.0) == first
        (interval,) = state.billing()
        assert interval.seconds(now=50.0) == 0.0
        assert interval.seconds(now=1900.0) == 1800.0
        # A holder taking over closes it now and starts its own.
        second = state.open_billing("box", 2.0, at=2000.0, holder_pid=os.getpid())
        assert second != first
        old, new = state.billing()
        assert (old.held_seconds, old.ended_at, new.open) == (1900.0, 2000.0, True)


def test_migration_keeps_the_billing_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with State(path, MIGRATIONS[:2]) as old:
        old.db.execute(
            "INSERT INTO billing(host, price_per_hour, started_at, ended_at) VALUES ('a', 2, 100, 1900)"
        )
        old.db.execute("INSERT INTO billing(host, price_per_hour, started_at) VALUES ('b', 1, 500)")
        old.db.execute(
            "INSERT INTO supervisors(host, pid, started_at, detached) VALUES ('b', ?, 500, 1)", (os.getpid(),)
        )
    with State(path) as state:
        assert state.schema_version == len(MIGRATIONS)
        a, b = state.billing()
    assert (a.host, a.price_per_hour, a.held_seconds, a.ended_at) == ("a", 2.0, 1800.0, 1900.0)
    assert (b.host, b.open, b.holder_pid) == ("b", True, os.getpid())
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'billing_v3'").fetchall() == []


def test_since_counts_only_the_part_of_an_interval_after_it(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        state.open_billing("box", 3.6, at=1000.0)
        state.close_billing("box", at=4600.0)  # 1 h
        (interval,) = state.billing()
    assert seconds_in_window(interval, now=9999.0) == 3600
    assert seconds_in_window(interval, now=9999.0, since=1900.0) == 2700
    assert seconds_in_window(interval, now=9999.0, since=5000.0) == 0
    assert host_spend([interval], now=9999.0, since=1900.0).spent_usd == pytest.approx(2.7)


def test_parse_since() -> None:
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("12h", now=1_000_000.0) == 1_000_000.0 - 12 * 3600
    assert parse_since("2026-11-01T00:00:00+00:00") == 1793491200.0
    with pytest.raises(UsageError, match=r'--since: expected a date like 2026-11-01.*got "last week"'):
        parse_since("last week")


# ----------------------------------------------------------------------------------------------- budgets


def test_budget_thresholds_compare_in_cents() -> None:
    assert Budget("box", 50.0, 24.99).reached == []
    assert Budget("box", 50.0, 25.0).reached == [50]
    assert Budget("box", 50.0, 40.0).reached == [50, 80]
    assert Budget("box", 50.0, 50.0).exhausted
    assert Budget("box", 0.3, 0.15).reached == [50]  # 0.15 / 0.3 is 0.4999… in floating point
    assert Budget("box", 10.0, 1.0).seconds_to_next(3600.0) == pytest.approx(4.0)
    assert Budget("box", 10.0, 10.0).seconds_to_next(3600.0) is None
    assert (
        Budget("*", 200.0, 100.0).describe()
        == "all hosts together cost $100.00, 50 % of the $200.00 total_budget_usd"
    )
    assert Budget("box", 50.0, 40.0).describe() == "box cost $40.00, 80 % of its $50.00 budget"
    assert Budget("box", 50.0, 40.02).describe(80) == "box reached 80 % of its $50.00 budget ($40.02 spent)"
    assert (
        Budget("*", 2.0, 2.01).describe(100)
        == "all hosts together used up the $2.00 total_budget_usd ($2.01 spent)"
    )


# -------------------------------------------------------------------------------------------------- idle


def test_idle_tracker_needs_the_whole_window() -> None:
    tracker = IdleTracker(60.0, max_gap=20.0)
    tracker.observe(0.0, [])
    tracker.observe(10.0, [])
    assert tracker.remaining(10.0) == 50.0 and not tracker.due(10.0)
    tracker.observe(20.0, ["GPU busy (90 % ≥ 5 %)"])  # any activity resets it
    assert tracker.remaining(20.0) is None
    tracker.observe(30.0, [])
    tracker.observe(40.0, [], last_activity=35.0)  # a sync batch at 35
    assert tracker.idle_since == 35.0
    tracker.observe(100.0, [])  # a 60 s gap (link down, laptop asleep): nobody saw the host meanwhile
    assert tracker.idle_since == 100.0
    for t in range(110, 170, 10):
        tracker.observe(float(t), [])
    assert tracker.due(160.0)


def test_busy_reasons() -> None:
    assert busy_reasons(gpu_percent=None, gpu_threshold=5) == []  # no GPU
    assert busy_reasons(gpu_percent=4, gpu_threshold=5) == []
    assert busy_reasons(gpu_percent=90, gpu_threshold=5) == ["GPU busy (90 % ≥ 5 %)"]
    assert busy_reasons(gpu_percent=0, gpu_threshold=5, active_runs=None, busy_kernels=None, shells=1) == [
        "1 interactive `gpubox ssh` shell open"
    ]
    assert busy_reasons(gpu_percent=0, gpu_threshold=5, active_runs=2, busy_kernels=1) == [
        "2 runs active",
        "1 Jupyter kernel busy",
    ]


# --------------------------------------------------------------------------------------------- run cost


def test_run_cost_is_duration_times_rate_split_over_hosts(tmp_path: Path) -> None:
    with State(tmp_path / "s.db") as state:
        state.open_billing("a", 2.0, at=0.0)
        state.close_billing("a", at=10_000.0)
        state.open_billing("b", None, at=0.0)
        state.open_billing("c", 1.79, at=0.0, price_source="estimate", estimate=True)
        a, b, c = (state.billing(h) for h in ("a", "b", "c"))
    single = run_cost(1000.0, 2800.0, {"a": a})
    assert single.seconds == 1800 and single.total_usd == pytest.approx(1.0) and not single.estimate
    multi = run_cost(1000.0, 4600.0, {"a": a, "c": c})
    assert multi.per_host == {"a": pytest.approx(2.0), "c": pytest.approx(1.79)} and multi.estimate
    assert run_cost(0.0, 3600.0, {"a": a, "b": b}).total_usd is None  # b's price is unknown


# ------------------------------------------------------------------------------------------------ prices


@pytest.mark.parametrize(
    ("capture", "price", "source"),
    [
        ("11_h200_550.txt", 3.59, "estimate: H200 at RunPod's $3.59/h, catalog 2026-11"),
        (
            "04_a100-sxm4-80gb-x4_555.txt",
            4 * 1.79,
            "estimate: 4× A100 80GB at Lambda's $1.79/h each, catalog 2026-11",
        ),
        (
            "01_h100-sxm-x8_565.txt",
            8 * 3.29,
            "estimate: 8× H100 SXM at Lambda's $3.29/h each, catalog 2026-11",
        ),
        ("03_l4_550.txt", 0.56004, "estimate: L4 at Google Cloud's $0.56/h, catalog 2026-11"),
        (
            "02_rtx4090-x8_550.txt",
            8 * 0.59,
            "estimate: 8× RTX 4090 at RunPod's $0.59/h each, catalog 2026-11",
        ),
    ],
)
def test_ssh_host_without_a_price_gets_a_catalog_estimate(capture: str, price: float, source: str) -> None:
    probe = {"nvidia_smi": {"available": True, "output": (CAPTURES / capture).read_text()}}
    found = host_price(HostConfig(name="box"), probe)
    assert found.estimate and found.amount == pytest.approx(price) and found.source == source
    assert found.label().startswith("~$")
    # price_per_hour in hosts.toml wins over the estimate; the local host is free.
    assert host_price(HostConfig(name="box", price_per_hour=2.0), probe).estimate is False
    assert host_price(HostConfig(name="local", provider="local"), probe).amount == 0.0
    assert hourly_price(HostConfig(name="box"), ["NVIDIA L4"], live=1.1).source == "live price from ssh"


def test_catalog_rows_match_the_right_model_and_cite_a_source() -> None:
    catalog = load_catalog()
    assert catalog.as_of == "2026-11"
    assert all(
        row.source.startswith("skypilot-catalog catalogs/v8/") and row.per_gpu_hour > 0
        for row in catalog.rows
    )
    expected = {
        "NVIDIA A100-SXM4-80GB": "A100 80GB",
        "NVIDIA A100 80GB PCIe": "A100 80GB",
        "NVIDIA A100-SXM4-40GB": "A100 40GB",
        "NVIDIA A10G": "A10G",
        "NVIDIA A10": "A10",
        "NVIDIA GH200 480GB": "GH200",
        "NVIDIA H100 PCIe": "H100 PCIe",
        "NVIDIA H100 NVL": "H100 NVL",
        "NVIDIA H100 80GB HBM3": "H100 SXM",
        "NVIDIA L40S": "L40S",
        "NVIDIA L4": "L4",
        "Tesla T4": "T4",
        "Tesla V100-SXM2-16GB": "V100",
        "NVIDIA RTX 6000 Ada Gene...": "RTX 6000 Ada",
        "NVIDIA GeForce RTX 3090": "RTX 3090",
    }
    for name, model in expected.items():
        row = catalog.match(name)
        assert row is not None and row.model == model, name
    assert catalog.match("NVIDIA GeForce RTX 3090 Ti") is None
    assert catalog_estimate(["NVIDIA GeForce RTX 2060", "NVIDIA L4"]) is None  # one GPU unknown: no guess
    assert catalog_estimate([]) is None
