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
from settings import ConfigError, check_keys
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


def _read_joined_candles(directories: list[Path], symbol: str) -> tuple[np.ndarray, Path]:
    """One pair's candles from every folder holding its file (time order; a shared hour kept once,
    from the later folder), and its first file. FileNotFoundError when no folder has it."""
    parts, paths = [], []
    for folder in directories:
        try:
            paths.append(_candle_file(folder, symbol))
        except FileNotFoundError:
            if len(directories) == 1:
                raise
            continue
        parts.append(_read_candles_csv(paths[-1]))
    if not parts:
        raise FileNotFoundError(f"no candle file for {symbol} in any of {[str(d) for d in directories]}")
    if len(parts) == 1:
        return parts[0], paths[0]
    rows = np.concatenate(parts)
    rows = rows[np.argsort(rows[:, 0], kind="stable")]
    last = np.append(rows[1:, 0] != rows[:-1, 0], True)  # keep the last copy of each open time
    return rows[last], paths[0]


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
    directory: str | Path | list[str | Path],
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
    from binance.symbols import symbol_from_file_stem, timeframe_ms

    # Several folders (e.g. binance_spot_1h_2017_2022 and _2022_2024) join into one series per pair:
    # a pair's rows from every folder that has its file, one copy of the hours they share.
    directories = [Path(d) for d in (directory if isinstance(directory, (list, tuple)) else [directory])]
    for folder in directories:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a directory of CSV candles")
    directory = directories[0]
    if symbols is None:
        stems = sorted(p.name.split(".")[0] for p in directory.glob("*.csv*") if not p.name.startswith("_"))
        symbols = [symbol_from_file_stem(stem) for stem in stems]
    if not symbols:
        raise ValueError(f"no symbols given and no candle files in {directory}")
    if len(set(symbols)) != len(symbols):
        raise ConfigError(f"csv source: symbols {symbols} repeat a pair; list each pair once")
    step_ms = timeframe_ms(timeframe)
    candles = []
    for symbol in symbols:
        rows, path = _read_joined_candles(directories, symbol)
        _check_spacing(path, rows[:, 0].astype(np.int64), timeframe, step_ms)
        candles.append(rows)
    paths: Any = [str(d) for d in directories] if len(directories) > 1 else str(directory)
    data = from_candles(list(symbols), timeframe, candles, {"source": "csv", "path": paths})
    start_ms = None if start is None else to_ms(start)
    end_ms = None if end is None else to_ms(end)
    return data.slice_time(start_ms, end_ms)


def from_synthetic(**params: Any) -> MarketData:
    """The synthetic market (`synthetic.generate`; keys of `synthetic.SYNTHETIC_DEFAULTS`)."""
    import synthetic

    return synthetic.generate(**params)


def _source_range_ms(source: Mapping[str, Any], where: str) -> tuple[int | None, int | None]:
    """The source's [start, end) in ms, refusing start >= end (which could only give 0 bars)."""
    start_ms = None if source.get("start") is None else to_ms(source["start"], f"{where}.start")
    end_ms = None if source.get("end") is None else to_ms(source["end"], f"{where}.end")
    if start_ms is not None and end_ms is not None and start_ms >= end_ms:
        raise ConfigError(
            f"{where}: start {source['start']} must be before end {source['end']} ([start, end), UTC)"
        )
    return start_ms, end_ms


def _check_symbols(symbols: Any, where: str, required: bool) -> None:
    if symbols is None and not required:
        return
    if not (isinstance(symbols, list) and symbols and all(isinstance(s, str) and s for s in symbols)):
        raise ConfigError(
            f"{where}.symbols must be a non-empty list of symbols such as [BTC/USDT], got {symbols!r}"
        )
    repeated = sorted({s for s in symbols if symbols.count(s) > 1})
    if repeated:
        raise ConfigError(f"{where}.symbols names {repeated} more than once; list each pair once")


def _check_timeframe(timeframe: Any, where: str) -> int:
    from binance.symbols import timeframe_ms  # lazy: the binance package imports ccxt

    try:
        return timeframe_ms(timeframe)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}.timeframe: {exc}") from None


def check_source(source: Mapping[str, Any]) -> None:
    """Refuse a data source that cannot load, before any work: unknown kind or keys, missing
    ``path``/``timeframe``/``symbols``, an unknown timeframe, repeated symbols, start >= end, a CSV
    folder that does not exist or lacks a symbol's file. Cheap: reads no candles."""
    import synthetic

    if not isinstance(source, Mapping):
        raise ConfigError(f"a data source must be a mapping with a kind {SOURCE_KINDS}, got {source!r}")
    source = dict(source)
    kind = source.pop("kind", None)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"data source kind {kind!r} unknown; choose one of {SOURCE_KINDS}")
    where = f"{kind} source"
    if kind == "synthetic":
        check_keys(source, synthetic.SYNTHETIC_DEFAULTS, where)
        _check_symbols(source.get("symbols"), where, required=False)
        return  # synthetic.generate checks its values (and the timeframe) itself
    if kind == "csv":
        check_keys(source, {"path", "symbols", "timeframe", "start", "end"}, where)
        if "path" not in source or "timeframe" not in source:
            raise ConfigError("a csv source needs path and timeframe")
    else:
        check_keys(source, {"symbols", "timeframe", "start", "end", "exchange"}, where)
        if "symbols" not in source or "timeframe" not in source:
            raise ConfigError("a db source needs symbols and timeframe")
    _check_symbols(source.get("symbols"), where, required=kind == "db")
    _source_range_ms(source, where)
    folders = []
    if kind == "csv":
        folders = source["path"] if isinstance(source["path"], (list, tuple)) else [source["path"]]
        for folder in folders:
            if not Path(folder).is_dir():
                raise ConfigError(f"{where}.path {folder} is not a directory of CSV candles")
    _check_timeframe(source["timeframe"], where)  # imports ccxt (~0.7 s): after the cheap checks
    if kind == "csv":
        for symbol in source.get("symbols") or []:
            found = []
            for folder in folders:
                try:
                    found.append(_candle_file(Path(folder), symbol))
                except FileNotFoundError as exc:
                    missing = exc
            if not found:
                raise ConfigError(f"{where}: {missing}") from None


