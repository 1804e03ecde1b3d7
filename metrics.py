"""Performance metrics as small pure functions over numpy arrays (empyrical/quantstats conventions).

Conventions (shared with DESIGN.md and checked against empyrical-reloaded and quantstats in
tests/test_metrics.py):

- Returns are SIMPLE per-bar returns of the equity curve: ``r[t] = equity[t] / equity[t-1] - 1``.
  An equity curve of T values (the first one being the initial capital) gives T-1 returns.
- Periods per year come from the timeframe; crypto trades 365 days a year, so ``1h`` is 8,760.
- Sharpe = mean(r) / std(r, ddof=1) * sqrt(periods), risk-free rate 0 (crypto has no natural one).
- Sortino = mean(r) * periods / (downside deviation * sqrt(periods)), the downside deviation being
  sqrt(mean(min(r, 0)^2)) over ALL observations (not just the losing ones), as empyrical does.
- Max drawdown is measured from the initial capital: the running peak starts at the first equity
  value, so a curve that only falls from the start has a drawdown (empyrical anchors it the same way).
- CAGR = (1 + total return) ** (periods / number of returns) - 1; Calmar = CAGR / |max drawdown|.
- Turnover = 1/2 * sum over bars and over pairs AND cash of |w_after - w_before|: buying 10% of
  the portfolio with cash counts once (0.1), a switch from one pair to another counts once too.

Ratios with a zero denominator (no volatility, no loss, no drawdown) are ``nan``, except Sortino
with no downside and a positive mean, which is ``inf`` as in empyrical. Nothing here reads files,
clocks or globals.
"""

from __future__ import annotations

import math
import re

import numpy as np

# Seconds per ccxt timeframe unit; a year is 365 days because crypto markets never close.
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
SECONDS_PER_YEAR = 365 * 86_400

# Every metric `compute_all` reports, in table order (metrics.json holds exactly these keys).
METRIC_NAMES = (
    "total_return",
    "cagr",
    "annual_volatility",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "max_drawdown_duration_bars",
    "turnover",
    "fees_paid",
    "hit_rate",
    "exposure",
)


