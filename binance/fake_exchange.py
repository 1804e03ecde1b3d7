"""A local stand-in for Binance's spot market-data REST API, for tests, benchmarks and the offline demo.

Serves ``/api/v3/ping``, ``/api/v3/time``, ``/api/v3/exchangeInfo`` and ``/api/v3/klines`` on
127.0.0.1 with Binance's JSON shapes and error bodies, from a folder of ``<BASE>_<QUOTE>.csv[.gz]``
candle files (header ``ts_ms,open,high,low,close,volume``, ``ts_ms`` = open time) or, without a
folder, from a seeded synthetic market.

Semantics follow Binance: ``startTime``/``endTime`` select candles by OPEN time (both inclusive),
``limit`` defaults to 500 and is capped at 1000; without ``startTime`` the latest candles are
returned. Other intervals are aggregated from the files' candles (aligned on UTC, weeks on Monday);
intervals finer than the files, or unknown ones, get Binance's ``-1120 Invalid interval.``
The exchange clock ("now") is configurable: candles opening after "now" do not exist yet and the
candle containing "now" is served as the still-open candle (Binance's ``closeTime`` in the future).
Default "now" is the close of the last candle in the data, so everything served is closed.
Limitation: an open candle carries the file's complete values (the files hold no intra-candle data).

Faults (``inject()``, the ``--fault`` flag, or ``POST /_control/faults``): ``429`` (with
Retry-After), ``418`` (ban, with Retry-After), ``500``/``502``/``503``/``504``, ``slow`` (answers
after ``delay_s``, beyond the client's timeout), ``malformed`` (a truncated JSON body), ``drop``
(closes the connection without answering), ``invalid_symbol`` (a permanent -1121 for a listed
symbol), and three that answer 200 with a damaged klines page: ``empty`` (``[]`` although candles
exist), ``truncated`` (only the first half of the page) and ``missing_candle`` (the page without its
middle candle). Control endpoints: ``POST /_control/faults`` (JSON of :meth:`FakeExchange.inject`'s
arguments), ``DELETE /_control/faults``, ``POST /_control/now`` (``{"now_ms": ...}``),
``GET /_control/stats`` (request counts).

Usage:
    python -m binance.fake_exchange --data-dir ../shared/data/binance_spot_1h_2017_2022 --port 8765
    python -m binance.fake_exchange --port 8765 --fault 429:2 --fault slow:1   # synthetic market

In-process::

    with FakeExchange(data_dir=path) as fake:
        client = binance.make_exchange(base_url=fake.url)
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from binance.symbols import (
    BINANCE_INTERVALS,
    file_stem,
    grid_offset_ms,
    market_id,
    parse_symbol,
    symbol_from_file_stem,
    timeframe_ms,
)

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 500
MAX_LIMIT = 1000
SYNTHETIC_SYMBOLS = ("BTC/USDT", "ETH/USDT", "BNB/USDT", "ADA/USDT")
SYNTHETIC_START_MS = 1_577_836_800_000  # 2020-01-01 00:00 UTC
FAULT_KINDS = (
    "429", "418", "500", "502", "503", "504", "slow", "malformed", "drop", "invalid_symbol",
    "empty", "truncated", "missing_candle",
)
# Faults that alter a correct klines answer instead of replacing it: what an exchange under
# maintenance or a flaky cache sends (a 200 with too few candles), which no HTTP status reveals.
PAGE_FAULTS = ("empty", "truncated", "missing_candle")
# The synthetic market ends where its last candle closes: 2022-01-01 00:00 UTC. Counting the
# bars from the dates (not as 2 x 365 days) keeps leap years whole: 2020 has 366 days.
SYNTHETIC_END_MS = 1_640_995_200_000
# Binance serves prices and volumes as decimal strings with 8 decimals, and so does the fake.
PRICE_DECIMALS = 8

# Binance's error bodies, verbatim.
_ERRORS = {
    "interval": (400, {"code": -1120, "msg": "Invalid interval."}),
    "symbol": (400, {"code": -1121, "msg": "Invalid symbol."}),
    "start_end": (400, {"code": -1023, "msg": "Start time is greater than end time."}),
    "limit": (400, {"code": -1130, "msg": "Data sent for parameter 'limit' is not valid."}),
    "429": (
        429,
        {
            "code": -1003,
            "msg": "Too much request weight used; current limit is 6000 request "
            "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
        },
    ),
    "500": (500, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
}


def _missing_param(name: str) -> tuple[int, dict]:
    return 400, {
        "code": -1102,
        "msg": f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
    }


@dataclass
class Fault:
    """An injected fault: fires on every ``every``-th matching request, ``count`` times (-1: forever)."""

    kind: str
    count: int = 1
    path: str | None = "/api/v3/klines"  # None = every non-control path
    symbol: str | None = None  # unified (BTC/USDT) or market id (BTCUSDT); None = any
    every: int = 1
    after: int = 0  # let this many matching requests pass untouched first (a fault mid-range)
    retry_after_s: int = 1
    delay_s: float = 3.0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {FAULT_KINDS}")
        if self.symbol and "/" in self.symbol:
            self.symbol = market_id(self.symbol)
        if self.every < 1 or self.after < 0:
            raise ValueError("every must be >= 1 and after >= 0")


# ---------------------------------------------------------------------------------------------
# Candle sources
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One pair's candles: open times [n] int64 and OHLCV [n, 5] float64, sorted by time."""

    ts_ms: np.ndarray
    ohlcv: np.ndarray


