"""The indicator definitions of ``features.indicators`` (dbt) in numpy, for candles read from CSV.

Same definitions, same gap rule, same warm flag as ``dbt_project/models/features/indicators.sql``
(tests check both against TA-Lib and against each other):

- ``log_return``: ln(close / previous close).
- ``rsi_14``: TA_RSI: gains/losses of close-to-close changes, Wilder's smoothing seeded with the
  mean of the first 14 (from bar 14). 50 when both averages are 0 (TA-Lib says 0 below an
  absolute 1e-8, which misfires on low-priced coins).
- ``bb_*_20``: TA_BBANDS(20, 2, 2, SMA): middle = SMA(20), bands = middle +- 2 population
  standard deviations (exactly 0 when the 20 closes are equal; TA-Lib's running-sum variance
  zeroes anything under an absolute 1e-8, which again misfires on low prices);
  ``bb_pctb_20`` = (close - lower) / (upper - lower), 0.5 when the bands coincide;
  ``bb_width_20`` = (upper - lower) / middle.
- ``macd``/``macd_signal``/``macd_hist``: TA_MACD(12, 26, 9): EMAs with k = 2 / (n + 1) seeded by
  an SMA; like TA-Lib the fast EMA starts at bar 26 - 12 = 14 so both seed at bar 25; the signal
  EMA(9) of macd seeds at bar 33, where all three start.
- ``atr_14``: TA_ATR: Wilder's smoothing of the true range, seeded with its 14-bar mean (bar 14).
- ``volatility_24``: sample standard deviation (n - 1) of the last 24 log returns (bar 24 on).
- ``volume_z_24``: (volume - mean) / sample std of the last 24 volumes, current bar included
  (bar 23 on); 0 when the 24 volumes are equal.

Gap rule: a series splits into segments of consecutive bars; a new segment starts wherever
``open_time_ms`` advances by anything but one ``timeframe_ms`` (any missing bar). Every indicator
restarts in each segment as TA-Lib would on that segment alone. ``bar_index`` counts bars since
the segment start; ``warm`` = ``bar_index >= 33`` (the longest lookback, MACD's signal): from there
every feature is defined. Values before their lookback are NaN.

Recursions are written with the exact floating-point operations of TA-Lib's C code and the dbt
aggregates (sequential-sum seeds, ``((x - s) * k) + s``, ``((s * (n - 1)) + x) / n``), so EMAs,
RSI, ATR and MACD agree with both to the last bits; rolling means and deviations agree to ~1e-15.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURE_NAMES: list[str] = [
    "close",
    "log_return",
    "rsi_14",
    "bb_middle_20",
    "bb_upper_20",
    "bb_lower_20",
    "bb_pctb_20",
    "bb_width_20",
    "macd",
    "macd_signal",
    "macd_hist",
    "atr_14",
    "volatility_24",
    "volume_z_24",
]
# bar_index from which every feature is defined (TA_MACD's lookback: 26 - 1 + 9 - 1).
WARM_BARS = 33
RSI_PERIOD, ATR_PERIOD, BB_PERIOD, BB_DEVIATIONS = 14, 14, 20, 2.0
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
ROLLING_BARS = 24


def bar_index(open_time_ms: np.ndarray | None, timeframe_ms: int | None, n: int | None = None) -> np.ndarray:
    """Bars since the start of each gap-free segment (the gap rule), int64 [T].

    Without ``open_time_ms``/``timeframe_ms`` the ``n`` rows form one segment.
    """
    if open_time_ms is None or timeframe_ms is None:
        if n is None:
            raise ValueError("give open_time_ms and timeframe_ms, or n")
        return np.arange(n, dtype=np.int64)
    times = np.asarray(open_time_ms, dtype=np.int64)
    if times.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.ones(times.size, dtype=bool)
    starts[1:] = np.diff(times) != int(timeframe_ms)
    positions = np.arange(times.size, dtype=np.int64)
    segment_first = np.maximum.accumulate(np.where(starts, positions, 0))
    return positions - segment_first


def _sequential_sum(values: np.ndarray) -> float:
    """Left-to-right float sum (what TA-Lib's seed loops and PostgreSQL's running sum do)."""
    return float(np.cumsum(values)[-1])


def _wilder(x: np.ndarray, period: int, first: int) -> np.ndarray:
    """TA-Lib Wilder smoothing of x[first:]: mean of the first ``period`` inputs, then recursion."""
    out = np.full(x.size, np.nan)
    seed_at = first + period - 1
    if seed_at >= x.size:
        return out
    state = _sequential_sum(x[first : seed_at + 1]) / period
    out[seed_at] = state
    keep = float(period - 1)
    values = x.tolist()
    for i in range(seed_at + 1, x.size):
        state = ((state * keep) + values[i]) / period
        out[i] = state
    return out


def _ema(x: np.ndarray, period: int, first: int) -> np.ndarray:
    """TA-Lib EMA of x[first:], k = 2 / (period + 1), seeded with the SMA of its first ``period``."""
    out = np.full(x.size, np.nan)
    seed_at = first + period - 1
    if seed_at >= x.size:
        return out
    k = 2.0 / (period + 1)
    state = _sequential_sum(x[first : seed_at + 1]) / period
    out[seed_at] = state
    values = x.tolist()
    for i in range(seed_at + 1, x.size):
        state = ((values[i] - state) * k) + state
        out[i] = state
    return out


def _rolling_windows(x: np.ndarray, window: int) -> np.ndarray:
    return sliding_window_view(x, window)


def _segment(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray
) -> dict[str, np.ndarray]:
    """All features of one gap-free segment (bar 0 = its first candle)."""
    n = close.size
    out = {name: np.full(n, np.nan) for name in FEATURE_NAMES}
    out["close"] = close.copy()
    if n < 2:
        return out
    prev = close[:-1]
    change = close[1:] - prev
    gain = np.full(n, np.nan)
    loss = np.full(n, np.nan)
    gain[1:] = np.where(change < 0, 0.0, change)
    loss[1:] = np.where(change < 0, prev - close[1:], 0.0)
    true_range = np.full(n, np.nan)
    true_range[1:] = np.maximum(
        high[1:] - low[1:], np.maximum(np.abs(prev - high[1:]), np.abs(prev - low[1:]))
    )
    log_return = np.full(n, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_return[1:] = np.log(close[1:] / prev)
    out["log_return"] = log_return

    avg_gain = _wilder(gain, RSI_PERIOD, 1)
    avg_loss = _wilder(loss, RSI_PERIOD, 1)
    total = avg_gain + avg_loss
    with np.errstate(divide="ignore", invalid="ignore"):
        out["rsi_14"] = np.where(total == 0, 50.0, 100 * (avg_gain / total))
    out["rsi_14"][np.isnan(total)] = np.nan
    out["atr_14"] = _wilder(true_range, ATR_PERIOD, 1)

    if n >= BB_PERIOD:
        windows = _rolling_windows(close, BB_PERIOD)
        middle = windows.mean(axis=1)
        std = np.where(windows.max(axis=1) == windows.min(axis=1), 0.0, windows.std(axis=1))
        upper = middle + std * BB_DEVIATIONS
        lower = middle - std * BB_DEVIATIONS
        tail = slice(BB_PERIOD - 1, None)
        out["bb_middle_20"][tail] = middle
        out["bb_upper_20"][tail] = upper
        out["bb_lower_20"][tail] = lower
        with np.errstate(divide="ignore", invalid="ignore"):
            out["bb_pctb_20"][tail] = np.where(std > 0, (close[tail] - lower) / (upper - lower), 0.5)
        out["bb_width_20"][tail] = (upper - lower) / middle

    ema_slow = _ema(close, MACD_SLOW, 0)
    ema_fast = _ema(close, MACD_FAST, MACD_SLOW - MACD_FAST)
    macd_line = ema_fast - ema_slow
    signal = _ema(macd_line, MACD_SIGNAL, MACD_SLOW - 1)
    if n > WARM_BARS:
        tail = slice(WARM_BARS, None)
        out["macd"][tail] = macd_line[tail]
        out["macd_signal"][tail] = signal[tail]
        out["macd_hist"][tail] = macd_line[tail] - signal[tail]

    if n > ROLLING_BARS:
        windows = _rolling_windows(log_return[1:], ROLLING_BARS)
        out["volatility_24"][ROLLING_BARS:] = windows.std(axis=1, ddof=1)
    if n >= ROLLING_BARS:
        windows = _rolling_windows(volume, ROLLING_BARS)
        mean = windows.mean(axis=1)
        std = windows.std(axis=1, ddof=1)
        flat = (windows.max(axis=1) == windows.min(axis=1)) | (std == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            z_score = (volume[ROLLING_BARS - 1 :] - mean) / std
        out["volume_z_24"][ROLLING_BARS - 1 :] = np.where(flat, 0.0, z_score)
    return out


def compute_indicators(
    open: np.ndarray,  # noqa: A002 - the candle field's name
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    open_time_ms: np.ndarray | None = None,
    timeframe_ms: int | None = None,
) -> dict[str, np.ndarray]:
    """Indicators of one series of candles in time order, with the dbt model's definitions.

    Arrays are 1-D float [T] (``open`` is accepted for symmetry; no indicator uses it). With
    ``open_time_ms`` [T] and ``timeframe_ms`` the gap rule applies; without them the rows are
    taken as one gap-free segment. Returns float64 arrays [T] keyed by :data:`FEATURE_NAMES`
    (NaN before each lookback), plus ``bar_index`` (int64) and ``warm`` (bool).
    """
    close = np.asarray(close, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float64)
    n = close.size
    for name, array in (("open", open), ("high", high), ("low", low), ("volume", volume)):
        if np.shape(array) != (n,):
            raise ValueError(f"{name} has shape {np.shape(array)}, close has {(n,)}")
    if open_time_ms is not None and np.shape(open_time_ms) != (n,):
        raise ValueError("open_time_ms must have one entry per candle")
    index = bar_index(open_time_ms, timeframe_ms, n)
    result = {name: np.full(n, np.nan) for name in FEATURE_NAMES}
    starts = np.flatnonzero(index == 0)
    ends = np.append(starts[1:], n)
    for start, end in zip(starts, ends, strict=True):
        part = _segment(high[start:end], low[start:end], close[start:end], volume[start:end])
        for name in FEATURE_NAMES:
            result[name][start:end] = part[name]
    result["bar_index"] = index
    result["warm"] = index >= WARM_BARS
    return result
