"""significance.py against the published worked example, quantstats, Lo's asymptotic standard error and
coverage on simulated autocorrelated series whose true Sharpe ratio is known."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

import metrics
import significance as sig

PERIODS = 8760.0


def ar1(n: int, phi: float, mu: float, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary AR(1) returns r_t = mu + phi (r_{t-1} - mu) + e_t; true Sharpe mu sqrt(1-phi^2) / sigma."""
    e = rng.normal(0.0, sigma, n)
    r = np.empty(n)
    r[0] = mu + e[0] / math.sqrt(1.0 - phi**2)
    for t in range(1, n):
        r[t] = mu + phi * (r[t - 1] - mu) + e[t]
    return r


# --------------------------------------------------------------------- deflated Sharpe: the paper
def test_deflated_sharpe_worked_example():
    # Bailey & López de Prado (2014), "The deflated Sharpe ratio", numerical example: 100 trials whose
    # annualized Sharpe ratios have variance 1/2, a chosen annualized Sharpe of 2.5 over 1,250 daily
    # returns with skewness -3 and kurtosis 10 -> SR0 = 0.1132 (per day) and DSR = 0.9004.
    days = 250.0
    sr0 = sig.expected_max_sharpe(100, 0.5 / days)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = sig.psr_from_stats(2.5 / math.sqrt(days), 1250, skewness=-3.0, kurtosis=10.0, sr_benchmark=sr0)
    assert dsr == pytest.approx(0.9004, abs=5e-4)


def test_expected_max_sharpe_properties_and_refusals():
    assert sig.expected_max_sharpe(1, 0.3) == 0.0  # one trial selects nothing
    assert sig.expected_max_sharpe(10, 0.0) == 0.0  # identical trials: no luck to select
    grows = [sig.expected_max_sharpe(n, 1e-4) for n in (2, 10, 100, 1000)]
    assert grows == sorted(grows)
    # Scales with the trials' standard deviation.
    assert sig.expected_max_sharpe(50, 4e-4) == pytest.approx(2 * sig.expected_max_sharpe(50, 1e-4))
    # Against the expected maximum of N standard normals by simulation (the formula's approximation
    # is within a few percent for N >= 10).
    rng = np.random.default_rng(0)
    simulated = rng.standard_normal((20_000, 100)).max(axis=1).mean()
    assert sig.expected_max_sharpe(100, 1.0) == pytest.approx(simulated, rel=0.03)
    with pytest.raises(ValueError, match="n_trials"):
        sig.expected_max_sharpe(0, 1.0)
    with pytest.raises(ValueError, match="n_trials"):
        sig.expected_max_sharpe(2.5, 1.0)
    with pytest.raises(ValueError, match="variance"):
        sig.expected_max_sharpe(5, -1.0)


