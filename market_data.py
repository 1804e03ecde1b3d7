"""Aligned market arrays, the one shape every consumer of market data (env, training, backtests) reads.

Sources: the database (``db.load_market`` over ``features.indicators``), a folder of CSV candles
(indicators computed in Python by ``indicators.py`` with the dbt models' definitions), or the
synthetic generator. Alignment rule: a bar is kept only when every pair has a candle at that
open time and its indicators are warm; missing bars are dropped, never invented.

`MarketData` itself lives in `market_arrays` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from market_arrays import MarketData
from settings import parse_time_ms as to_ms  # noqa: F401  (re-exported: callers say market_data.to_ms)

# ----------------------------------------------------------------------------------------------
# Loaders: CSV folders, the synthetic generator and the database behind one entry point.
# ----------------------------------------------------------------------------------------------

SOURCE_KINDS = ("db", "csv", "synthetic")
CSV_COLUMNS = "ts_ms,open,high,low,close,volume"




def _read_candles_csv(path: Path) -> np.ndarray:
    """[rows, 6] float64 (ts_ms, open, high, low, close, volume) sorted by time, duplicates dropped."""
    import pandas as pd

    frame = pd.read_csv(path)
    missing = {"ts_ms", "open", "high", "low", "close", "volume"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}; want {CSV_COLUMNS}")
    frame = frame.drop_duplicates("ts_ms", keep="last").sort_values("ts_ms")
    return frame[["ts_ms", "open", "high", "low", "close", "volume"]].to_numpy(dtype=np.float64)


def _candle_file(directory: Path, symbol: str) -> Path:
    from binance.symbols import file_stem  # lazy: the binance package imports ccxt

    stem = file_stem(symbol)
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"no candle file for {symbol} in {directory} (want {stem}.csv or {stem}.csv.gz)")


def align(
    symbols: list[str],
    timeframe: str,
    series: list[dict[str, np.ndarray]],
    feature_names: list[str],
    meta: dict[str, Any] | None = None,
) -> MarketData:
    """Align per-pair series (``open_time_ms``, OHLCV and each feature, all [T_i]) into a `MarketData`.

    Implements the module's alignment rule: keep an open time only where every pair has a candle
    whose ``warm`` flag is set; nothing is filled in.
    """
    common: np.ndarray | None = None
    for s in series:
        times = s["open_time_ms"][s["warm"]]
        common = times if common is None else np.intersect1d(common, times, assume_unique=True)
    assert common is not None
    rows = [np.searchsorted(s["open_time_ms"], common) for s in series]

    def stack(key: str) -> np.ndarray:
        return np.column_stack([s[key][r] for s, r in zip(series, rows, strict=True)]) if len(common) else (
            np.zeros((0, len(series)))
        )

    features = np.stack([stack(name) for name in feature_names], axis=-1) if feature_names else None
    return MarketData(
        symbols=list(symbols),
        timeframe=timeframe,
        open_time_ms=common.astype(np.int64),
        open=stack("open"),
        high=stack("high"),
        low=stack("low"),
        close=stack("close"),
        volume=stack("volume"),
        features=features if features is not None else np.zeros((len(common), len(series), 0)),
        feature_names=list(feature_names),
        meta=dict(meta or {}),
    )


def from_candles(
    symbols: list[str], timeframe: str, candles: list[np.ndarray], meta: dict[str, Any] | None = None
) -> MarketData:
    """Aligned market arrays from each pair's candles ([rows, 6]: ts_ms, open, high, low, close, volume,
    sorted by time), with ``indicators.compute_indicators`` over each pair's whole array (`align` rule)."""
    from binance.symbols import timeframe_ms
    from indicators import FEATURE_NAMES, compute_indicators

    step_ms = timeframe_ms(timeframe)
    series = []
    for rows in candles:
        times = rows[:, 0].astype(np.int64)
        ind = compute_indicators(rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5], times, step_ms)
        entry = {"open_time_ms": times, "open": rows[:, 1], "high": rows[:, 2], "low": rows[:, 3],
                 "close": rows[:, 4], "volume": rows[:, 5], "warm": ind["warm"]}
        entry.update({name: ind[name] for name in FEATURE_NAMES})
        series.append(entry)
    return align(list(symbols), timeframe, series, list(FEATURE_NAMES), meta)


