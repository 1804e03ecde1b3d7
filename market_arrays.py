"""`MarketData`: candles and features of N pairs over T aligned bars (numpy arrays).

Its own module so that the data sources (`market_data`, `db`, `synthetic`) and the consumers (the
decision core, the env, backtests) can all name it without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MarketData:
    """Candles and features of N pairs over T aligned bars (times are candle OPEN times, UTC ms).

    Row t of ``features`` uses data up to the close of bar t only.
    """

    symbols: list[str]
    timeframe: str
    open_time_ms: np.ndarray  # [T] int64, strictly increasing
    open: np.ndarray  # [T, N] float64
    high: np.ndarray  # [T, N]
    low: np.ndarray  # [T, N]
    close: np.ndarray  # [T, N]
    volume: np.ndarray  # [T, N] base-asset volume
    features: np.ndarray  # [T, N, F] float64
    feature_names: list[str]
    meta: dict = field(default_factory=dict)  # source description (path, generator params, ...)

    def __post_init__(self) -> None:
        steps, pairs = self.close.shape
        if len(self.symbols) != pairs:
            raise ValueError(f"{len(self.symbols)} symbols but close has {pairs} columns")
        if self.open_time_ms.shape != (steps,):
            raise ValueError("open_time_ms must have one entry per bar")
        for name in ("open", "high", "low", "volume"):
            if getattr(self, name).shape != (steps, pairs):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, want {(steps, pairs)}")
        if self.features.shape[:2] != (steps, pairs) or self.features.shape[2] != len(
            self.feature_names
        ):
            raise ValueError("features must be [T, N, F] with F == len(feature_names)")
        if steps > 1 and not np.all(np.diff(self.open_time_ms) > 0):
            raise ValueError("open_time_ms must be strictly increasing")

    @property
    def n_bars(self) -> int:
        return int(self.close.shape[0])

    @property
    def n_pairs(self) -> int:
        return int(self.close.shape[1])

    def slice_bars(self, start: int, stop: int) -> MarketData:
        """Bars [start, stop) as a new MarketData (views, no copies)."""
        sl = slice(start, stop)
        return MarketData(
            symbols=list(self.symbols),
            timeframe=self.timeframe,
            open_time_ms=self.open_time_ms[sl],
            open=self.open[sl],
            high=self.high[sl],
            low=self.low[sl],
            close=self.close[sl],
            volume=self.volume[sl],
            features=self.features[sl],
            feature_names=list(self.feature_names),
            meta=dict(self.meta),
        )

    def slice_time(self, start_ms: int | None, end_ms: int | None) -> MarketData:
        """Bars whose open time lies in [start_ms, end_ms); None leaves that side open."""
        lo = 0 if start_ms is None else int(np.searchsorted(self.open_time_ms, start_ms, "left"))
        hi = self.n_bars if end_ms is None else int(np.searchsorted(self.open_time_ms, end_ms, "left"))
        return self.slice_bars(lo, hi)
