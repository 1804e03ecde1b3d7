"""Portfolio additions for trading: start from given holdings, plan a rebalance without trading it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from Portfolio import Portfolio

SYMBOLS = ["BTC/USDT", "ETH/USDT", "BNB/USDT"]


def _portfolio(**rules) -> Portfolio:
    return Portfolio(SYMBOLS, 10_000.0, fee_rate=0.001, slippage_bps=5.0, **rules)


weights = st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4).filter(lambda w: sum(w) > 1e-3)
prices = st.lists(st.floats(0.5, 5_000.0), min_size=3, max_size=3)


@settings(max_examples=60, deadline=None)
@given(first=weights, second=weights, p0=prices, p1=prices, rules=st.booleans())
def test_plan_rebalance_equals_rebalance_and_changes_nothing(first, second, p0, p1, rules):
    pf = _portfolio(**({"lot_step": 0.001, "min_notional": 10.0} if rules else {}))
    pf.rebalance(np.array(first) / sum(first), p0)
    before = copy.deepcopy(pf)
    target = np.array(second) / sum(second)
    plan = pf.plan_rebalance(target, p1)
    # nothing changed: cash, holdings, step counter
    assert pf.cash == before.cash and np.array_equal(pf.qty, before.qty) and pf.steps == before.steps
    fills = pf.rebalance(target, p1)
    for name in ("qty", "price", "notional", "fee", "slippage"):
        assert np.array_equal(getattr(plan, name), getattr(fills, name)), name
    assert pf.cash >= 0.0


def test_start_from_holdings_then_rebalance_like_a_portfolio_that_got_there():
    traded = _portfolio()
    traded.rebalance([0.3, 0.2, 0.1, 0.4], [100.0, 10.0, 1.0])
    close = np.array([110.0, 9.0, 1.2])
    restored = _portfolio()
    restored.start_from(traded.cash, traded.qty, close)
    assert restored.cash == traded.cash and np.array_equal(restored.qty, traded.qty)
    assert restored.value(close) == pytest.approx(traded.value(close), rel=1e-15)
    assert restored.initial_cash == pytest.approx(traded.value(close), rel=1e-15)  # PnL counts from here
    assert restored.total_fees == 0.0
    # positions were booked at the given prices: unrealized PnL is measured from them
    assert restored.position("ETH/USDT").avg_entry_price == 9.0
    # the next rebalance depends only on cash and holdings: identical fills
    target, open_ = [0.1, 0.5, 0.2, 0.2], [111.0, 8.5, 1.25]
    a, b = traded.rebalance(target, open_), restored.rebalance(target, open_)
    assert np.array_equal(a.qty, b.qty) and np.array_equal(a.fee, b.fee) and traded.cash == restored.cash


def test_start_from_refuses_bad_holdings():
    pf = _portfolio()
    with pytest.raises(ValueError, match="qty must be 3"):
        pf.start_from(100.0, [1.0, -1.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="cash must be finite"):
        pf.start_from(float("nan"), [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="prices must be finite and positive"):
        pf.start_from(1.0, [0.0, 0.0, 0.0], [1.0, 0.0, 1.0])


def test_plan_rebalance_needs_volumes_with_the_volume_model():
    pf = Portfolio(SYMBOLS, 1_000.0, impact_bps=10.0)
    with pytest.raises(ValueError, match="needs the bar volumes"):
        pf.plan_rebalance([0.5, 0.0, 0.0, 0.5], [1.0, 1.0, 1.0])
    plan = pf.plan_rebalance([0.5, 0.0, 0.0, 0.5], [1.0, 1.0, 1.0], volumes=[1e6, 1e6, 1e6])
    assert plan.qty[0] > 0 and plan.slippage[0] > 0 and pf.cash == 1_000.0