def from_csv_dir(
    directory: str | Path,
    symbols: list[str] | None,
    timeframe: str,
    start: Any = None,
    end: Any = None,
) -> MarketData:
    """Candles from a folder of ``BASE_QUOTE.csv[.gz]`` files with indicators computed in Python.

    ``indicators.compute_indicators`` applies the dbt models' definitions and gap rule to each
    pair's whole file (so bars just after ``start`` are warm from earlier history), then pairs are
    aligned (`align`) and cut to [start, end). ``symbols=None`` takes every file in the folder.
    The feature columns are ``indicators.FEATURE_NAMES``, the same as ``db.load_market``'s.
    """
    from binance.symbols import symbol_from_file_stem

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory of CSV candles")
    if symbols is None:
        stems = sorted(p.name.split(".")[0] for p in directory.glob("*.csv*") if not p.name.startswith("_"))
        symbols = [symbol_from_file_stem(stem) for stem in stems]
    if not symbols:
        raise ValueError(f"no symbols given and no candle files in {directory}")
    candles = [_read_candles_csv(_candle_file(directory, symbol)) for symbol in symbols]
    data = from_candles(list(symbols), timeframe, candles, {"source": "csv", "path": str(directory)})
    start_ms = None if start is None else to_ms(start)
    end_ms = None if end is None else to_ms(end)
    return data.slice_time(start_ms, end_ms)


def from_synthetic(**params: Any) -> MarketData:
    """The synthetic market (`synthetic.generate`; keys of `synthetic.SYNTHETIC_DEFAULTS`)."""
    import synthetic

    return synthetic.generate(**params)


def load(source: Mapping[str, Any]) -> MarketData:
    """One entry point for every data source; ``source["kind"]`` picks it:

    - ``{kind: db, symbols, timeframe, start, end, exchange: binance}``: ``db.load_market`` over
      ``features.indicators`` (DATABASE_URL or the embedded PostgreSQL).
    - ``{kind: csv, path, symbols (null: all files), timeframe, start, end}``: `from_csv_dir`.
    - ``{kind: synthetic, ...}``: `from_synthetic` (see synthetic.SYNTHETIC_DEFAULTS for the knobs).

    ``start``/``end`` are ISO dates or epoch ms, [start, end), and may be null (everything).
    """
    from settings import ConfigError, check_keys

    source = dict(source or {})
    kind = source.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"data source kind {kind!r} unknown; choose one of {SOURCE_KINDS}")
    if kind == "synthetic":
        return from_synthetic(**source)
    if kind == "csv":
        check_keys(source, {"path", "symbols", "timeframe", "start", "end"}, "csv source")
        if "path" not in source or "timeframe" not in source:
            raise ConfigError("a csv source needs path and timeframe")
        return from_csv_dir(source["path"], source.get("symbols"), source["timeframe"],
                            source.get("start"), source.get("end"))
    check_keys(source, {"symbols", "timeframe", "start", "end", "exchange"}, "db source")
    if not source.get("symbols") or "timeframe" not in source:
        raise ConfigError("a db source needs symbols and timeframe")
    import db

    start_ms = None if source.get("start") is None else to_ms(source["start"])
    end_ms = None if source.get("end") is None else to_ms(source["end"])
    return db.load_market(list(source["symbols"]), source["timeframe"], start_ms, end_ms,
                          exchange=source.get("exchange", "binance"))


load_market_data = load  # the name the env helper's brief uses


def split_by_dates(data: MarketData, splits: Mapping[str, Mapping[str, Any]]) -> dict[str, MarketData]:
    """Cut ``data`` into named [start, end) date ranges, e.g. ``{"train": {"start": "2020-01-01",
    "end": "2021-01-01"}, ...}``. Ranges must be ordered (start < end) and must not overlap; an empty
    split is an error naming the range and what the data covers."""
    from settings import ConfigError

    ranges = {}
    for name, rng in splits.items():
        start_ms, end_ms = to_ms(rng["start"]), to_ms(rng["end"])
        if start_ms >= end_ms:
            raise ConfigError(f"split {name}: start {rng['start']} is not before end {rng['end']}")
        ranges[name] = (start_ms, end_ms)
    ordered = sorted(ranges.items(), key=lambda item: item[1][0])
    for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:], strict=False):
        if b_start < a_end:
            raise ConfigError(f"splits {a} and {b} overlap")
    out = {}
    for name, (start_ms, end_ms) in ranges.items():
        part = data.slice_time(start_ms, end_ms)
        if part.n_bars == 0:
            raise ConfigError(f"split {name} holds no bars of {data.meta.get('source', 'the data')}")
        out[name] = part
    return out
