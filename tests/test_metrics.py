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


# ------------------------------------------------------------------- tearsheet metrics (issue 18)
BENCH_CASES = [(_series(10), _series(11, drift=0.0001)), (_series(12, n=3000), 0.5 * _series(12, n=3000)
                                                           + _series(13, n=3000, vol=0.004))]


@pytest.mark.parametrize("r, b", BENCH_CASES)
def test_relative_against_empyrical_and_quantstats(r, b):
    a_emp, b_emp = empyrical.alpha_beta(r, b, annualization=PERIODS)
    assert close(m.beta(r, b), b_emp)
    assert close(m.alpha(r, b, PERIODS), a_emp)
    assert close(m.beta(r, b), empyrical.beta(r, b))
    assert close(m.information_ratio(r, b, PERIODS), empyrical.excess_sharpe(r, b) * math.sqrt(PERIODS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert close(m.information_ratio(r, b, PERIODS), qs_stats.information_ratio(_pd(r), _pd(b))
                     * math.sqrt(PERIODS))
    assert close(m.correlation(r, b), float(pd.Series(r).corr(pd.Series(b))))
    assert close(m.tracking_error(r, b, PERIODS), float(np.std(r - b, ddof=1)) * math.sqrt(PERIODS))
    excess = m.relative_wealth(r, b)
    assert excess[0] == 0.0 and len(excess) == len(r) + 1
    assert close(excess[-1], (1 + empyrical.cum_returns_final(r)) / (1 + empyrical.cum_returns_final(b)) - 1)
    # A curve against itself: beta 1, alpha 0, no tracking error.
    assert close(m.beta(r, r), 1.0) and close(m.alpha(r, r, PERIODS), 0.0)
    assert m.tracking_error(r, r, PERIODS) == 0.0 and math.isnan(m.information_ratio(r, r, PERIODS))
    assert math.isnan(m.beta(r, np.zeros_like(r))) and math.isnan(m.correlation(r, np.zeros_like(r)))
    with pytest.raises(ValueError, match="same bars"):
        m.beta(r, b[:-1])


@pytest.mark.parametrize("unit, empyrical_name", [("M", "monthly"), ("Y", "yearly"), ("W", None)])
def test_period_returns_against_empyrical(unit, empyrical_name):
    r = _series(20, n=24 * 400)  # 400 days of hourly bars from 2024-01-01
    times = pd.date_range("2024-01-01", periods=len(r), freq="h").as_unit("ms").asi8.astype(np.int64)
    starts, values = m.period_returns(r, times, unit)
    assert close(float(np.prod(1 + values) - 1), m.total_return(r))
    if empyrical_name is not None:
        expected = empyrical.aggregate_returns(_pd(r), empyrical_name)
        np.testing.assert_allclose(values, expected.to_numpy(), rtol=1e-9, atol=1e-12)
    if unit == "M":
        assert str(starts[0]) == "2024-01" and str(starts[-1]) == "2025-02" and len(starts) == 14
    # By hand: the bars of each period, compounded.
    keys = times.astype("datetime64[ms]").astype(f"datetime64[{unit}]")
    for start, value in zip(starts, values, strict=True):
        assert close(value, float(np.prod(1 + r[keys == start]) - 1))
    with pytest.raises(ValueError, match="unit"):
        m.period_returns(r, times, "Q")
    with pytest.raises(ValueError, match="date every return"):
        m.period_returns(r, times[:-1], unit)


def test_rolling_against_empyrical():
    r = _series(21, n=2000)
    window = 24 * 7
    ours_sharpe = m.rolling_sharpe(r, window, PERIODS)
    ours_vol = m.rolling_volatility(r, window, PERIODS)
    assert np.all(np.isnan(ours_sharpe[: window - 1])) and np.all(np.isnan(ours_vol[: window - 1]))
    np.testing.assert_allclose(ours_sharpe[window - 1:],
                               empyrical.roll_sharpe_ratio(r, window, annualization=PERIODS), rtol=1e-7)
    np.testing.assert_allclose(ours_vol[window - 1:],
                               empyrical.roll_annual_volatility(r, window, annualization=PERIODS), rtol=1e-7)
    # The last window equals the whole-series functions on its bars.
    assert math.isclose(ours_sharpe[-1], m.sharpe(r[-window:], PERIODS), rel_tol=1e-7)
    flat = np.concatenate((np.zeros(50), r[:50]))
    assert np.isnan(m.rolling_sharpe(flat, 10, PERIODS)[20])
    with pytest.raises(ValueError, match="window"):
        m.rolling_sharpe(r, 1, PERIODS)


def test_drawdown_periods_hand_made():
    # Wealth positions: 0:100 1:120 2:90 3:60 4:130 5:130 6:117 7:104 8:125 9:110
    equity = np.array([100.0, 120, 90, 60, 130, 130, 117, 104, 125, 110])
    periods = m.drawdown_periods(m.simple_returns(equity))
    assert periods == [
        {"peak": 1, "trough": 3, "recovery": 4, "depth": pytest.approx(60 / 120 - 1), "length": 2},
        {"peak": 5, "trough": 7, "recovery": None, "depth": pytest.approx(104 / 130 - 1), "length": 4},
    ]
    r = m.simple_returns(equity)
    assert periods[0]["depth"] == pytest.approx(m.max_drawdown(r))
    assert max(p["length"] for p in periods) == m.max_drawdown_duration(r)
    # Falling from the initial capital: the peak is position 0; recovered exactly at the peak level.
    falls = m.drawdown_periods(m.simple_returns([100.0, 95.0, 90.0, 100.0, 101.0]))
    assert falls == [{"peak": 0, "trough": 2, "recovery": 3, "depth": pytest.approx(-0.1), "length": 2}]
    assert m.drawdown_periods(m.simple_returns([1.0, 2.0, 3.0])) == []
    assert len(m.drawdown_periods(_series(22, n=3000), top=5)) == 5


@pytest.mark.parametrize("r", CASES)
def test_drawdown_periods_against_quantstats(r):
    # quantstats' drawdown_details: the same episodes' depths (it counts in percent).
    dd = qs_stats.to_drawdown_series(_pd(r))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = qs_stats.drawdown_details(dd)
    theirs = np.sort(details["max drawdown"].to_numpy() / 100.0)
    ours = np.array([p["depth"] for p in m.drawdown_periods(r)])
    # quantstats measures from the first bar, not the initial capital: compare the common episodes
    # (a drop on the very first bar starts ours at the initial capital; that episode can differ).
    common = min(len(ours), len(theirs), 5)
    np.testing.assert_allclose(ours[1:common], theirs[1:common], rtol=1e-9)


def test_trading_statistics():
    before = np.array([[0.0, 0.0, 1.0], [0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.4, 0.6, 0.0]])
    after = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert m.rebalance_count(before, after) == 3  # bar 2 did not trade
    assert m.allocation_deviation(np.tile([0.2, 0.3, 0.5], (10, 1))) == pytest.approx(0.0, abs=1e-15)
    # Half the time all in pair 0, half all cash: mean |w - mean w| per column 0.5, halved and summed.
    flip = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] * 5)
    assert m.allocation_deviation(flip) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        m.rebalance_count(before, after[:2])


