"""An active run's cost so far and to finish: N/A without a price, "—" without an ETA (and why), the budget a
run's finish would pass."""

from __future__ import annotations

import pytest

from gpubox.cost import Budget, HourlyPrice, overrun_warnings, run_money

PRICED = HourlyPrice(1.80, "price_per_hour in hosts.toml")


def test_a_priced_run_with_an_eta_costs_its_eta_times_the_rate() -> None:
    money = run_money(
        "r-7",
        "box",
        started_at=1000.0,
        progress={"epoch": 3, "epochs": 10, "eta_seconds": 7200},
        price=PRICED,
        now=1000.0 + 1800,
    )
    assert money.spent_usd == pytest.approx(0.90)
    assert money.to_finish_usd == pytest.approx(3.60)
    assert (money.spent_text(), money.to_finish_text()) == ("$0.90", "$3.60")
    assert money.line() == "r-7: $0.90 so far · $3.60 to finish (ETA 2:00:00 at $1.80/h)"
    assert money.document()["to_finish_why"] is None


def test_no_price_is_na_and_no_eta_is_a_dash_with_the_reason() -> None:
    unpriced = run_money(
        "r-1",
        "box",
        started_at=0.0,
        progress={"eta_seconds": 60},
        price=HourlyPrice(None, "no price"),
        now=10.0,
    )
    assert (unpriced.spent_text(), unpriced.to_finish_text()) == ("N/A", "N/A")
    assert "price_per_hour" in (unpriced.why or "")
    no_epochs = run_money("r-2", "box", started_at=0.0, progress=None, price=PRICED, now=10.0)
    assert no_epochs.to_finish_text() == "—" and "Epoch i/N" in (no_epochs.why or "")
    first_epoch = run_money(
        "r-3", "box", started_at=0.0, progress={"epoch": 1, "epochs": 5}, price=PRICED, now=1.0
    )
    assert first_epoch.to_finish_text() == "—" and "first epoch" in (first_epoch.why or "")
    assert first_epoch.document()["to_finish_usd"] is None


def test_a_budget_warns_only_when_finishing_would_pass_what_is_left() -> None:
    money = run_money("r-7", "box", started_at=0.0, progress={"eta_seconds": 3600}, price=PRICED, now=0.0)
    assert overrun_warnings(money, [Budget("box", 50.0, 10.0)]) == []
    (warning,) = overrun_warnings(money, [Budget("box", 50.0, 49.0), Budget("*", 500.0, 10.0)])
    assert warning == (
        "run r-7 needs ~$1.80 more to finish (ETA 1:00:00 at $1.80/h), but only $1.00 is left of box's budget "
        "of $50.00"
    )
    unknown = run_money("r-8", "box", started_at=0.0, progress=None, price=PRICED, now=0.0)
    assert overrun_warnings(unknown, [Budget("box", 1.0, 1.0)]) == []


def test_a_free_hosts_runs_have_no_money_lines() -> None:
    from gpubox.actions.runmoney import money_lines

    free = run_money("r-3", "local", started_at=0.0, progress=None, price=HourlyPrice(0.0, "free"), now=60.0)
    priced = run_money("r-4", "box", started_at=0.0, progress=None, price=PRICED, now=60.0)
    rows = [dict(m.document(), id=m.run_id) for m in (free, priced)]
    assert [line.split(":")[0] for line in money_lines(rows)] == ["run       r-4"]