@functools.lru_cache(maxsize=256)
def _read_candle_file(path: str, mtime_ns: int) -> Series:
    # mtime_ns is part of the cache key so an edited file is re-read.
    frame = pd.read_csv(path, dtype={"ts_ms": "int64"})
    expected = ["ts_ms", "open", "high", "low", "close", "volume"]
    if list(frame.columns) != expected:
        raise ValueError(f"{path}: header must be {','.join(expected)}, got {','.join(frame.columns)}")
    frame = frame.sort_values("ts_ms").drop_duplicates("ts_ms")
    ohlcv = frame[expected[1:]].to_numpy(dtype=np.float64)
    return Series(frame["ts_ms"].to_numpy(dtype=np.int64), ohlcv)


def _infer_timeframe(ts_ms: np.ndarray) -> str:
    steps = np.diff(ts_ms)
    if steps.size == 0:
        raise ValueError("cannot infer the timeframe of a file with fewer than two candles")
    step = int(np.min(steps[steps > 0]))
    for name, length in BINANCE_INTERVALS.items():
        if length == step:
            return name
    raise ValueError(f"candle spacing {step} ms is not a Binance interval")


class CsvSource:
    """Candles from ``<BASE>_<QUOTE>.csv[.gz]`` files in ``data_dir`` (loaded lazily, cached)."""

    def __init__(self, data_dir: str | Path, timeframe: str | None = None):
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"candle folder {self.data_dir} does not exist")
        self.files: dict[str, Path] = {}
        for path in sorted(self.data_dir.iterdir()):
            name = path.name
            stem = name[: -len(".csv.gz")] if name.endswith(".csv.gz") else name[: -len(".csv")]
            if not (name.endswith(".csv") or name.endswith(".csv.gz")) or stem.startswith("_"):
                continue
            try:
                self.files[symbol_from_file_stem(stem)] = path
            except ValueError:
                log.warning("skipping %s: name is not <BASE>_<QUOTE>.csv[.gz]", path)
        if not self.files:
            raise FileNotFoundError(f"no <BASE>_<QUOTE>.csv[.gz] files in {self.data_dir}")
        self.symbols = list(self.files)
        self.timeframe = timeframe or _infer_timeframe(self.series(self.symbols[0]).ts_ms)

    def series(self, symbol: str) -> Series:
        path = self.files[symbol]
        return _read_candle_file(str(path), path.stat().st_mtime_ns)


