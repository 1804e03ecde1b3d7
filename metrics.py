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

Against a benchmark (same bars): beta = cov(r, b) / var(b); alpha annualized as empyrical does,
(1 + mean(r - beta b)) ** periods - 1; tracking error = annualized std of r - b; information ratio =
the annualized Sharpe ratio of r - b; the excess-return curve is wealth / benchmark wealth - 1.
Calendar periods (months, years) are UTC and dated by each return's bar; rolling windows are in bars.
Drawdown episodes run from the last peak through the trough to the first bar back at the peak.

Ratios with a zero denominator (no volatility, no loss, no drawdown) are ``nan``, except Sortino
with no downside and a positive mean, which is ``inf`` as in empyrical. Nothing here reads files,
clocks or globals.
"""

from __future__ import annotations

import math
import re
from typing import Any

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


# Relative shortfall below the peak that still counts as recovered: compounding returns back to the
# same equity value can land 1e-16 short of the peak, which is no drawdown.
RECOVERY_TOLERANCE = 1e-12


def max_drawdown_duration(returns: np.ndarray) -> int:
    """Longest run of bars below the previous peak (peak to recovery, or to the end if never recovered)."""
    dd = drawdown_series(returns)
    longest = current = 0
    for under in (dd < -RECOVERY_TOLERANCE).tolist():
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


# ------------------------------------------------------------------- against a benchmark
def _paired(returns: np.ndarray, benchmark_returns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = _as_1d(returns, "returns")
    b = _as_1d(benchmark_returns, "benchmark_returns")
    if r.shape != b.shape:
        raise ValueError(f"returns and benchmark_returns must cover the same bars, got {r.size} and {b.size}")
    return r, b


def beta(returns: np.ndarray, benchmark_returns: np.ndarray) -> float:
    """Slope of the returns on the benchmark's: cov(r, b) / var(b) (``nan`` for a flat benchmark)."""
    r, b = _paired(returns, benchmark_returns)
    if r.size < 2:
        return math.nan
    b_dev = b - b.mean()
    var = float(np.mean(b_dev**2))
    if var == 0.0:
        return math.nan
    return float(np.mean((r - r.mean()) * b_dev) / var)


def alpha(returns: np.ndarray, benchmark_returns: np.ndarray, periods: float) -> float:
    """Annualized Jensen's alpha, empyrical's way: (1 + mean(r - beta * b)) ** periods - 1."""
    r, b = _paired(returns, benchmark_returns)
    slope = beta(r, b)
    if not math.isfinite(slope):
        return math.nan
    return float((1.0 + np.mean(r - slope * b)) ** periods - 1.0)


def correlation(returns: np.ndarray, benchmark_returns: np.ndarray) -> float:
    """Pearson correlation of the per-bar returns (``nan`` when either is flat)."""
    r, b = _paired(returns, benchmark_returns)
    if r.size < 2 or np.std(r) == 0.0 or np.std(b) == 0.0:
        return math.nan
    return float(np.corrcoef(r, b)[0, 1])


def tracking_error(returns: np.ndarray, benchmark_returns: np.ndarray, periods: float) -> float:
    """Annualized standard deviation (ddof=1) of the active returns r - b."""
    r, b = _paired(returns, benchmark_returns)
    return annual_volatility(r - b, periods)


def information_ratio(returns: np.ndarray, benchmark_returns: np.ndarray, periods: float) -> float:
    """Annualized information ratio: mean(r - b) / std(r - b, ddof=1) * sqrt(periods).

    The Sharpe ratio of the active returns (empyrical's ``excess_sharpe`` times sqrt(periods)).
    """
    r, b = _paired(returns, benchmark_returns)
    return sharpe(r - b, periods)


def relative_wealth(returns: np.ndarray, benchmark_returns: np.ndarray) -> np.ndarray:
    """Excess-return curve: wealth / benchmark wealth - 1 after each bar, the initial 0 included.

    Geometric, so its last value is (1 + total return) / (1 + benchmark total return) - 1.
    """
    r, b = _paired(returns, benchmark_returns)
    return wealth_index(r) / wealth_index(b) - 1.0