def _check_spacing(path: Path, times: np.ndarray, timeframe: str, step_ms: int) -> None:
    """The file's candles must be ``timeframe`` apart: the typical spacing (the median, so that
    gaps do not matter) of 4h over 1h files is 1h, and aligning them would silently give 0 bars."""
    if len(times) < 2:
        return
    spacing = int(np.median(np.diff(times)))
    if spacing != step_ms:
        raise ConfigError(
            f"csv source: {path.name} holds candles {spacing // 60_000} minutes apart, but the source asks "
            f"for timeframe {timeframe!r} ({step_ms // 60_000} minutes); point path at {timeframe} files "
            "or set the timeframe of the files"
        )


def load(source: Mapping[str, Any]) -> MarketData:
    """One entry point for every data source; ``source["kind"]`` picks it:

    - ``{kind: db, symbols, timeframe, start, end, exchange: binance}``: ``db.load_market`` over
      ``features.indicators`` (DATABASE_URL or the embedded PostgreSQL).
    - ``{kind: csv, path, symbols (null: all files), timeframe, start, end}``: `from_csv_dir`.
    - ``{kind: synthetic, ...}``: `from_synthetic` (see synthetic.SYNTHETIC_DEFAULTS for the knobs).

    ``start``/``end`` are ISO dates or epoch ms, [start, end), and may be null (everything).
    Strict: `check_source` first; CSV files whose spacing is not the timeframe, and a db or CSV
    source that yields no aligned bar, are ConfigErrors naming the source (never 0 silent bars).
    """
    check_source(source)
    source = dict(source)
    kind = source.pop("kind")
    if kind == "synthetic":
        return from_synthetic(**source)
    if kind == "csv":
        data = from_csv_dir(source["path"], source.get("symbols"), source["timeframe"],
                            source.get("start"), source.get("end"))
    else:
        import db

        start_ms, end_ms = _source_range_ms(source, "db source")
        data = db.load_market(list(source["symbols"]), source["timeframe"], start_ms, end_ms,
                              exchange=source.get("exchange", "binance"))
    if data.n_bars == 0:
        raise ConfigError(
            f"{kind} source {source} holds no bar where every pair has a warm candle in "
            f"[{source.get('start')}, {source.get('end')}): check the symbols, timeframe and dates"
            + (" (ingest them and build the indicators: make dbt)" if kind == "db" else "")
        )
    return data


load_market_data = load  # the name the env helper's brief uses


def split_by_dates(data: MarketData, splits: Mapping[str, Mapping[str, Any]]) -> dict[str, MarketData]:
    """Cut ``data`` into named [start, end) date ranges, e.g. ``{"train": {"start": "2020-01-01",
    "end": "2021-01-01"}, ...}``. Ranges must be ordered (start < end) and must not overlap; an empty
    split is an error naming the range and what the data covers."""

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


# ----------------------------------------------------------------------------------------------
# Data-source labels: every output of a run names the data it used.
# ----------------------------------------------------------------------------------------------

BINANCE_EXCHANGE_LABEL = "binance"  # market.ohlcv's ``exchange`` for candles from the real API
SYNTHETIC_EXCHANGE_PREFIX = "synthetic_seed"  # + seed: the fake exchange's synthetic market
REPLAY_EXCHANGE_PREFIX = "replay:"  # + folder: the fake exchange replaying candle files


def fake_exchange_label(data_dir: str | Path | None, seed: int = 0) -> str:
    """The ``exchange`` label under which candles from the local fake exchange are stored.

    Candles of different origins never share a label, so a label always says where its rows came
    from (`describe_source` reads it back) and synthetic rows never mix with real ones.
    """
    if data_dir is None:
        return f"{SYNTHETIC_EXCHANGE_PREFIX}{int(seed)}"
    return f"{REPLAY_EXCHANGE_PREFIX}{data_dir}"


def describe_source(source_cfg: Mapping[str, Any]) -> str:
    """A short label of a data source for people: "synthetic market (seed N)", "fake exchange
    replaying <dir>", "Binance", or "candles from <dir>" for a CSV folder.

    ``source_cfg`` is a `load` source section; a db source is described by its ``exchange`` label
    (see `fake_exchange_label`).
    """
    kind = source_cfg.get("kind")
    if kind == "synthetic":
        from synthetic import SYNTHETIC_DEFAULTS

        return f"synthetic market (seed {source_cfg.get('seed', SYNTHETIC_DEFAULTS['seed'])})"
    if kind == "csv":
        return f"candles from {source_cfg.get('path')}"
    label = str(source_cfg.get("exchange") or BINANCE_EXCHANGE_LABEL)
    if label == BINANCE_EXCHANGE_LABEL:
        return "Binance"
    if label.startswith(SYNTHETIC_EXCHANGE_PREFIX):
        return f"synthetic market (seed {label[len(SYNTHETIC_EXCHANGE_PREFIX):]})"
    if label.startswith(REPLAY_EXCHANGE_PREFIX):
        return f"fake exchange replaying {label[len(REPLAY_EXCHANGE_PREFIX):]}"
    return f"stored candles labelled {label!r}"
