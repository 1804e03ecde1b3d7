"""Fetch one pair's candles over a half-open range [since, until) from the exchange into PostgreSQL.

Rules: only CLOSED candles are stored (the exchange clock decides); every row is validated (OHLC
ordering, positive prices, non-negative volume, open times on the timeframe's grid); transient
errors (rate limits, bans with Retry-After, 5xx, timeouts, dropped connections, malformed bodies)
are retried with exponential backoff that honours Retry-After; permanent ones (unknown symbol,
bad timeframe, bad dates, invalid candles) fail at once with a message that names the cause. Gaps
the exchange itself has are reported, never filled. Without ``since`` the fetch resumes after the
newest stored candle.

Usage:
    python fetch_data.py BTC/USDT --timeframe 1h --since 2021-01-01 --until 2021-06-01
    BINANCE_BASE_URL=http://127.0.0.1:8765 python fetch_data.py ETH/USDT   # resume, from the fake exchange
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import ccxt
import numpy as np
from sqlalchemy.engine import Engine

import db
import settings
from binance import floor_to_timeframe, grid_offset_ms, make_exchange, parse_symbol, timeframe_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

# Binance answers these codes on transient server trouble: internal error, backend timeout, busy.
_TRANSIENT_BINANCE_CODES = ('"code":-1001', '"code":-1007', '"code":-1008')


class FetchError(RuntimeError):
    """A fetch failed; ``permanent`` says whether retrying later can help. ``result`` holds progress."""

    def __init__(self, message: str, permanent: bool = True, result: FetchResult | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.result = result


class InvalidCandleError(FetchError):
    """The exchange sent a candle that breaks OHLC rules or the timeframe grid."""


@dataclass(frozen=True)
class RetryPolicy:
    """Per-request retries: delay = min(max_delay_s, base_delay_s * 2**attempt), at least Retry-After."""

    max_retries: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 300.0  # a longer ban (418) fails the fetch instead of hanging it


@dataclass
class FetchResult:
    """Outcome of one pair/timeframe fetch (also recorded in ``market.fetch_runs``)."""

    symbol: str
    timeframe: str
    exchange: str = "binance"
    since_ms: int | None = None  # resolved range actually fetched, [since_ms, until_ms)
    until_ms: int | None = None
    status: str = "running"  # ok | failed
    rows_fetched: int = 0
    rows_inserted: int = 0
    gaps: list[db.Gap] = field(default_factory=list)
    retries: int = 0
    error: str | None = None
    permanent: bool = False
    run_id: int | None = None
    seconds: float = 0.0


def parse_time_ms(value: str | int | None) -> int | None:
    """UTC epoch ms from ``2021-01-01``, ``2021-01-01T12:00``, an ISO string with offset, or ms;
    None or "" stays None (an open end). A bad value is a permanent FetchError."""
    if value is None or value == "":
        return None
    try:
        return settings.parse_time_ms(value, "--since/--until")
    except settings.ConfigError as exc:
        raise FetchError(f"bad date: {exc}") from None


def iso_utc(ts_ms: int | None) -> str:
    """``2021-01-01 00:00`` (UTC) for epoch ms; ``-`` for None."""
    return "-" if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _retry_after_s(client: Any) -> float | None:
    headers = getattr(client, "last_response_headers", None) or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, ccxt.OperationFailed):  # NetworkError family, BadResponse, -1001 mapped errors
        return True
    return isinstance(exc, ccxt.ExchangeError) and any(code in str(exc) for code in _TRANSIENT_BINANCE_CODES)


def call_with_retry(
    fn: Callable[[], T],
    client: Any,
    what: str,
    policy: RetryPolicy,
    counter: list[int] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()`` retried on transient exchange errors; raises FetchError when it cannot succeed."""
    for attempt in range(policy.max_retries + 1):
        try:
            return fn()
        except ccxt.BaseError as exc:
            if not _is_transient(exc):
                raise FetchError(
                    f"{what}: exchange refused the request ({type(exc).__name__}): {exc}"
                ) from exc
            if attempt == policy.max_retries:
                raise FetchError(
                    f"{what}: still failing after {policy.max_retries} retries ({type(exc).__name__}): {exc}",
                    permanent=False,
                ) from exc
            delay = min(policy.max_delay_s, policy.base_delay_s * 2**attempt)
            retry_after = _retry_after_s(client) if isinstance(exc, ccxt.DDoSProtection) else None
            if retry_after is not None:
                if retry_after > policy.max_retry_after_s:
                    raise FetchError(
                        f"{what}: the exchange asks to wait {retry_after:.0f} s (418/429 ban), longer than "
                        f"max_retry_after_s={policy.max_retry_after_s:.0f}; retry later",
                        permanent=False,
                    ) from exc
                delay = max(delay, retry_after)
            log.warning(
                "%s: %s (%s); retry %d/%d in %.2f s",
                what,
                type(exc).__name__,
                str(exc)[:160],
                attempt + 1,
                policy.max_retries,
                delay,
            )
            if counter is not None:
                counter[0] += 1
            sleep(delay)
    raise AssertionError("unreachable")