class SyntheticSource:
    """A seeded random-walk market: the same seed gives the same candles, on every machine."""

    def __init__(
        self,
        symbols: tuple[str, ...] | list[str] = SYNTHETIC_SYMBOLS,
        timeframe: str = "1h",
        start_ms: int = SYNTHETIC_START_MS,
        bars: int | None = None,
        seed: int = 0,
    ):
        self.symbols = list(symbols)
        self.timeframe = timeframe
        if bars is None:  # every candle of [start_ms, SYNTHETIC_END_MS)
            bars = (SYNTHETIC_END_MS - start_ms) // timeframe_ms(timeframe)
        self.start_ms, self.bars, self.seed = start_ms, bars, seed
        self._cache: dict[str, Series] = {}
        for symbol in self.symbols:
            parse_symbol(symbol)

    def series(self, symbol: str) -> Series:
        if symbol not in self._cache:
            index = self.symbols.index(symbol)
            rng = np.random.default_rng([self.seed, index])
            price0 = 100.0 * (index + 1)
            log_close = np.log(price0) + np.cumsum(rng.normal(0.0, 0.01, self.bars))
            close = np.exp(log_close)
            open_ = np.concatenate([[price0], close[:-1]])
            spread = np.abs(rng.normal(0.0, 0.004, (2, self.bars)))
            high = np.maximum(open_, close) * (1 + spread[0])
            low = np.minimum(open_, close) * (1 - spread[1])
            volume = rng.lognormal(3.0, 0.5, self.bars)
            ts = self.start_ms + timeframe_ms(self.timeframe) * np.arange(self.bars, dtype=np.int64)
            self._cache[symbol] = Series(ts, np.column_stack([open_, high, low, close, volume]))
        return self._cache[symbol]

    def write_csv(self, folder: str | Path) -> None:
        """Every pair as ``<BASE>_<QUOTE>.csv`` (ts_ms, open, high, low, close, volume) at the precision
        the fake exchange serves it (`as_served`): a csv source of this folder holds exactly the
        candles the exchange returns."""
        for symbol in self.symbols:
            series = self.series(symbol)
            frame = pd.DataFrame(as_served(series.ohlcv), columns=["open", "high", "low", "close", "volume"])
            frame.insert(0, "ts_ms", series.ts_ms)
            frame.to_csv(Path(folder) / f"{file_stem(symbol)}.csv", index=False)


def aggregate(series: Series, source_tf: str, target_tf: str) -> Series:
    """``target_tf`` candles from ``source_tf``: first open, max high, min low, last close, sum volume."""
    if target_tf == source_tf:
        return series
    step, base = timeframe_ms(target_tf), timeframe_ms(source_tf)
    offset = grid_offset_ms(target_tf)
    if step % base or offset % base:
        raise ValueError(f"cannot build {target_tf} candles from {source_tf} candles")
    if series.ts_ms.size == 0:
        return series
    bucket = (series.ts_ms - offset) // step * step + offset
    starts = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1]]))
    ends = np.concatenate([starts[1:], [bucket.size]]) - 1
    values = series.ohlcv
    ohlcv = np.column_stack(
        [
            values[starts, 0],
            np.maximum.reduceat(values[:, 1], starts),
            np.minimum.reduceat(values[:, 2], starts),
            values[ends, 3],
            np.add.reduceat(values[:, 4], starts),
        ]
    )
    return Series(bucket[starts], ohlcv)


def _fmt(value: float) -> str:
    return f"{value:.{PRICE_DECIMALS}f}"


def as_served(values: np.ndarray) -> np.ndarray:
    """``values`` as a client reads them back from the served strings (`PRICE_DECIMALS` decimals).

    The one place that decides the precision of served candles: anything comparing stored candles
    with the fake's source compares ``as_served(source)`` exactly.
    """
    flat = np.asarray(values, dtype=np.float64)
    return np.array([float(_fmt(v)) for v in flat.ravel().tolist()], dtype=np.float64).reshape(flat.shape)