# ------------------------------------------------------------------------- over calendar time
def period_returns(
    returns: np.ndarray, open_time_ms: np.ndarray, unit: str = "M"
) -> tuple[np.ndarray, np.ndarray]:
    """Compounded returns per calendar period (UTC): ``unit`` "D", "W" (weeks from Thursday 1970-01-01,
    numpy's), "M" or "Y".

    ``open_time_ms[k]`` dates ``returns[k]`` (the bar whose close ends it). Returns (period starts
    as datetime64 of that unit, compounded return of the bars in each period); only periods that
    hold at least one return appear.
    """
    r = _as_1d(returns, "returns")
    times = np.asarray(open_time_ms, dtype=np.int64)
    if times.shape != r.shape:
        raise ValueError(f"open_time_ms must date every return: {times.size} times for {r.size} returns")
    if unit not in ("D", "W", "M", "Y"):
        raise ValueError(f"unit must be 'D', 'W', 'M' or 'Y', got {unit!r}")
    if r.size == 0:
        return np.array([], dtype=f"datetime64[{unit}]"), np.array([])
    keys = times.astype("datetime64[ms]").astype(f"datetime64[{unit}]")
    if np.any(keys[1:] < keys[:-1]):
        raise ValueError("open_time_ms must be sorted in time")
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[starts], np.multiply.reduceat(1.0 + r, starts) - 1.0