def validate_candles(rows: list[list], symbol: str, timeframe: str) -> tuple[np.ndarray, np.ndarray]:
    """Check a page of ccxt OHLCV rows; ``(open_time_ms, ohlcv)`` arrays when every row is sound.

    A structurally broken page (non-numeric or missing fields) raises ccxt.BadResponse, which is
    retried; a well-formed candle that breaks OHLC rules raises InvalidCandleError (permanent).
    """
    if not rows:
        return np.empty(0, np.int64), np.empty((0, 5))
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ccxt.BadResponse(f"malformed kline rows for {symbol}: {exc}") from exc
    if array.ndim != 2 or array.shape[1] != 6 or not np.isfinite(array).all():
        raise ccxt.BadResponse(f"malformed kline rows for {symbol}: expected finite [n, 6] numbers")
    ts = array[:, 0].astype(np.int64)
    o, h, low, c, v = array[:, 1:].T
    step = timeframe_ms(timeframe)
    checks = {
        f"open time off the {timeframe} grid": (ts - grid_offset_ms(timeframe)) % step != 0,
        "open times not strictly increasing": np.concatenate([[False], np.diff(ts) <= 0]),
        "non-positive price": (array[:, 1:5] <= 0).any(axis=1),
        "negative volume": v < 0,
        "high below open/close/low": h < np.maximum.reduce([o, c, low]),
        "low above open/close/high": low > np.minimum.reduce([o, c, h]),
    }
    for problem, bad in checks.items():
        if bad.any():
            index = int(np.flatnonzero(bad)[0])
            raise InvalidCandleError(
                f"{symbol} {timeframe}: invalid candle at {iso_utc(int(ts[index]))} ({problem}): "
                f"{rows[index]}"
            )
    return ts, np.ascontiguousarray(array[:, 1:])


