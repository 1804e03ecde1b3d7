"""metrics.py against empyrical-reloaded and quantstats (same return series, 1e-9) and hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import metrics as m

empyrical = pytest.importorskip("empyrical")
qs_stats = pytest.importorskip("quantstats.stats")

PERIODS = 8760.0
TOL = 1e-9


def _series(seed: int, n: int = 500, drift: float = 0.0002, vol: float = 0.01) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(drift, vol, n)


def _pd(r: np.ndarray) -> pd.Series:
    return pd.Series(r, index=pd.date_range("2024-01-01", periods=len(r), freq="h"))


CASES = [_series(0), _series(1, drift=-0.0005), _series(2, n=50, vol=0.05), _series(3, n=3000)]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOL, abs_tol=TOL)


@pytest.mark.parametrize("r", CASES)
def test_against_empyrical(r):
    assert close(m.total_return(r), empyrical.cum_returns_final(r))
    assert close(m.cagr(r, PERIODS), empyrical.annual_return(r, annualization=PERIODS))
    assert close(m.annual_volatility(r, PERIODS), empyrical.annual_volatility(r, annualization=PERIODS))
    assert close(m.sharpe(r, PERIODS), empyrical.sharpe_ratio(r, annualization=PERIODS))
    assert close(m.downside_deviation(r, PERIODS), empyrical.downside_risk(r, annualization=PERIODS))
    assert close(m.sortino(r, PERIODS), empyrical.sortino_ratio(r, annualization=PERIODS))
    assert close(m.max_drawdown(r), empyrical.max_drawdown(r))
    np.testing.assert_allclose(m.drawdown_series(r), empyrical.stats.drawdown_series(r), rtol=TOL, atol=TOL)
    assert close(m.calmar(r, PERIODS), empyrical.calmar_ratio(r, annualization=PERIODS))
    equity = 1000.0 * m.wealth_index(r)
    np.testing.assert_allclose(m.simple_returns(equity), empyrical.simple_returns(equity), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(m.simple_returns(equity), r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("r", CASES)
def test_against_quantstats(r):
    s = _pd(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert close(m.total_return(r), qs_stats.comp(s))
        assert close(m.cagr(r, PERIODS), qs_stats.cagr(s, periods=PERIODS))
        assert close(m.annual_volatility(r, PERIODS), qs_stats.volatility(s, periods=PERIODS))
        assert close(m.sharpe(r, PERIODS), qs_stats.sharpe(s, periods=PERIODS))
        assert close(m.sortino(r, PERIODS), qs_stats.sortino(s, periods=PERIODS))
        assert close(m.hit_rate(r), qs_stats.win_rate(s))
        assert close(m.max_drawdown(r), qs_stats.max_drawdown(s))
        assert close(m.calmar(r, PERIODS), qs_stats.calmar(s, periods=PERIODS))


def test_periods_per_year():
    assert m.periods_per_year("1h") == 8760
    assert m.periods_per_year("4h") == 2190
    assert m.periods_per_year("1d") == 365
    assert m.periods_per_year("15m") == 35040
    assert m.periods_per_year("1w") == pytest.approx(365 / 7)
    assert m.periods_per_year("1M") == 12
    with pytest.raises(ValueError, match="unknown timeframe"):
        m.periods_per_year("hourly")


def test_hand_computed_curve():
    # 100 -> 110 -> 99 -> 99 -> 121: returns +10%, -10%, 0, +22.2%
    equity = np.array([100.0, 110.0, 99.0, 99.0, 121.0])
    r = m.simple_returns(equity)
    np.testing.assert_allclose(r, [0.1, -0.1, 0.0, 121 / 99 - 1])
    assert m.total_return(r) == pytest.approx(0.21)
    # 4 bars of a 4-bar "year": CAGR equals the total return; of an 8-bar year it is 1.21**2 - 1.
    assert m.cagr(r, 4) == pytest.approx(0.21)
    assert m.cagr(r, 8) == pytest.approx(1.21**2 - 1)
    assert m.max_drawdown(r) == pytest.approx(99 / 110 - 1)
    assert m.max_drawdown_duration(r) == 2  # bars 2 and 3 under the 110 peak
    assert m.hit_rate(r) == pytest.approx(2 / 3)  # the flat bar does not count
    mean = np.mean(r)
    std = np.sqrt(np.sum((r - mean) ** 2) / 3)
    assert m.sharpe(r, 4) == pytest.approx(mean / std * 2)
    downside = np.sqrt(0.1**2 / 4)  # over all four observations
    assert m.sortino(r, 4) == pytest.approx(mean * 4 / (downside * 2))
    assert m.calmar(r, 8) == pytest.approx((1.21**2 - 1) / (1 - 99 / 110))


def test_drawdown_from_initial_capital():
    # Falls from the start and never recovers: the drawdown counts from the initial 100.
    r = m.simple_returns([100.0, 90.0, 95.0, 80.0])
    assert m.max_drawdown(r) == pytest.approx(-0.2)
    assert m.max_drawdown_duration(r) == 3
    # Monotone rise: no drawdown, Calmar undefined, Sortino infinite.
    up = m.simple_returns([1.0, 1.1, 1.2, 1.3])
    assert m.max_drawdown(up) == 0.0
    assert m.max_drawdown_duration(up) == 0
    assert math.isnan(m.calmar(up, 365))
    assert m.sortino(up, 365) == math.inf


def test_degenerate_series():
    flat = np.zeros(10)
    assert math.isnan(m.sharpe(flat, PERIODS))
    assert math.isnan(m.sortino(flat, PERIODS))
    assert math.isnan(m.hit_rate(flat))
    assert m.total_return(flat) == 0.0
    assert math.isnan(m.cagr(np.array([]), PERIODS))
    assert math.isnan(m.annual_volatility(np.array([0.01]), PERIODS))
    assert m.cagr(np.array([-1.0]), PERIODS) == -1.0
    with pytest.raises(ValueError):
        m.simple_returns([[1.0, 2.0]])


def test_turnover_exposure_fees():
    # Bar 0: all cash -> 50/50 in two pairs... stays; bar 1: drifted 60/40/0 -> back to 50/50/0.
    before = np.array([[0.0, 0.0, 1.0], [0.6, 0.4, 0.0], [0.5, 0.5, 0.0]])
    after = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    # 1.0 (cash into pairs) + 0.1 (move 10% from one pair to the other) + 1.0 (all out to cash)
    assert m.turnover(before, after) == pytest.approx(2.1)
    assert m.exposure(after) == pytest.approx(2 / 3)
    assert m.fees_paid(np.array([[1.0, 2.0], [0.5, 0.0]])) == 3.5
    with pytest.raises(ValueError):
        m.turnover(before, after[:2])


def test_compute_all_keys():
    equity = 100.0 * m.wealth_index(_series(5, n=100))
    w = np.tile([0.5, 0.5, 0.0], (100, 1))
    out = m.compute_all(equity, PERIODS, w, w, np.zeros(100))
    assert tuple(out) == m.METRIC_NAMES
    assert out["turnover"] == 0.0 and out["exposure"] == 1.0
