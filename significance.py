"""How much of a Sharpe ratio is luck: bootstrap intervals, probabilistic and deflated Sharpe ratios.

Every function takes SIMPLE per-bar returns (metrics.py's convention) and is pure.

Stationary bootstrap intervals (Politis and Romano, 1994)
    Hourly crypto returns are autocorrelated in their squares (volatility clusters) and fat-tailed,
    so resampling single bars i.i.d. understates the Sharpe ratio's spread. The stationary
    bootstrap resamples blocks of consecutive bars whose lengths are geometric with mean
    ``mean_block``, wrapping around the end, which keeps the dependence inside each block and
    leaves the resampled series stationary. `arch.bootstrap.StationaryBootstrap` does the
    resampling; the interval is the percentile interval of the resampled annualized Sharpe ratios
    (`metrics.sharpe`), ``level`` two-sided.

    Mean block length when ``mean_block`` is None: Politis and White's (2004) automatic choice
    with Patton, Politis and White's (2009) correction (`arch.bootstrap.optimal_block_length`,
    its ``stationary`` column), taken as the LARGEST of the estimates for the returns and for the
    squared returns (the Sharpe ratio depends on the mean and the variance, and the squares carry
    the volatility clustering), rounded up and at least 1. For a difference of two curves, the
    largest over both curves. `mean_block_length` exposes the choice.

    `sharpe_diff_ci` is paired: each bootstrap draw picks ONE set of indices and applies it to both
    curves, so the difference keeps their correlation (two curves trading the same bars move
    together; resampling them independently would inflate the interval). `bootstrap_sharpes` does
    the same for any number of curves at once (the tearsheet resamples the agent and every
    benchmark together, so each interval and each difference comes from the same draws).

Probabilistic and deflated Sharpe ratios (Bailey and López de Prado)
    On PER-PERIOD (not annualized) Sharpe ratios SR = mean / std (ddof=1), with the sample
    skewness g3 and (non-excess) kurtosis g4 of the returns (biased moment estimators, as in the
    papers), over n returns:

        PSR(SR*) = Phi( (SR - SR*) * sqrt(n - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2) )

    (Bailey and López de Prado 2012, "The Sharpe ratio efficient frontier", J. of Risk 15(2)).
    The deflated Sharpe ratio is the PSR against the Sharpe ratio that the best of ``n_trials``
    unskilled trials would reach by luck (Bailey and López de Prado 2014, "The deflated Sharpe
    ratio", J. of Portfolio Management 40(5)):

        E[max SR] = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N e)))

    with V the variance of the trials' per-period Sharpe ratios, N the number of trials and gamma
    the Euler-Mascheroni constant. Count as trials every configuration AND seed evaluated before
    this result was chosen. Tested against the 2014 paper's worked example (SR0 = 0.1132,
    DSR = 0.9004).
"""

from __future__ import annotations

import math

import numpy as np

import metrics

EULER_GAMMA = 0.5772156649015329


# arch.bootstrap.optimal_block_length needs this many observations (fewer: a matmul shape error).
MIN_BLOCK_ESTIMATE_SIZE = 8


def _returns(values: np.ndarray | list[float], name: str, min_size: int = 3) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional per-bar returns, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} holds {arr.size} returns; at least {min_size} are needed "
                         "(pass the per-bar simple returns of a longer curve)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite returns; drop or fill them first")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (e.g. 0.95 for a 95% interval), got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot} is too few draws for a percentile interval; "
                         "use >= 100 (e.g. 2000)")


def mean_block_length(*series: np.ndarray) -> int:
    """Automatic mean block length for the stationary bootstrap of Sharpe ratios (see the module doc).

    The largest Politis-White estimate over each series and its squares, rounded up, at least 1.
    Series shorter than `MIN_BLOCK_ESTIMATE_SIZE` are too short to estimate any dependence (arch's
    estimator fails on them): they ask for blocks of 1.
    """
    from arch.bootstrap import optimal_block_length

    estimates = []
    for r in series:
        r = np.asarray(r, dtype=np.float64)
        if np.std(r) == 0.0 or r.size < MIN_BLOCK_ESTIMATE_SIZE:
            continue  # a flat curve has no dependence to preserve; a tiny one shows none
        for x in (r, r**2):
            value = float(optimal_block_length(x)["stationary"].iloc[0])
            if math.isfinite(value):
                estimates.append(value)
    return max(1, math.ceil(max(estimates, default=1.0)))