def _as_1d(values: np.ndarray | list[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def periods_per_year(timeframe: str) -> float:
    """Bars per 365-day year for a ccxt timeframe string: ``1h`` -> 8760, ``1d`` -> 365, ``1M`` -> 12."""
    match = re.fullmatch(r"(\d+)([smhdwM])", timeframe.strip())
    if not match:
        raise ValueError(f"unknown timeframe {timeframe!r}; use ccxt strings such as '1h', '4h', '1d'")
    count, unit = int(match.group(1)), match.group(2)
    if count <= 0:
        raise ValueError(f"timeframe {timeframe!r} must have a positive count")
    if unit == "M":
        return 12.0 / count
    return SECONDS_PER_YEAR / (count * _UNIT_SECONDS[unit])


def simple_returns(equity: np.ndarray | list[float]) -> np.ndarray:
    """Per-bar simple returns ``equity[1:] / equity[:-1] - 1`` (T values give T-1 returns)."""
    eq = _as_1d(equity, "equity")
    if eq.size and not np.all(eq[:-1] > 0):
        # A zero value can only be followed by zero (ruin); its "return" would be 0/0.
        raise ValueError("equity must stay positive before its last value to define returns")
    return eq[1:] / eq[:-1] - 1.0


def total_return(returns: np.ndarray) -> float:
    """Compounded return over the whole series: prod(1 + r) - 1 (0 for an empty series)."""
    r = _as_1d(returns, "returns")
    return float(np.prod(1.0 + r) - 1.0)


def cagr(returns: np.ndarray, periods: float) -> float:
    """Compound annual growth rate: (1 + total return) ** (periods / len(returns)) - 1."""
    r = _as_1d(returns, "returns")
    if r.size == 0:
        return math.nan
    growth = 1.0 + total_return(r)
    if growth <= 0.0:
        return -1.0  # ruined: the whole capital is gone whatever the horizon
    return float(growth ** (periods / r.size) - 1.0)


def annual_volatility(returns: np.ndarray, periods: float) -> float:
    """Sample standard deviation of per-bar returns (ddof=1) times sqrt(periods)."""
    r = _as_1d(returns, "returns")
    if r.size < 2:
        return math.nan
    return float(np.std(r, ddof=1) * math.sqrt(periods))


def sharpe(returns: np.ndarray, periods: float) -> float:
    """Annualized Sharpe ratio with a zero risk-free rate: mean / std(ddof=1) * sqrt(periods)."""
    r = _as_1d(returns, "returns")
    if r.size < 2:
        return math.nan
    std = float(np.std(r, ddof=1))
    if std == 0.0:
        return math.nan
    return float(np.mean(r) / std * math.sqrt(periods))


def downside_deviation(returns: np.ndarray, periods: float) -> float:
    """Annualized downside deviation below 0: sqrt(mean(min(r, 0)^2)) over all bars, times sqrt(periods)."""
    r = _as_1d(returns, "returns")
    if r.size == 0:
        return math.nan
    return float(math.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) * math.sqrt(periods))


def sortino(returns: np.ndarray, periods: float) -> float:
    """Annualized Sortino ratio: mean(r) * periods / downside_deviation (``inf`` with no losing bar)."""
    r = _as_1d(returns, "returns")
    if r.size == 0:
        return math.nan
    mean_annual = float(np.mean(r) * periods)
    dd = downside_deviation(r, periods)
    if dd == 0.0:
        return math.inf if mean_annual > 0 else math.nan
    return mean_annual / dd


def wealth_index(returns: np.ndarray) -> np.ndarray:
    """Growth of 1 unit of initial capital, the initial 1 included (len(returns) + 1 values)."""
    r = _as_1d(returns, "returns")
    return np.concatenate(([1.0], np.cumprod(1.0 + r)))


def drawdown_series(returns: np.ndarray) -> np.ndarray:
    """Drawdown after each bar (<= 0), relative to the running peak that starts at the initial capital."""
    wealth = wealth_index(returns)
    peak = np.maximum.accumulate(wealth)
    return (wealth / peak - 1.0)[1:]


def max_drawdown(returns: np.ndarray) -> float:
    """Deepest drawdown from a running peak (initial capital included), as a negative fraction (0 if none)."""
    dd = drawdown_series(returns)
    return float(dd.min()) if dd.size else 0.0


def max_drawdown_duration(returns: np.ndarray) -> int:
    """Longest run of bars below the previous peak (peak to recovery, or to the end if never recovered)."""
    dd = drawdown_series(returns)
    longest = current = 0
    for under in (dd < 0.0).tolist():
        current = current + 1 if under else 0
        longest = max(longest, current)
    return longest


def calmar(returns: np.ndarray, periods: float) -> float:
    """CAGR divided by the absolute max drawdown (``nan`` when there was no drawdown)."""
    mdd = max_drawdown(returns)
    if mdd >= 0.0:
        return math.nan
    return cagr(returns, periods) / abs(mdd)


def turnover(weights_before: np.ndarray, weights_after: np.ndarray) -> float:
    """Total turnover: 1/2 * sum over bars and columns (pairs then cash) of |after - before|.

    ``weights_before[t]`` are the weights just before bar t's rebalance (drifted with prices),
    ``weights_after[t]`` just after it; both [T, N+1]. A full switch from cash into one pair is 1.0.
    """
    before = np.asarray(weights_before, dtype=np.float64)
    after = np.asarray(weights_after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"weights must both be [T, N+1], got {before.shape} and {after.shape}")
    return float(0.5 * np.abs(after - before).sum())


def fees_paid(fees: np.ndarray) -> float:
    """Sum of the fees paid (quote currency); any shape (per bar, or per bar and pair)."""
    return float(np.asarray(fees, dtype=np.float64).sum())


def hit_rate(returns: np.ndarray) -> float:
    """Share of bars with a positive return among the bars whose return is not zero (``nan`` if none)."""
    r = _as_1d(returns, "returns")
    moved = r[r != 0.0]
    if moved.size == 0:
        return math.nan
    return float(np.mean(moved > 0.0))


def exposure(weights: np.ndarray) -> float:
    """Average share of the portfolio invested in pairs (1 - cash weight), over bars; weights [T, N+1]."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0:
        raise ValueError(f"weights must be a non-empty [T, N+1] array, got shape {w.shape}")
    return float(np.mean(1.0 - w[:, -1]))


def compute_all(
    equity: np.ndarray,
    periods: float,
    weights_before: np.ndarray,
    weights_after: np.ndarray,
    fees: np.ndarray,
) -> dict[str, float]:
    """Every metric of `METRIC_NAMES` for one equity curve and its allocation/fee records.

    ``weights_after`` is also what `exposure` averages (the allocation held through each bar).
    """
    r = simple_returns(equity)
    return {
        "total_return": total_return(r),
        "cagr": cagr(r, periods),
        "annual_volatility": annual_volatility(r, periods),
        "sharpe": sharpe(r, periods),
        "sortino": sortino(r, periods),
        "calmar": calmar(r, periods),
        "max_drawdown": max_drawdown(r),
        "max_drawdown_duration_bars": float(max_drawdown_duration(r)),
        "turnover": turnover(weights_before, weights_after),
        "fees_paid": fees_paid(fees),
        "hit_rate": hit_rate(r),
        "exposure": exposure(weights_after),
    }