def test_round_trips_hand_made():
    # Pair 0 held on bars 1-2 (closed on bar 3), again from bar 5 (open); pair 1 held on bar 2 only.
    w = np.array([[0, 0, 1], [.5, 0, .5], [.4, .4, .2], [0, .5, .5], [0, 0, 1], [1, 0, 0]], dtype=float)
    pnl = np.array([[0, 0], [-1, 0], [3, 2], [-0.5, -4], [0, 0], [2, 0]], dtype=float)
    trips = m.round_trips(w, pnl)
    assert trips == [
        {"pair": 0, "open": 1, "close": 3, "pnl": 1.5},
        {"pair": 0, "open": 5, "close": None, "pnl": 2.0},
        {"pair": 1, "open": 2, "close": 4, "pnl": -2.0},
    ]


def test_call_hit_rate():
    close_px = np.array([[10.0, 5.0], [11.0, 5.0], [10.0, 4.0], [12.0, 4.0], [12.0, 3.0]])
    calls = np.array([[1, 0], [1, -1], [-1, -1], [1, 1], [1, 1]])
    # Pair 0: buy before +1 (right), buy before -1 (wrong), sell before +2 (wrong), buy before 0
    # (not counted), last bar not counted -> 1/3. Pair 1: hold, sell before -1 (right), sell before
    # 0 (not counted), buy before -1 (wrong) -> 1/2.
    np.testing.assert_allclose(m.call_hit_rate(calls, close_px), [1 / 3, 1 / 2])
    assert np.isnan(m.call_hit_rate(np.zeros((3, 1)), np.ones((3, 1)))[0])