def bootstrap_sharpes(
    returns: np.ndarray, periods_per_year: float, n_boot: int = 2000, mean_block: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """[n_boot, k] annualized Sharpe ratios of the k columns of ``returns`` [T, k] (curves over the
    same bars), each draw resampling ONE set of stationary-bootstrap indices for every column.

    ``mean_block`` None: `mean_block_length` over all columns. Draws where a column is flat are nan.
    Each draw's Sharpe ratio is metrics.sharpe of the resampled column, computed from how many
    times each bar was drawn (two matrix products instead of copying T x k values per draw).
    """
    from arch.bootstrap import StationaryBootstrap

    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"returns must be [T, k] (one column per curve), got shape {x.shape}")
    block = mean_block_length(*x.T) if mean_block is None else float(mean_block)
    if block < 1.0:
        raise ValueError(f"mean_block must be >= 1 bar, got {mean_block}")
    n = x.shape[0]
    center = x.mean(axis=0)
    dev = x - center  # centred so that the sums of squares below lose no digits
    dev_sq = dev**2
    bs = StationaryBootstrap(block, x, seed=np.random.default_rng(seed))
    s1, s2 = np.empty((n_boot, x.shape[1])), np.empty((n_boot, x.shape[1]))
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))  # draws per batch: counts stay ~16 MB
    for first in range(0, n_boot, chunk):
        last = min(n_boot, first + chunk)
        counts = np.stack([np.bincount(bs.update_indices(), minlength=n) for _ in range(last - first)])
        # Sums of the drawn deviations and of their squares, every column at once.
        s1[first:last], s2[first:last] = counts @ dev, counts @ dev_sq
    var = (s2 - s1**2 / n) / (n - 1)
    scale = np.maximum(np.abs(center), np.sqrt(np.mean(dev_sq, axis=0)))
    flat = ~(var > (1e-12 * scale) ** 2)  # all drawn bars equal: the Sharpe ratio is undefined
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (center + s1 / n) / np.sqrt(var) * math.sqrt(periods_per_year)
    out[flat] = math.nan
    return out


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided ``level`` percentile interval of bootstrap draws; (nan, nan) when more than half of
    them are undefined (a curve flat in most resamples has no honest interval)."""
    d = np.asarray(draws, dtype=np.float64).ravel()
    finite = d[np.isfinite(d)]
    if finite.size == 0 or finite.size < d.size // 2:
        return math.nan, math.nan
    # 1 - 0.95 is 0.050000000000000044 in binary: rounded, a 95% interval asks for exactly the 2.5th
    # and 97.5th percentiles (as the reference implementations do).
    tail = round(100.0 * (1.0 - level) / 2.0, 9)
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def stationary_bootstrap_sharpe_ci(
    returns: np.ndarray | list[float],
    periods_per_year: float,
    level: float = 0.95,
    n_boot: int = 2000,
    mean_block: float | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the annualized Sharpe ratio under the stationary bootstrap.

    ``mean_block`` is the mean block length in bars (None: chosen automatically, see the module
    doc). Returns (nan, nan) for a flat curve, whose Sharpe ratio is undefined.
    """
    r = _returns(returns, "returns")
    _check_level(level, n_boot)
    if np.std(r) == 0.0:
        return math.nan, math.nan
    draws = bootstrap_sharpes(r[:, None], periods_per_year, n_boot, mean_block, seed)
    return percentile_interval(draws, level)


