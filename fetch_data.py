"""Fetch one pair's candles over a half-open range [since, until) from the exchange into PostgreSQL.

Rules: only CLOSED candles are stored (the exchange clock decides); every row is validated (OHLC
ordering, positive prices, non-negative volume, open times on the timeframe's grid); transient
errors (rate limits, bans with Retry-After, 5xx, timeouts, dropped connections, malformed bodies)
are retried with exponential backoff that honours Retry-After; permanent ones (unknown symbol,
bad timeframe, bad dates, invalid candles) fail at once with a message that names the cause. Gaps
the exchange itself has are reported, never filled. Without ``since`` the fetch resumes after the
newest stored candle.

A range never ends early without saying so. A page that comes back empty before ``until`` is asked
again (``RetryPolicy.page_checks`` times, with backoff); if it stays empty, one more request without
an end bound decides: data resuming at or after ``until`` is the exchange's own gap (reported as a
gap; nothing stored before it in this fetch means the pair is not listed yet), anything else fails
the pair with the missing span named. A short (truncated) page needs nothing special: the next page
starts after its last candle, and an empty one is handled as above. A page with a hole is asked
again at once and accepted only when it comes back complete or with the same hole (a real gap).

Exchange outages are job-level (:class:`ExchangeOutage`): unreachable after the retries, a ban
(418) longer than ``max_retry_after_s``, or a 429 storm. ``data_fetch_job`` stops every pair on the
first one instead of hammering an exchange that is down or banning this IP. :func:`check_exchange`
tells within a few seconds whether the exchange answers at all.

Exit codes (this CLI and ``data_fetch_job.py``): 0 every pair ok; 1 some pairs failed (the table and
``market.fetch_runs`` name them and why); 2 bad arguments or configuration, nothing done; 3 could not
run: the exchange or the database is unreachable, or the exchange bans this IP (retry later);
130 interrupted (Ctrl-C or SIGTERM): the fetch run is recorded as ``interrupted``, every candle
fetched before it is stored.

Usage:
    python fetch_data.py BTC/USDT --timeframe 1h --since 2021-01-01 --until 2021-06-01
    BINANCE_BASE_URL=http://127.0.0.1:8765 python fetch_data.py ETH/USDT   # resume, from the fake exchange
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ccxt
import numpy as np
from sqlalchemy.engine import Engine

import db
import settings
from binance import (
    api_base_url,
    floor_to_timeframe,
    grid_offset_ms,
    make_exchange,
    network_cause,
    parse_symbol,
    timeframe_ms,
    unreachable_hint,
)
from settings import format_ms

log = logging.getLogger(__name__)

T = TypeVar("T")

# Binance answers these codes on transient server trouble: internal error, backend timeout, busy.
_TRANSIENT_BINANCE_CODES = ('"code":-1001', '"code":-1007', '"code":-1008')
# A numeric time below this (1973-03-03 as ms) is almost surely epoch SECONDS: Binance opened in 2017.
_SECONDS_LOOKALIKE_MS = 100_000_000_000
# Exit codes of this CLI and data_fetch_job.py (see the module docstring).
EXIT_OK, EXIT_PAIRS_FAILED, EXIT_BAD_INPUT, EXIT_CANNOT_RUN, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class FetchError(RuntimeError):
    """A fetch failed; ``permanent`` says whether retrying later can help. ``result`` holds progress."""

    def __init__(self, message: str, permanent: bool = True, result: FetchResult | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.result = result


class InvalidCandleError(FetchError):
    """The exchange sent a candle that breaks OHLC rules or the timeframe grid."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM during a fetch or a job; ``results`` holds the outcomes recorded up to then
    (the fetch in flight as ``interrupted``)."""

    def __init__(self, results: list[FetchResult]):
        super().__init__("interrupted")
        self.results = results


class ExchangeOutage(FetchError):
    """The exchange is unreachable or bans/throttles this client: every pair would fail the same way,
    and more requests can extend a ban, so a job stops all pairs on the first one."""

    def __init__(self, message: str, result: FetchResult | None = None):
        super().__init__(message, permanent=False, result=result)


@dataclass(frozen=True)
class RetryPolicy:
    """Per-request retries: delay = min(max_delay_s, base_delay_s * 2**attempt), at least Retry-After."""

    max_retries: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 300.0  # a longer ban (418) fails the fetch instead of hanging it
    page_checks: int = 3  # an empty page before `until` is asked again this often (with backoff)
    reach_budget_s: float = 6.0  # check_exchange: give up on an unreachable exchange after this long

    def delay_s(self, attempt: int) -> float:
        """Backoff before retry ``attempt`` (0-based), without Retry-After."""
        return min(self.max_delay_s, self.base_delay_s * 2**attempt)


@dataclass
class FetchResult:
    """Outcome of one pair/timeframe fetch (also recorded in ``market.fetch_runs``)."""

    symbol: str
    timeframe: str
    exchange: str = "binance"
    since_ms: int | None = None  # resolved range actually fetched, [since_ms, until_ms)
    until_ms: int | None = None
    status: str = "running"  # ok | failed | interrupted | skipped (a job stopped before this pair)
    rows_fetched: int = 0
    rows_inserted: int = 0
    gaps: list[db.Gap] = field(default_factory=list)
    retries: int = 0
    error: str | None = None
    permanent: bool = False
    outage: bool = False  # failed or skipped because the exchange or the database was unavailable
    run_id: int | None = None
    seconds: float = 0.0


def parse_time_ms(value: str | int | None, where: str = "--since/--until") -> int | None:
    """UTC epoch ms from ``2021-01-01``, ``2021-01-01T12:00``, an ISO string with offset, or ms;
    None or "" stays None (an open end). A bad value is a permanent FetchError.

    Values that look like a unit mistake are refused with the fix named: a negative time, and a
    number below 1e11 (epoch SECONDS read as milliseconds would mean January 1970).
    """
    if value is None or value == "":
        return None
    try:
        ts_ms = settings.parse_time_ms(value, where)
    except settings.ConfigError as exc:
        raise FetchError(f"bad date: {exc}") from None
    if ts_ms < 0:
        raise FetchError(f"bad date: {where} {value!r} is before 1970; give a date such as 2021-01-01")
    numeric = isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())
    if numeric and 0 < ts_ms < _SECONDS_LOOKALIKE_MS:
        raise FetchError(
            f"bad date: {where} {value} looks like epoch SECONDS (as milliseconds it is {format_ms(ts_ms)}); "
            f"pass milliseconds ({ts_ms * 1000}) or a date such as {format_ms(ts_ms * 1000)[:10]}"
        )
    return ts_ms


def _is_ban(exc: Exception) -> bool:
    # Binance's 418 body says "IP banned until <ms>"; ccxt maps it to the same class as a 429.
    return isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded) and "banned" in str(exc).lower()


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
                message = f"{what}: still failing after {policy.max_retries} retries ({network_cause(exc)})"
                if isinstance(exc, ccxt.NetworkError):  # unreachable, 5xx, timeouts, 429 storms
                    base = api_base_url(client)
                    if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
                        reason = f"the exchange at {base} keeps rate-limiting this IP: retry later"
                    else:
                        reason = f"the exchange at {base} is unreachable or failing; {unreachable_hint(base)}"
                    raise ExchangeOutage(f"{message}; {reason}") from exc
                raise FetchError(message, permanent=False) from exc
            delay = policy.delay_s(attempt)
            limited = isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded)
            retry_after = _retry_after_s(client) if limited else None
            if retry_after is not None:
                if retry_after > policy.max_retry_after_s:
                    kind = "bans this IP (418)" if _is_ban(exc) else "rate-limits this IP (429)"
                    raise ExchangeOutage(
                        f"{what}: the exchange at {api_base_url(client)} {kind} and asks to wait "
                        f"{retry_after:.0f} s, longer than max_retry_after_s={policy.max_retry_after_s:.0f}; "
                        "every request before then extends the ban: retry later"
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


def check_exchange(client: ccxt.Exchange, policy: RetryPolicy | None = None) -> None:
    """Raise :class:`ExchangeOutage` (URL, cause, and the fix) unless the exchange answers a time
    request within ``policy.reach_budget_s``: a job learns in seconds, not after every pair's
    retries, that it cannot run. Quiet while it retries: the outcome is one message."""
    policy = policy or RetryPolicy()
    deadline = time.monotonic() + policy.reach_budget_s
    saved_timeout = client.timeout
    attempt = 0
    try:
        while True:
            # each try may take at most what is left of the budget
            client.timeout = int(max(1.0, min(saved_timeout / 1000, deadline - time.monotonic())) * 1000)
            try:
                client.fetch_time()
                return
            except ccxt.BaseError as exc:
                base = api_base_url(client)
                if _is_ban(exc):  # every further request would extend the ban
                    raise ExchangeOutage(
                        f"the exchange at {base} bans this IP ({network_cause(exc)}); wait until the ban "
                        "ends, then re-run"
                    ) from exc
                if not isinstance(exc, ccxt.NetworkError):
                    return  # it answered, with an error of its own: reachable; the fetch reports the rest
                delay = policy.delay_s(attempt)
                if time.monotonic() + delay >= deadline:
                    raise ExchangeOutage(
                        f"cannot reach the exchange at {base} ({network_cause(exc)}; tried {attempt + 1} "
                        f"time(s) in {policy.reach_budget_s:.0f} s); {unreachable_hint(base)}"
                    ) from exc
                log.debug("exchange at %s not answering (%s); again in %.1f s", base, network_cause(exc),
                          delay)
                time.sleep(delay)
                attempt += 1
    finally:
        client.timeout = saved_timeout


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
                f"{symbol} {timeframe}: invalid candle at {format_ms(int(ts[index]))} ({problem}): "
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
    ``market.fetch_runs`` (``ok``, ``failed`` with the root cause, or ``interrupted`` on Ctrl-C).
    Raises FetchError (with ``.result``; :class:`ExchangeOutage` when the exchange is down or bans
    this IP) when the fetch fails; Ctrl-C raises :class:`Interrupted` after the run is recorded.
    """
    if batch_rows < 1 or page_limit < 1:
        raise ValueError(f"batch_rows ({batch_rows}) and page_limit ({page_limit}) must be >= 1")
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
            since, until = format_ms(since_ms), format_ms(until_ms)
            raise FetchError(f"bad dates: since {since} is not before until {until}")
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
                f"bad dates: since {format_ms(since_ms)} is after the exchange's time {format_ms(now_ms)}"
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
        log.info("%s: fetching [%s, %s)", what, format_ms(start), format_ms(end))

        def page(cursor: int) -> tuple[np.ndarray, np.ndarray]:
            """Validated candles of [cursor, end) from one klines request (retried on transient errors)."""

            def request() -> tuple[np.ndarray, np.ndarray]:
                rows = client.fetch_ohlcv(
                    symbol, timeframe, since=cursor, limit=page_limit, params={"until": end - 1}
                )  # Binance's endTime is inclusive
                if not isinstance(client.last_json_response, list):
                    raise ccxt.BadResponse(f"{what}: klines answer is not a JSON list")
                return validate_candles(rows, symbol, timeframe)

            ts, values = call_with_retry(
                request, client, f"{what}: klines from {format_ms(cursor)}", policy, retries, sleep
            )
            keep = (ts >= cursor) & (ts < end)
            return ts[keep], values[keep]

        def holes(ts: np.ndarray, previous: int | None) -> int:
            times = ts if previous is None else np.concatenate([[previous], ts])
            return int(np.sum(np.diff(times) // step - 1)) if times.size > 1 else 0

        def ask_again(cursor: int, ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """An empty page, or one with a hole, asked again: the answer once it is complete, once the
            same hole comes back (the exchange's own gap), or the last answer after page_checks tries."""
            for check in range(policy.page_checks):
                missing = holes(ts, previous_ms)
                # a hole is re-asked at once (the exchange answered fine); an empty page with backoff,
                # since an exchange in maintenance answers empty pages for a while
                delay = 0.0 if ts.size else policy.delay_s(check)
                log.warning(
                    "%s: klines from %s came back %s; asking again%s (%d/%d)",
                    what,
                    format_ms(cursor),
                    f"with {missing} candle(s) missing" if ts.size else "empty before the range end",
                    f" in {delay:.2f} s" if delay else "",
                    check + 1,
                    policy.page_checks,
                )
                retries[0] += 1
                sleep(delay)
                again_ts, again_values = page(cursor)
                if again_ts.size and (holes(again_ts, previous_ms) == 0 or np.array_equal(again_ts, ts)):
                    return again_ts, again_values
                ts, values = again_ts, again_values
            return ts, values

        def empty_tail(cursor: int) -> None:
            """The exchange insists [cursor, end) is empty: a gap of its own if its data resumes at or
            after ``end`` (returns), a failure naming the missing span otherwise (raises)."""
            rows = call_with_retry(
                lambda: client.fetch_ohlcv(symbol, timeframe, since=cursor, limit=1),
                client, f"{what}: next candle after {format_ms(cursor)}", policy, retries, sleep,
            )
            next_ms = int(rows[0][0]) if rows else None
            if next_ms is not None and next_ms >= end:
                if previous_ms is None:
                    log.info("%s: no candles before %s (not listed yet)", what, format_ms(next_ms))
                else:
                    result.gaps.append(db.Gap(cursor, next_ms, (next_ms - cursor) // step))
                return
            later = (
                f"it lists a candle at {format_ms(next_ms)} inside that span"
                if next_ms is not None
                else f"it has no candle after {format_ms(cursor)} although its clock is at "
                f"{format_ms(now_ms)}"
            )
            raise FetchError(
                f"{what}: missing {(end - cursor) // step} candle(s) from {format_ms(cursor)} to "
                f"{format_ms(end)}: the exchange answered {policy.page_checks + 1} empty pages and {later}; "
                f"stored up to {format_ms(previous_ms)}, re-run later to fetch the rest",
                permanent=False,
            )

        cursor = start
        pages = buffered = 0
        while cursor < end:
            ts, values = page(cursor)
            if ts.size == 0 or holes(ts, previous_ms):
                ts, values = ask_again(cursor, ts, values)
            if ts.size == 0:
                empty_tail(cursor)
                break
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
                log.info("%s: %d candles so far, up to %s", what, result.rows_fetched, format_ms(int(ts[-1])))
            previous_ms = int(ts[-1])
            cursor = previous_ms + step
        flush()
        result.status = "ok"
    except KeyboardInterrupt:
        result.status, result.error = "interrupted", "interrupted (Ctrl-C or SIGTERM)"
        _store_fetched(flush, symbol, timeframe)
        raise Interrupted([result]) from None
    except Exception as exc:
        result.status = "failed"
        database_lost = db.is_connection_error(exc)
        # record the root cause, not what a later call on the dead connection said
        result.error = f"database connection lost: {db.error_summary(exc)}" if database_lost else str(exc)
        result.permanent = exc.permanent if isinstance(exc, FetchError) else False
        result.outage = database_lost or isinstance(exc, ExchangeOutage)
        if not database_lost:
            _store_fetched(flush, symbol, timeframe)
        if not isinstance(exc, FetchError):
            exc = FetchError(f"{symbol} {timeframe}: {result.error}", permanent=False)
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
            log.error("could not record fetch run %s: %s", result.run_id, db.error_summary(record_exc))
    for gap in result.gaps:
        log.warning(
            "%s %s: exchange gap of %d candle(s) from %s (not filled)",
            symbol,
            timeframe,
            gap.missing_bars,
            format_ms(gap.start_ms),
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


def _store_fetched(flush: Callable[[], None], symbol: str, timeframe: str) -> None:
    """Keep every validated candle fetched before a failure or an interrupt."""
    try:
        flush()
    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
        log.error("%s %s: could not store fetched candles: %s", symbol, timeframe, db.error_summary(exc))


def check_request(
    symbols: list[str], timeframes: list[str], since_ms: int | None, until_ms: int | None
) -> None:
    """Refuse a request that cannot succeed, before any work starts: malformed symbols, unsupported
    timeframes, names listed twice, ``since`` not before ``until``. Raises a permanent FetchError."""
    for name, items in (("pair", symbols), ("timeframe", timeframes)):
        twice = sorted({item for item in items if items.count(item) > 1})
        if twice:
            raise FetchError(f"{name}(s) {', '.join(twice)} listed twice; name each once")
    try:
        for symbol in symbols:
            parse_symbol(symbol)
        for timeframe in timeframes:
            timeframe_ms(timeframe)
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        since, until = format_ms(since_ms), format_ms(until_ms)
        raise FetchError(f"bad dates: --since {since} is not before --until {until}")


def connect(policy: RetryPolicy | None = None) -> tuple[Engine, ccxt.Exchange]:
    """The database engine and a client of an exchange that answers, checked before any work starts.

    Raises :class:`db.DatabaseUnavailable` or :class:`ExchangeOutage`, each one line naming the
    server, the cause and the fix.
    """
    engine = db.get_engine()
    client = make_exchange()
    check_exchange(client, policy)
    return engine, client


@contextlib.contextmanager
def cli_session() -> Iterator[None]:
    """Logging for the CLIs, and SIGINT and SIGTERM handled like Ctrl-C (``kill``, systemd, container
    stops) while the block runs; the previous handlers are restored afterwards.

    SIGINT is set explicitly: a process started in the background by a non-interactive shell (cron,
    ``nohup ... &``, CI scripts) inherits SIGINT *ignored*, and Python then never raises
    KeyboardInterrupt, so ``kill -INT`` would let the job run on instead of recording the interrupt."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter on every start

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    with cli_session():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        since_ms, until_ms = parse_time_ms(args.since, "--since"), parse_time_ms(args.until, "--until")
        check_request([args.symbol], [args.timeframe], since_ms, until_ms)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        engine, client = connect()
        result = fetch_range(client, engine, args.symbol, args.timeframe, since_ms, until_ms)
    except (db.DatabaseUnavailable, ExchangeOutage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except FetchError as exc:
        print(f"FAILED {args.symbol} {args.timeframe}: {exc}")
        return EXIT_PAIRS_FAILED
    except KeyboardInterrupt:
        print(f"interrupted: {args.symbol} {args.timeframe} recorded as interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(
        f"{result.symbol} {result.timeframe}: {result.rows_inserted} inserted of {result.rows_fetched} "
        f"fetched, {len(result.gaps)} exchange gap(s)"
    )
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