def _rolling_moments(returns: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    r = _as_1d(returns, "returns")
    if int(window) != window or window < 2:
        raise ValueError(f"window must be a whole number of bars >= 2, got {window}")
    # pandas' rolling moments are numerically stable over long series (a cumulative-sum formula
    # loses digits on a year of hourly bars).
    rolling = pd.Series(r).rolling(int(window))
    return rolling.mean().to_numpy(), rolling.std(ddof=1).to_numpy()


def rolling_volatility(returns: np.ndarray, window: int, periods: float) -> np.ndarray:
    """Annualized volatility over the trailing ``window`` bars, ending at each bar (nan before)."""
    _, std = _rolling_moments(returns, window)
    return std * math.sqrt(periods)


def rolling_sharpe(returns: np.ndarray, window: int, periods: float) -> np.ndarray:
    """Annualized Sharpe ratio over the trailing ``window`` bars, ending at each bar (nan before,
    and where the window is flat)."""
    mean, std = _rolling_moments(returns, window)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean / std * math.sqrt(periods)
    out[~(std > 0.0)] = math.nan
    return out


# ------------------------------------------------------------------------------- drawdowns
def drawdown_periods(returns: np.ndarray, top: int | None = None) -> list[dict[str, Any]]:
    """Drawdown episodes, deepest first (``top`` of them), as wealth-index positions (0 = the initial
    capital, k = after the k-th return; equity-curve positions for the curve the returns come from):

    ``peak`` the last position at the running maximum before the fall, ``trough`` the lowest
    position, ``recovery`` the first position back at (or above) the peak or None if it never got
    back, ``depth`` trough / peak - 1 (< 0), ``length`` the positions under water (peak excluded,
    recovery excluded; to the end when not recovered), as `max_drawdown_duration` counts them.
    """
    wealth = wealth_index(returns)
    peak = np.maximum.accumulate(wealth)
    under = wealth < peak * (1.0 - RECOVERY_TOLERANCE)
    edges = np.diff(np.concatenate(([False], under, [False])).astype(np.int8))
    firsts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # under on [first, end)
    periods = []
    for first, end in zip(firsts.tolist(), ends.tolist(), strict=True):
        trough = first + int(np.argmin(wealth[first:end]))
        periods.append({
            "peak": first - 1,
            "trough": trough,
            "recovery": end if end < wealth.size else None,
            "depth": float(wealth[trough] / peak[trough] - 1.0),
            "length": end - first,
        })
    periods.sort(key=lambda p: p["depth"])
    return periods if top is None else periods[:top]


# ---------------------------------------------------------------------------------- trading
def rebalance_count(weights_before: np.ndarray, weights_after: np.ndarray) -> int:
    """Bars on which the allocation changed at the open (a rebalance traded something)."""
    before = np.asarray(weights_before, dtype=np.float64)
    after = np.asarray(weights_after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2:
        raise ValueError(f"weights must both be [T, N+1], got {before.shape} and {after.shape}")
    return int(np.count_nonzero(np.any(after != before, axis=1)))


def allocation_deviation(weights: np.ndarray) -> float:
    """How static an allocation is: mean over bars of 1/2 * sum over pairs and cash of |w[t] - mean w|.

    0 for a constant allocation; the share of the portfolio that sits away from its average
    allocation on an average bar (at most 1). A learned constant mix shows up as ~0.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0:
        raise ValueError(f"weights must be a non-empty [T, N+1] array, got shape {w.shape}")
    return float(np.mean(0.5 * np.abs(w - w.mean(axis=0)).sum(axis=1)))


def round_trips(weights_after: np.ndarray, pnl: np.ndarray) -> list[dict[str, Any]]:
    """Round trips per pair from a backtest record, as `Position` counts them (flat -> held -> flat).

    ``weights_after`` [T, N+1] (pairs then cash; a pair is held where its weight is > 0, the start
    being flat) and ``pnl`` [T, N], each bar's PnL net of fees and slippage. A trip opens on the
    bar whose rebalance buys into a flat pair and closes on the bar whose rebalance sells it all;
    its ``pnl`` is the sum of the pair's per-bar PnL over those bars, which telescopes to sell
    value - buy value - fees: `RoundTrip.pnl`. Open trips carry ``close`` None and their PnL so far.
    Each: {"pair": column, "open": bar, "close": bar or None, "pnl": quote}.
    """
    w = np.asarray(weights_after, dtype=np.float64)
    p = np.asarray(pnl, dtype=np.float64)
    if w.ndim != 2 or p.shape != (w.shape[0], w.shape[1] - 1):
        raise ValueError(f"weights_after [T, N+1] and pnl [T, N] do not match: {w.shape} and {p.shape}")
    held = w[:, :-1] > 0.0
    edges = np.diff(np.vstack((np.zeros((1, held.shape[1]), bool), held, np.zeros((1, held.shape[1]), bool)))
                    .astype(np.int8), axis=0)
    cum = np.vstack((np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)))
    trips = []
    for pair in range(held.shape[1]):
        opens = np.flatnonzero(edges[:, pair] == 1)
        ends = np.flatnonzero(edges[:, pair] == -1)  # first flat bar after the trip (T if never)
        for first, end in zip(opens.tolist(), ends.tolist(), strict=True):
            closed = end < held.shape[0]
            last = end if closed else end - 1  # the closing sale's bar carries its fee and fill
            trips.append({"pair": pair, "open": first, "close": end if closed else None,
                          "pnl": float(cum[last + 1, pair] - cum[first, pair])})
    return trips


def call_hit_rate(calls: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Per pair: share of the buy/sell calls made at bar t's close that the next close-to-close move
    proved right (buy before a rise, sell before a fall). Holds, the last bar (no next move) and
    unchanged prices do not count; ``nan`` for a pair with no such call. ``calls`` [T, N] in -1/0/+1."""
    c = np.asarray(calls, dtype=np.float64)
    px = np.asarray(close, dtype=np.float64)
    if c.shape != px.shape or c.ndim != 2:
        raise ValueError(f"calls and close must both be [T, N], got {c.shape} and {px.shape}")
    move = np.sign(px[1:] - px[:-1])
    made = c[:-1]
    counted = (made != 0.0) & (move != 0.0)
    right = (made == move) & counted
    n = counted.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, right.sum(axis=0) / np.maximum(n, 1), math.nan)