def kline_rows(ts_ms: np.ndarray, ohlcv: np.ndarray, step_ms: int) -> list[list]:
    """Binance's 12-field kline arrays (prices and volumes as strings with 8 decimals)."""
    rows = []
    for ts, (o, h, l_, c, v) in zip(ts_ms.tolist(), ohlcv.tolist(), strict=True):
        quote_volume = v * (o + h + l_ + c) / 4.0  # the files have no quote volume: a fair estimate
        rows.append(
            [
                ts,
                _fmt(o),
                _fmt(h),
                _fmt(l_),
                _fmt(c),
                _fmt(v),
                ts + step_ms - 1,
                _fmt(quote_volume),
                int(v),
                _fmt(v / 2),
                _fmt(quote_volume / 2),
                "0",
            ]
        )
    return rows


def _filters(price: float) -> list[dict]:
    # Realistic spot filters, scaled to the pair's price level like Binance's.
    tick = min(0.01, 10.0 ** (np.floor(np.log10(max(price, 1e-8))) - 5))
    step = min(1.0, max(1e-8, 10.0 ** np.floor(np.log10(1.0 / max(price, 1e-8)))))
    return [
        {
            "filterType": "PRICE_FILTER",
            "minPrice": _fmt(tick),
            "maxPrice": "1000000.00000000",
            "tickSize": _fmt(tick),
        },
        {
            "filterType": "LOT_SIZE",
            "minQty": _fmt(step),
            "maxQty": "9000000.00000000",
            "stepSize": _fmt(step),
        },
        {"filterType": "ICEBERG_PARTS", "limit": 10},
        {
            "filterType": "MARKET_LOT_SIZE",
            "minQty": "0.00000000",
            "maxQty": "100000.00000000",
            "stepSize": "0.00000000",
        },
        {
            "filterType": "TRAILING_DELTA",
            "minTrailingAboveDelta": 10,
            "maxTrailingAboveDelta": 2000,
            "minTrailingBelowDelta": 10,
            "maxTrailingBelowDelta": 2000,
        },
        {
            "filterType": "PERCENT_PRICE_BY_SIDE",
            "bidMultiplierUp": "5",
            "bidMultiplierDown": "0.2",
            "askMultiplierUp": "5",
            "askMultiplierDown": "0.2",
            "avgPriceMins": 5,
        },
        {
            "filterType": "NOTIONAL",
            "minNotional": "5.00000000",
            "applyMinToMarket": True,
            "maxNotional": "9000000.00000000",
            "applyMaxToMarket": False,
            "avgPriceMins": 5,
        },
        {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
    ]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class FakeExchange:
    """Binance spot market-data endpoints on 127.0.0.1; a context manager serving in a background thread."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        port: int = 0,
        now_ms: int | None = None,
        *,
        host: str = "127.0.0.1",
        timeframe: str | None = None,
        symbols: list[str] | None = None,
        seed: int = 0,
        synthetic_bars: int | None = None,  # None: from 2020-01-01 to 2022-01-01 (SYNTHETIC_END_MS)
        latency_s: float = 0.0,
        faults: list[Fault] | None = None,
    ):
        if data_dir is not None:
            self.source: CsvSource | SyntheticSource = CsvSource(data_dir, timeframe)
            if symbols:
                missing = sorted(set(symbols) - set(self.source.symbols))
                if missing:
                    raise ValueError(f"no candle files for {missing} in {data_dir}")
                self.source.symbols = list(symbols)
        else:
            self.source = SyntheticSource(
                symbols or SYNTHETIC_SYMBOLS, timeframe or "1h", bars=synthetic_bars, seed=seed
            )
        self.host, self.port = host, port
        self._now_ms = now_ms
        self.latency_s = latency_s
        self.faults: list[Fault] = list(faults or [])
        self.stats: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._aggregates: dict[tuple[str, str], Series] = {}
        self._by_id = {market_id(s): s for s in self.source.symbols}
        self.account: Any = None  # binance.fake_orders.FakeAccount.attach() serves the order endpoints

    # -- clock -------------------------------------------------------------------------------
    @property
    def now_ms(self) -> int:
        """The exchange clock: the configured "now", else the close of the latest candle served."""
        if self._now_ms is not None:
            return self._now_ms
        step = timeframe_ms(self.source.timeframe)
        return max(int(self.source.series(s).ts_ms[-1]) for s in self.source.symbols) + step

    def set_now(self, now_ms: int | None) -> None:
        self._now_ms = now_ms

    # -- faults ------------------------------------------------------------------------------
    def inject(self, kind: str, count: int = 1, **kwargs: Any) -> Fault:
        """Add a fault (see :class:`Fault` for the keyword arguments); returns it."""
        fault = Fault(kind=str(kind), count=count, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def _take_fault(self, path: str, query: dict[str, str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.path is not None and fault.path != path:
                    continue
                if fault.symbol is not None and query.get("symbol") != fault.symbol:
                    continue
                fault.seen += 1
                if fault.seen <= fault.after or (fault.seen - fault.after) % fault.every:
                    continue
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        self.faults.remove(fault)
                return fault
        return None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(
                "the fake exchange is not running; use it as a context manager or call start()"
            )
        return f"http://{self.host}:{self._server.server_address[1]}"

    def start(self) -> FakeExchange:
        # Load every pair before serving, so no request (exchangeInfo needs prices) waits on disk.
        for symbol in self.source.symbols:
            self.source.series(symbol)
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._stopping.clear()
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-binance", daemon=True)
        self._thread.start()
        log.info("fake Binance serving %s at %s", self.describe(), self.url)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a "slow" fault
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        src = self.source
        where = f"files in {src.data_dir}" if isinstance(src, CsvSource) else f"synthetic seed={src.seed}"
        return f"{len(src.symbols)} pairs, {src.timeframe} candles, {where}"

    # -- endpoints ---------------------------------------------------------------------------
    def exchange_info(self) -> dict:
        symbols = []
        for symbol in self.source.symbols:
            base, quote = parse_symbol(symbol)
            last_close = float(self.source.series(symbol).ohlcv[-1, 3])
            symbols.append(
                {
                    "symbol": base + quote,
                    "status": "TRADING",
                    "baseAsset": base,
                    "baseAssetPrecision": 8,
                    "quoteAsset": quote,
                    "quotePrecision": 8,
                    "quoteAssetPrecision": 8,
                    "baseCommissionPrecision": 8,
                    "quoteCommissionPrecision": 8,
                    "orderTypes": [
                        "LIMIT",
                        "LIMIT_MAKER",
                        "MARKET",
                        "STOP_LOSS",
                        "STOP_LOSS_LIMIT",
                        "TAKE_PROFIT",
                        "TAKE_PROFIT_LIMIT",
                    ],
                    "icebergAllowed": True,
                    "ocoAllowed": True,
                    "otoAllowed": True,
                    "quoteOrderQtyMarketAllowed": True,
                    "allowTrailingStop": True,
                    "cancelReplaceAllowed": True,
                    "amendAllowed": True,
                    "isSpotTradingAllowed": True,
                    "isMarginTradingAllowed": False,
                    "filters": _filters(last_close),
                    "permissions": [],
                    "permissionSets": [["SPOT"]],
                    "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                    "allowedSelfTradePreventionModes": [
                        "EXPIRE_TAKER",
                        "EXPIRE_MAKER",
                        "EXPIRE_BOTH",
                        "DECREMENT",
                    ],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": self.now_ms,
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": symbols,
        }

    def _series(self, symbol: str, interval: str) -> Series:
        key = (symbol, interval)
        if key not in self._aggregates:
            self._aggregates[key] = aggregate(self.source.series(symbol), self.source.timeframe, interval)
        return self._aggregates[key]

    def klines(self, query: dict[str, str]) -> tuple[int, Any]:
        """``GET /api/v3/klines``: (status, JSON body) exactly as Binance answers."""
        for name in ("symbol", "interval"):
            if not query.get(name):
                return _missing_param(name)
        symbol = self._by_id.get(query["symbol"])
        if symbol is None:
            return _ERRORS["symbol"]
        interval = query["interval"]
        if interval not in BINANCE_INTERVALS:
            return _ERRORS["interval"]
        try:
            series = self._series(symbol, interval)
        except ValueError:  # finer than the files, or off their grid: refuse like an unknown interval
            return _ERRORS["interval"]
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
            start = int(query["startTime"]) if "startTime" in query else None
            end = int(query["endTime"]) if "endTime" in query else None
        except ValueError:
            return _ERRORS["limit"]
        if limit < 1:
            return _ERRORS["limit"]
        limit = min(limit, MAX_LIMIT)  # Binance silently caps spot klines at 1000
        if start is not None and end is not None and start > end:
            return _ERRORS["start_end"]
        now = self.now_ms
        ts = series.ts_ms
        last = int(np.searchsorted(ts, min(now, end) if end is not None else now, side="right"))
        if start is not None:
            first = int(np.searchsorted(ts, start, side="left"))
            last = min(last, first + limit)
        else:
            first = max(0, last - limit)
        if first >= last:
            return 200, []
        step = timeframe_ms(interval)
        ohlcv = series.ohlcv[first:last].copy()
        if interval != self.source.timeframe and int(ts[last - 1]) + step > now:
            # the still-open aggregated candle holds only the source candles opened by "now"
            base = self.source.series(symbol)
            lo = int(np.searchsorted(base.ts_ms, ts[last - 1], side="left"))
            hi = int(np.searchsorted(base.ts_ms, now, side="right"))
            ohlcv[-1] = aggregate(
                Series(base.ts_ms[lo:hi], base.ohlcv[lo:hi]), self.source.timeframe, interval
            ).ohlcv[0]
        return 200, kline_rows(ts[first:last], ohlcv, step)

    def handle(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any, dict]:
        """Route one request: (status, JSON-able body or raw bytes, extra headers)."""
        if path.startswith("/_control/"):
            return self._control(method, path, body)
        if method != "GET":
            return 405, {"code": -1000, "msg": "Method not allowed."}, {}
        if path == "/api/v3/ping":
            return 200, {}, {}
        if path == "/api/v3/time":
            return 200, {"serverTime": self.now_ms}, {}
        if path == "/api/v3/exchangeInfo":
            return 200, self.exchange_info(), {}
        if path == "/api/v3/klines":
            status, payload = self.klines(query)
            return status, payload, {}
        return 404, b"<html><body><h1>404 Not Found</h1></body></html>", {"Content-Type": "text/html"}

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict]:
        try:
            payload = json.loads(body or b"{}")
            if path == "/_control/faults" and method == "POST":
                items = payload if isinstance(payload, list) else [payload]
                faults = [self.inject(**item) for item in items]
                return 200, [asdict(f) for f in faults], {}
            if path == "/_control/faults" and method == "DELETE":
                self.clear_faults()
                return 200, {}, {}
            if path == "/_control/now" and method == "POST":
                self.set_now(payload.get("now_ms"))
                return 200, {"now_ms": self.now_ms}, {}
            if path == "/_control/stats" and method == "GET":
                with self._lock:
                    return 200, {"requests": dict(self.stats), "faults": [asdict(f) for f in self.faults]}, {}
        except (TypeError, ValueError) as exc:
            return 400, {"error": str(exc)}, {}
        return 404, {"error": f"no control endpoint {method} {path}"}, {}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeExchange
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind its load balancer
    server_version = "fake-binance"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.fake
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        control = parts.path.startswith("/_control/")
        if not control:
            with fake._lock:
                fake.stats[parts.path] = fake.stats.get(parts.path, 0) + 1
            if fake.latency_s:
                fake._stopping.wait(fake.latency_s)
        fault = None if control else fake._take_fault(parts.path, query)
        if fault is not None:
            log.info("fake Binance: injecting %s on %s", fault.kind, self.path)
            if self._fault(fault, query):
                return
        answer = fake.account and fake.account.handle(method, self.path, body, self.headers)
        if answer:  # an order endpoint (binance/fake_orders.py)
            self._send(*answer, {})
            return
        status, payload, headers = fake.handle(method, parts.path, query, body)
        self._send(status, payload, headers)

    def _fault(self, fault: Fault, query: dict[str, str]) -> bool:
        """Apply ``fault``; True when the response is complete (or deliberately never sent)."""
        if fault.kind in ("429", "418"):
            status, payload = _ERRORS["429"]
            if fault.kind == "418":
                banned_until = self.fake.now_ms + fault.retry_after_s * 1000
                status = 418
                payload = {
                    "code": -1003,
                    "msg": f"Way too much request weight used; IP banned until "
                    f"{banned_until}. Please use WebSocket Streams for live updates to avoid bans.",
                }
            self._send(status, payload, {"Retry-After": str(fault.retry_after_s)})
        elif fault.kind == "500":
            self._send(*_ERRORS["500"], {})
        elif fault.kind in ("502", "503", "504"):
            page = f"<html><head><title>{fault.kind}</title></head><body>{fault.kind}</body></html>"
            self._send(int(fault.kind), page.encode(), {"Content-Type": "text/html"})
        elif fault.kind == "invalid_symbol":
            self._send(*_ERRORS["symbol"], {})
        elif fault.kind == "malformed":
            self._send(200, b'[[1609459200000,"28923.63000000","29031.34', {})
        elif fault.kind == "drop":
            self.close_connection = True
        elif fault.kind == "slow":
            self.fake._stopping.wait(fault.delay_s)
            return False  # then answer normally, long after the client gave up
        elif fault.kind in PAGE_FAULTS:
            status, payload, headers = self.fake.handle("GET", urlsplit(self.path).path, query, b"")
            if status == 200 and isinstance(payload, list):
                payload = damage_page(payload, fault.kind)
            self._send(status, payload, headers)
        return True

    def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json;charset=UTF-8"))
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client timed out and left: nothing to answer


def damage_page(rows: list, kind: str) -> list:
    """A klines page as a faulty exchange sends it: ``empty``, ``truncated`` or ``missing_candle``."""
    if kind == "empty":
        return []
    if kind == "truncated":
        return rows[: len(rows) // 2]
    if kind == "missing_candle":
        return rows[: len(rows) // 2] + rows[len(rows) // 2 + 1 :] if len(rows) >= 3 else rows
    raise ValueError(f"{kind!r} is not a page fault; use one of {PAGE_FAULTS}")


def parse_fault(spec: str) -> Fault:
    """``KIND[:COUNT[:EVERY[:AFTER]]]`` as used by ``--fault``, e.g. ``429:3``, ``500:-1:5`` or
    ``empty:-1:1:2`` (every klines page after the first two comes back empty)."""
    parts = spec.split(":")
    count = int(parts[1]) if len(parts) > 1 else 1
    every = int(parts[2]) if len(parts) > 2 else 1
    after = int(parts[3]) if len(parts) > 3 else 0
    return Fault(kind=parts[0], count=count, every=every, after=after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", help="folder of <BASE>_<QUOTE>.csv[.gz] candles (default: synthetic market)"
    )
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument(
        "--now-ms", type=int, help="exchange clock, UTC ms (default: close of the last candle)"
    )
    parser.add_argument("--seed", type=int, default=0, help="synthetic market seed")
    parser.add_argument("--symbols", help="comma-separated subset of pairs to list, e.g. BTC/USDT,ETH/USDT")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay added to every market request")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:COUNT[:EVERY[:AFTER]]]",
        help=f"inject a fault on /api/v3/klines; kinds: {', '.join(FAULT_KINDS)}",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    symbols = args.symbols.split(",") if args.symbols else None
    fake = FakeExchange(
        args.data_dir,
        args.port,
        args.now_ms,
        seed=args.seed,
        symbols=symbols,
        latency_s=args.latency_s,
        faults=[parse_fault(s) for s in args.fault],
    )
    with fake:
        print(f"fake Binance listening on {fake.url} ({fake.describe()})", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