def sharpe_diff_ci(
    returns_a: np.ndarray | list[float],
    returns_b: np.ndarray | list[float],
    periods_per_year: float,
    level: float = 0.95,
    n_boot: int = 2000,
    mean_block: float | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of Sharpe(a) - Sharpe(b) (annualized), both curves resampled with the SAME
    indices in each draw (paired stationary bootstrap). The curves must cover the same bars.
    Returns (nan, nan) when either curve is flat (its Sharpe ratio is undefined)."""
    a = _returns(returns_a, "returns_a")
    b = _returns(returns_b, "returns_b")
    if a.shape != b.shape:
        raise ValueError(f"returns_a and returns_b must cover the same bars, got {a.size} and {b.size} "
                         "returns; slice both curves to the same range")
    _check_level(level, n_boot)
    if np.std(a) == 0.0 or np.std(b) == 0.0:
        return math.nan, math.nan
    draws = bootstrap_sharpes(np.column_stack((a, b)), periods_per_year, n_boot, mean_block, seed)
    return percentile_interval(draws[:, 0] - draws[:, 1], level)


def psr_from_stats(sharpe_per_period: float, n_obs: int, skewness: float, kurtosis: float,
                   sr_benchmark: float = 0.0) -> float:
    """PSR from summary statistics: per-period Sharpe, number of returns, skewness, NON-excess kurtosis."""
    if n_obs < 2:
        raise ValueError(f"n_obs must be >= 2 returns, got {n_obs}")
    sr = sharpe_per_period
    from scipy import stats

    variance = 1.0 - skewness * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if variance <= 0.0:
        # Only possible with extreme skew and a huge per-period Sharpe: the asymptotic formula breaks.
        return math.nan
    return float(stats.norm.cdf((sr - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance)))


def _moments(returns: np.ndarray | list[float]) -> tuple[float, int, float, float]:
    """(per-period Sharpe, n, skewness, kurtosis) with the papers' estimators; Sharpe nan if flat."""
    from scipy import stats

    r = _returns(returns, "returns")
    sr = metrics.sharpe(r, 1.0)
    if not math.isfinite(sr):
        return math.nan, r.size, math.nan, math.nan
    return sr, r.size, float(stats.skew(r)), float(stats.kurtosis(r, fisher=False))


def probabilistic_sharpe_ratio(returns: np.ndarray | list[float], sr_benchmark: float = 0.0) -> float:
    """Probability that the true per-period Sharpe ratio exceeds ``sr_benchmark`` (per period, NOT
    annualized) given these returns' length, skewness and kurtosis; nan for a flat curve."""
    sr, n, skewness, kurt = _moments(returns)
    if not math.isfinite(sr):
        return math.nan
    return psr_from_stats(sr, n, skewness, kurt, sr_benchmark)


def expected_max_sharpe(n_trials: int, trials_sharpe_variance: float) -> float:
    """Expected largest per-period Sharpe ratio among ``n_trials`` unskilled trials (true Sharpe 0)
    whose estimated per-period Sharpe ratios have variance ``trials_sharpe_variance``.

    One trial selects nothing: the expected maximum is the mean, 0.
    """
    if int(n_trials) != n_trials or n_trials < 1:
        raise ValueError(f"n_trials must be a whole number >= 1 (every configuration and seed tried), "
                         f"got {n_trials}")
    if not trials_sharpe_variance >= 0.0:
        raise ValueError(f"trials_sharpe_variance must be >= 0 (variance of the trials' per-period "
                         f"Sharpe ratios), got {trials_sharpe_variance}")
    if n_trials == 1:
        return 0.0
    from scipy import stats

    n = float(n_trials)
    z = ((1.0 - EULER_GAMMA) * stats.norm.ppf(1.0 - 1.0 / n)
         + EULER_GAMMA * stats.norm.ppf(1.0 - 1.0 / (n * math.e)))
    return float(math.sqrt(trials_sharpe_variance) * z)


def deflated_sharpe_ratio(returns: np.ndarray | list[float], n_trials: int,
                          trials_sharpe_variance: float) -> float:
    """PSR against `expected_max_sharpe`: the probability that the chosen result's true Sharpe ratio
    beats what the best of ``n_trials`` unskilled trials would show by luck.

    ``trials_sharpe_variance`` is the variance of the PER-PERIOD Sharpe ratios across the trials
    (annualized variance / periods per year).
    """
    return probabilistic_sharpe_ratio(returns, expected_max_sharpe(n_trials, trials_sharpe_variance))