def _find_gaps(ts: np.ndarray, previous_ms: int | None, step: int) -> list[db.Gap]:
    times = ts if previous_ms is None else np.concatenate([[previous_ms], ts])
    jumps = np.flatnonzero(np.diff(times) > step)
    return [
        db.Gap(int(times[i]) + step, int(times[i + 1]), int((times[i + 1] - times[i]) // step) - 1)
        for i in jumps
    ]


def fetch_range(
    client: ccxt.Exchange,
    engine: Engine,
    symbol: str,
    timeframe: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    *,
    exchange: str = "binance",
    default_since_ms: int | None = None,
    batch_rows: int = 5000,
    page_limit: int = 1000,
    policy: RetryPolicy | None = None,
    job_id: str | None = None,
    progress: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> FetchResult:
    """Fetch ``symbol``'s closed ``timeframe`` candles with open time in [since_ms, until_ms) and store them.

    ``since_ms=None`` resumes after the newest stored candle (else ``default_since_ms``, else the
    pair's first candle); ``until_ms=None`` means up to the exchange's current time. Candles are
    written every ``batch_rows`` rows, one transaction per batch, so an interrupted fetch keeps
    what it stored and a re-run inserts only what is missing. The run is recorded in
    ``market.fetch_runs``. Raises FetchError (with ``.result``) when the fetch fails.
    """
    policy = policy or RetryPolicy()
    started = time.monotonic()
    result = FetchResult(symbol, timeframe, exchange, since_ms, until_ms)
    result.run_id = db.start_fetch_run(
        engine,
        exchange=exchange,
        symbol=symbol,
        timeframe=timeframe,
        since_ms=since_ms,
        until_ms=until_ms,
        job_id=job_id,
    )
    retries = [0]
    pending: list[tuple[np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if pending:
            ts = np.concatenate([p[0] for p in pending])
            values = np.concatenate([p[1] for p in pending])
            pending.clear()
            result.rows_inserted += db.write_candles(
                engine, exchange, symbol, timeframe, np.column_stack([ts, values])
            )

    try:
        try:
            parse_symbol(symbol)
            step = timeframe_ms(timeframe)
        except ValueError as exc:
            raise FetchError(str(exc)) from None
        if since_ms is not None and until_ms is not None and since_ms >= until_ms:
            raise FetchError(f"bad dates: since {iso_utc(since_ms)} is not before until {iso_utc(until_ms)}")
        what = f"{symbol} {timeframe}"
        # ccxt only records the parsed body when asked; a None there reveals a malformed answer
        client.enableLastJsonResponse = True
        call_with_retry(client.load_markets, client, f"{what}: load markets", policy, retries, sleep)
        if symbol not in client.markets:
            raise FetchError(f"unknown symbol {symbol}: {client.id} lists no such spot market")
        now_ms = int(
            call_with_retry(client.fetch_time, client, f"{what}: server time", policy, retries, sleep)
        )
        open_candle_ms = floor_to_timeframe(now_ms, timeframe)  # first candle that is not closed yet
        if since_ms is not None and since_ms >= now_ms:
            raise FetchError(
                f"bad dates: since {iso_utc(since_ms)} is after the exchange's time {iso_utc(now_ms)}"
            )
        previous_ms = None
        if since_ms is None:
            newest = db.newest_open_time_ms(engine, exchange, symbol, timeframe)
            previous_ms = newest
            start = newest + step if newest is not None else (default_since_ms or 0)
        else:
            start = since_ms
        start = floor_to_timeframe(start + step - 1, timeframe)  # first candle opening at or after start
        end = open_candle_ms if until_ms is None else min(until_ms, open_candle_ms)
        start = min(start, end)  # already up to date: an empty range, reported as [end, end)
        result.since_ms, result.until_ms = start, end
        log.info("%s: fetching [%s, %s)", what, iso_utc(start), iso_utc(end))
        cursor = start
        buffered = pages = 0
        while cursor < end:

            def page(cursor: int = cursor) -> tuple[np.ndarray, np.ndarray]:
                rows = client.fetch_ohlcv(
                    symbol, timeframe, since=cursor, limit=page_limit, params={"until": end - 1}
                )  # Binance's endTime is inclusive
                if not isinstance(client.last_json_response, list):
                    raise ccxt.BadResponse(f"{what}: klines answer is not a JSON list")
                return validate_candles(rows, symbol, timeframe)

            ts, values = call_with_retry(
                page, client, f"{what}: klines from {iso_utc(cursor)}", policy, retries, sleep
            )
            keep = (ts >= cursor) & (ts < end)
            ts, values = ts[keep], values[keep]
            if ts.size == 0:
                break  # the exchange has nothing more in [cursor, end)
            result.gaps.extend(_find_gaps(ts, previous_ms, step))
            pending.append((ts, values))
            buffered += ts.size
            result.rows_fetched += int(ts.size)
            if buffered >= batch_rows:
                flush()
                buffered = 0
            if progress is not None:
                progress(int(ts.size))
            pages += 1
            if pages % 10 == 0:  # progress for logs (Airflow, cron) where no bar is drawn
                log.info("%s: %d candles so far, up to %s", what, result.rows_fetched, iso_utc(int(ts[-1])))
            previous_ms = int(ts[-1])
            cursor = previous_ms + step
        flush()
        result.status = "ok"
    except Exception as exc:
        result.status = "failed"
        result.error = str(exc)
        result.permanent = exc.permanent if isinstance(exc, FetchError) else False
        try:
            flush()  # keep every validated candle fetched before the failure
        except Exception as flush_exc:  # noqa: BLE001 - the original error is the one to report
            log.error("%s %s: could not store fetched candles: %s", symbol, timeframe, flush_exc)
        if not isinstance(exc, FetchError):
            exc = FetchError(f"{symbol} {timeframe}: {type(exc).__name__}: {exc}", permanent=False)
        exc.result = result
        raise exc
    finally:
        result.retries = retries[0]
        result.seconds = time.monotonic() - started
        try:
            db.finish_fetch_run(
                engine,
                result.run_id,
                status=result.status,
                rows_fetched=result.rows_fetched,
                rows_inserted=result.rows_inserted,
                gaps=len(result.gaps),
                error=result.error,
                since_ms=result.since_ms,
                until_ms=result.until_ms,
            )
        except Exception as record_exc:  # noqa: BLE001 - never mask the fetch outcome
            log.error("could not record fetch run %s: %s", result.run_id, record_exc)
    for gap in result.gaps:
        log.warning(
            "%s %s: exchange gap of %d candle(s) from %s (not filled)",
            symbol,
            timeframe,
            gap.missing_bars,
            iso_utc(gap.start_ms),
        )
    log.info(
        "%s %s: %d fetched, %d inserted, %d gap(s), %d retries in %.1f s",
        symbol,
        timeframe,
        result.rows_fetched,
        result.rows_inserted,
        len(result.gaps),
        result.retries,
        result.seconds,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("symbol", help="ccxt unified symbol, e.g. BTC/USDT")
    parser.add_argument("--timeframe", default="1h")
    parser.add_argument(
        "--since", help="first candle (UTC date/time or ms); default: resume after the newest stored"
    )
    parser.add_argument("--until", help="end, exclusive (UTC date/time or ms); default: now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = fetch_range(
            make_exchange(),
            db.get_engine(),
            args.symbol,
            args.timeframe,
            parse_time_ms(args.since),
            parse_time_ms(args.until),
        )
    except FetchError as exc:
        print(f"FAILED {args.symbol} {args.timeframe}: {exc}")
        return 1
    print(
        f"{result.symbol} {result.timeframe}: {result.rows_inserted} inserted of {result.rows_fetched} "
        f"fetched, "
        f"{len(result.gaps)} exchange gap(s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