# ----------------------------------------------------------------- probabilistic Sharpe ratio
def test_psr_formula_matches_quantstats():
    qs_stats = pytest.importorskip("quantstats.stats")
    rng = np.random.default_rng(1)
    for r in (rng.standard_t(4, 2000) * 0.01 + 0.0005, rng.normal(-0.0002, 0.01, 300)):
        s = pd.Series(r, index=pd.date_range("2024-01-01", periods=len(r), freq="h"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = qs_stats.probabilistic_ratio(s, periods=PERIODS)
        # quantstats uses pandas' bias-corrected moments; the formula is the same.
        ours = sig.psr_from_stats(metrics.sharpe(r, 1.0), len(r), s.skew(), s.kurtosis() + 3.0)
        assert ours == pytest.approx(expected, abs=1e-12)
        # With the papers' (biased) moment estimators the difference is O(1/n).
        assert sig.probabilistic_sharpe_ratio(r) == pytest.approx(expected, abs=5e-3)


def test_psr_and_dsr_from_returns():
    from scipy import stats

    rng = np.random.default_rng(2)
    r = rng.standard_t(5, 5000) * 0.01 + 0.0004
    sr = np.mean(r) / np.std(r, ddof=1)
    z = sr * math.sqrt(len(r) - 1) / math.sqrt(
        1 - stats.skew(r) * sr + (stats.kurtosis(r, fisher=False) - 1) / 4 * sr**2)
    assert sig.probabilistic_sharpe_ratio(r) == pytest.approx(stats.norm.cdf(z), abs=1e-12)
    # Normal returns, SR* = SR: probability one half.
    assert sig.psr_from_stats(0.05, 1000, 0.0, 3.0, sr_benchmark=0.05) == 0.5
    # One trial deflates nothing; more trials deflate more.
    assert sig.deflated_sharpe_ratio(r, 1, 1e-4) == pytest.approx(sig.probabilistic_sharpe_ratio(r))
    dsr = [sig.deflated_sharpe_ratio(r, n, 1e-4) for n in (1, 10, 100)]
    assert dsr[0] > dsr[1] > dsr[2]
    assert math.isnan(sig.probabilistic_sharpe_ratio(np.zeros(100)))
    with pytest.raises(ValueError, match="one-dimensional"):
        sig.probabilistic_sharpe_ratio(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        sig.probabilistic_sharpe_ratio([0.1, np.nan, 0.2, 0.3])


# -------------------------------------------------------------------- stationary bootstrap
def test_bootstrap_iid_width_matches_lo_standard_error():
    # i.i.d. normal returns: the Sharpe ratio's standard error is sqrt((1 + SR^2/2) / n) per period
    # (Lo 2002); with blocks of one bar the bootstrap interval must match it.
    rng = np.random.default_rng(3)
    n = 4000
    r = rng.normal(0.0005, 0.01, n)
    low, high = sig.stationary_bootstrap_sharpe_ci(r, PERIODS, mean_block=1, seed=0)
    sr = metrics.sharpe(r, 1.0)
    expected_width = 2 * 1.959964 * math.sqrt((1 + sr**2 / 2) / n) * math.sqrt(PERIODS)
    assert high - low == pytest.approx(expected_width, rel=0.1)
    assert low < metrics.sharpe(r, PERIODS) < high
    # Seeded: the same call gives the same interval.
    assert sig.stationary_bootstrap_sharpe_ci(r, PERIODS, mean_block=1, seed=0) == (low, high)


def test_bootstrap_covers_true_sharpe_of_autocorrelated_series():
    # AR(1) returns with phi = 0.5: the i.i.d. bootstrap interval is too narrow by about
    # sqrt((1 + phi) / (1 - phi)) = 1.7x and misses the true Sharpe ratio far more than 5% of the
    # time; the stationary bootstrap with its automatic block length keeps near-nominal coverage.
    rng = np.random.default_rng(4)
    phi, mu, sigma = 0.5, 0.0003, 0.01
    true_sharpe = mu * math.sqrt(1 - phi**2) / sigma * math.sqrt(PERIODS)
    covered_block = covered_iid = 0
    widths = []
    trials = 60
    for k in range(trials):
        r = ar1(1500, phi, mu, sigma, rng)
        lo_b, hi_b = sig.stationary_bootstrap_sharpe_ci(r, PERIODS, n_boot=400, seed=k)
        lo_i, hi_i = sig.stationary_bootstrap_sharpe_ci(r, PERIODS, n_boot=400, mean_block=1, seed=k)
        covered_block += lo_b <= true_sharpe <= hi_b
        covered_iid += lo_i <= true_sharpe <= hi_i
        widths.append((hi_b - lo_b) / (hi_i - lo_i))
    assert covered_block / trials >= 0.85
    assert covered_iid / trials <= 0.85
    assert np.median(widths) > 1.3
    assert sig.mean_block_length(r) > 1


def test_sharpe_diff_is_paired():
    rng = np.random.default_rng(5)
    a = rng.normal(0.0003, 0.01, 2000)
    # b is a scaled copy of a: the same Sharpe ratio in every draw when the draws are paired.
    low, high = sig.sharpe_diff_ci(a, 2.0 * a, PERIODS, seed=1)
    assert abs(low) < 1e-9 and abs(high) < 1e-9
    # Two strategies on the same bars share their market moves: the paired interval of the
    # difference is far narrower than the two curves' own intervals.
    market = rng.normal(0.0, 0.01, 2000)
    x = market + rng.normal(0.0002, 0.002, 2000)
    y = market + rng.normal(0.0, 0.002, 2000)
    d_low, d_high = sig.sharpe_diff_ci(x, y, PERIODS, seed=2)
    x_low, x_high = sig.stationary_bootstrap_sharpe_ci(x, PERIODS, seed=2)
    assert d_high - d_low < 0.5 * (x_high - x_low)
    assert d_low < metrics.sharpe(x, PERIODS) - metrics.sharpe(y, PERIODS) < d_high


def test_sharpe_diff_no_signal_contains_zero():
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.0, 0.01, 3000), rng.normal(0.0, 0.01, 3000)
    low, high = sig.sharpe_diff_ci(a, b, PERIODS, seed=0)
    assert low < 0.0 < high


def test_bootstrap_refusals_and_flat_curves():
    r = np.random.default_rng(7).normal(0, 0.01, 100)
    with pytest.raises(ValueError, match="same bars"):
        sig.sharpe_diff_ci(r, r[:-1], PERIODS)
    with pytest.raises(ValueError, match="level"):
        sig.stationary_bootstrap_sharpe_ci(r, PERIODS, level=95)
    with pytest.raises(ValueError, match="n_boot"):
        sig.stationary_bootstrap_sharpe_ci(r, PERIODS, n_boot=10)
    with pytest.raises(ValueError, match="at least 3"):
        sig.stationary_bootstrap_sharpe_ci([0.01, 0.02], PERIODS)
    with pytest.raises(ValueError, match="mean_block"):
        sig.stationary_bootstrap_sharpe_ci(r, PERIODS, mean_block=0.5)
    assert all(math.isnan(v) for v in sig.stationary_bootstrap_sharpe_ci(np.zeros(50), PERIODS))
    assert all(math.isnan(v) for v in sig.sharpe_diff_ci(r, np.zeros(100), PERIODS))


def test_bootstrap_sharpes_equal_metrics_on_arch_indices():
    # Each draw is metrics.sharpe of the columns resampled with arch's stationary-bootstrap indices
    # (the same generator, seeded alike), every column with the same indices.
    from arch.bootstrap import StationaryBootstrap

    rng = np.random.default_rng(8)
    x = np.column_stack((rng.standard_t(4, 3000) * 0.01, rng.normal(0.001, 0.02, 3000), np.zeros(3000)))
    draws = sig.bootstrap_sharpes(x, PERIODS, n_boot=150, mean_block=7, seed=3)
    bs = StationaryBootstrap(7, x, seed=np.random.default_rng(3))
    for k in range(150):
        idx = bs.update_indices()
        for j in range(2):
            assert draws[k, j] == pytest.approx(metrics.sharpe(x[idx, j], PERIODS), rel=1e-9)
    assert np.all(np.isnan(draws[:, 2]))  # a flat column has no Sharpe ratio in any draw
    lo, hi = sig.percentile_interval(draws[:, 0])
    assert (lo, hi) == tuple(np.percentile(draws[:, 0], [2.5, 97.5]))
    assert all(math.isnan(v) for v in sig.percentile_interval(draws[:, 2]))


def test_short_curves_get_an_interval_not_an_error():
    """arch's block-length estimator fails under 8 observations; a report on a few bars must still
    get its (wide) interval, with blocks of 1."""
    returns = np.array([0.01, -0.02, 0.015, 0.003, -0.004])
    assert sig.mean_block_length(returns) == 1
    low, high = sig.stationary_bootstrap_sharpe_ci(returns, 8760, n_boot=200)
    assert np.isfinite(low) and np.isfinite(high) and low < high
