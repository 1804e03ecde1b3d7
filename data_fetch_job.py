"""Fetch every configured pair and timeframe into PostgreSQL, isolating failures, with a summary.

Defaults come from ``configs/data.yaml`` (pairs, timeframes, since, until, the ``fetch`` retry
settings). Each pair/timeframe is one ``fetch_data.fetch_range`` call recorded in
``market.fetch_runs``; one failing never loses or blocks another's data. Re-running the same range
inserts 0 rows.

Before any work the job checks its arguments, the database and that the exchange answers (within
``RetryPolicy.reach_budget_s``), so a typo or an outage costs seconds, not every pair's retries.
During the run a circuit breaker stops every remaining pair (status ``skipped``) as soon as one
meets an outage that would hit them all: the exchange unreachable after the retries, a ban (418) or
429 storm, the database gone. Further requests would only extend a ban.

Exit codes: 0 every pair ok; 1 some pairs failed for reasons of their own (named on stderr and in
the table); 2 bad arguments or configuration, nothing done; 3 could not run or was stopped by an
outage: exchange or database unreachable, or the exchange bans this IP (one message names the
server, the cause and the fix; retry later); 130 interrupted by Ctrl-C / SIGTERM (the pair in flight
is recorded as ``interrupted``, candles fetched so far are stored).

Usage:
    python data_fetch_job.py                                   # configs/data.yaml defaults
    python data_fetch_job.py --pairs BTC/USDT,ETH/USDT --timeframes 1h --since 2021-01-01 --until 2021-06-01
    BINANCE_BASE_URL=http://127.0.0.1:8765 python data_fetch_job.py   # against the fake exchange
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from tqdm import tqdm

import db
from binance import BINANCE_INTERVALS, make_exchange, timeframe_ms
from fetch_data import (
    EXIT_BAD_INPUT,
    EXIT_CANNOT_RUN,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PAIRS_FAILED,
    ExchangeOutage,
    FetchError,
    FetchResult,
    Interrupted,
    RetryPolicy,
    check_exchange,
    check_request,
    cli_session,
    fetch_range,
    parse_time_ms,
)
from settings import CONFIG_DIR, ConfigError, check_keys, format_ms, load_yaml

log = logging.getLogger(__name__)

_KEYS = {"exchange", "pairs", "timeframes", "since", "until", "fetch"}
_FETCH_DEFAULTS: dict[str, Any] = {
    "batch_rows": 5000,
    "max_retries": 6,
    "backoff_base_s": 0.5,
    "backoff_max_s": 30.0,
    "max_retry_after_s": 300.0,
}


def load_config(path: str | Path | None = None) -> dict[str, Any]:
    """``configs/data.yaml`` validated, with the ``fetch`` section's defaults filled in."""
    where = str(path or CONFIG_DIR / "data.yaml")
    raw = load_yaml(path or CONFIG_DIR / "data.yaml")
    check_keys(raw, _KEYS, where)
    fetch = raw.get("fetch") or {}
    if not isinstance(fetch, dict):
        raise ConfigError(f"{where}: fetch must be a mapping with keys {sorted(_FETCH_DEFAULTS)}")
    check_keys(fetch, _FETCH_DEFAULTS, f"{where}.fetch")
    return {**raw, "fetch": {**_FETCH_DEFAULTS, **fetch}}


def _policy(fetch: dict[str, Any]) -> RetryPolicy:
    return RetryPolicy(
        int(fetch["max_retries"]),
        float(fetch["backoff_base_s"]),
        float(fetch["backoff_max_s"]),
        float(fetch["max_retry_after_s"]),
    )


def run_job(
    pairs: list[str],
    timeframes: list[str],
    since_ms: int | None = None,
    until_ms: int | None = None,
    engine: Engine | None = None,
    client: Any = None,
    *,
    exchange: str | None = None,
    default_since_ms: int | None = None,
    policy: RetryPolicy | None = None,
    batch_rows: int | None = None,
    job_id: str | None = None,
    show_progress: bool = True,
) -> list[FetchResult]:
    """Fetch every (pair, timeframe); never raises for one pair's failure (see each result's status/error).

    ``since_ms=None`` resumes each series after its newest stored candle, or starts at
    ``default_since_ms`` (default: ``since`` in configs/data.yaml) when nothing is stored.

    Raises :class:`fetch_data.ExchangeOutage` when the exchange does not answer at the start
    (nothing was fetched) and :class:`db.DatabaseUnavailable` when the database cannot be reached.
    An outage met later (``FetchResult.outage``) opens the circuit: the remaining pairs are returned
    as ``skipped`` without a request. Ctrl-C raises :class:`fetch_data.Interrupted` carrying the results.
    """
    config = load_config()
    exchange = exchange or str(config.get("exchange", "binance"))
    if default_since_ms is None:
        default_since_ms = parse_time_ms(config.get("since"))
    policy = policy or _policy(config["fetch"])
    if batch_rows is None:
        batch_rows = int(config["fetch"]["batch_rows"])
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}")
    job_id = job_id or uuid.uuid4().hex[:12]
    engine = engine or db.get_engine()
    if client is None:
        client = make_exchange()
    check_exchange(client, policy)
    results: list[FetchResult] = []
    outage: str | None = None  # the open circuit's cause
    try:
        for symbol in pairs:
            for timeframe in timeframes:
                if outage is not None:
                    results.append(FetchResult(
                        symbol, timeframe, exchange, since_ms, until_ms, status="skipped",
                        error=f"not attempted: {outage}", outage=True,
                    ))
                    continue
                result = _fetch_one(
                    client, engine, symbol, timeframe, since_ms, until_ms,
                    exchange=exchange, default_since_ms=default_since_ms, batch_rows=batch_rows,
                    policy=policy, job_id=job_id, show_progress=show_progress,
                )
                results.append(result)
                if result.outage:
                    outage = result.error
                    log.error("stopping the job: %s", outage)
    except KeyboardInterrupt as exc:  # Interrupted from the fetch in flight, or a bare one between pairs
        raise Interrupted([*results, *getattr(exc, "results", [])]) from None
    return results


def _fetch_one(
    client: Any,
    engine: Engine,
    symbol: str,
    timeframe: str,
    since_ms: int | None,
    until_ms: int | None,
    *,
    show_progress: bool,
    **kwargs: Any,
) -> FetchResult:
    """One pair's fetch with a progress bar; a failure becomes the result's status and error."""
    total = None
    if since_ms is not None and until_ms is not None and timeframe in BINANCE_INTERVALS:
        total = max(0, (until_ms - since_ms) // timeframe_ms(timeframe))
    bar = tqdm(
        total=total,
        desc=f"{symbol} {timeframe}",
        unit="candle",
        disable=None if show_progress else True,  # None: bars on a terminal, log lines elsewhere
        leave=False,
        file=sys.stderr,
    )
    try:
        return fetch_range(
            client, engine, symbol, timeframe, since_ms, until_ms, progress=bar.update, **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - isolation: one pair's crash must not stop the others
        known = isinstance(exc, FetchError)
        if known and exc.result is not None:
            result = exc.result
        else:  # failed before its run was recorded (database) or crashed
            lost = db.is_connection_error(exc)
            result = FetchResult(
                symbol, timeframe, kwargs["exchange"], since_ms, until_ms, status="failed",
                error=str(exc) if known else (
                    f"database connection lost: {db.error_summary(exc)}" if lost
                    else f"{type(exc).__name__}: {exc}"
                ),
                permanent=known and exc.permanent, outage=lost,
            )
        if result.outage and db.is_connection_error(exc):
            try:  # one killed backend is not an outage: only a server that stays away stops the job
                db.check_connection(engine)
                result.outage = False
            except db.DatabaseUnavailable as down:
                result.error = str(down)
        if known or result.outage:
            log.error("%s %s failed: %s", symbol, timeframe, result.error)
        else:
            log.exception("%s %s crashed", symbol, timeframe)
        return result
    finally:
        bar.close()


def summary_table(results: list[FetchResult]) -> str:
    """A fixed-width table of the job's results, one line per pair/timeframe."""
    header = (
        f"{'pair':<12} {'tf':<4} {'from':<16} {'until':<16} {'fetched':>8} {'inserted':>8} {'gaps':>4} "
        f"{'retries':>7}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        status = r.status if r.status == "ok" else f"{r.status.upper()}: {r.error}"
        lines.append(
            f"{r.symbol:<12} {r.timeframe:<4} {format_ms(r.since_ms):<16} {format_ms(r.until_ms):<16} "
            f"{r.rows_fetched:>8} {r.rows_inserted:>8} {len(r.gaps):>4} {r.retries:>7}  {status}"
        )
    return "\n".join(lines)


def parse_list(value: str | None, option: str, default: list[str]) -> list[str]:
    """``--pairs``/``--timeframes``: None means the configured ``default``; an empty list or an
    empty item is refused (it used to fall back to the configuration silently)."""
    if value is None:
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if not any(items):
        raise FetchError(
            f"{option} is empty; name at least one, or leave {option} out to use configs/data.yaml"
        )
    if not all(items):
        raise FetchError(f"{option} {value!r} has an empty item; separate names with single commas")
    return items


def positive_int(value: str) -> int:
    """argparse type for sizes: ``0`` or a negative number is refused, not silently replaced."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return number


def exit_code(results: list[FetchResult]) -> int:
    """0 all ok; 3 when an outage stopped the job; 1 when some pairs failed for reasons of their own."""
    if any(r.outage for r in results):
        return EXIT_CANNOT_RUN
    return EXIT_PAIRS_FAILED if any(r.status != "ok" for r in results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", help="comma-separated ccxt symbols (default: configs/data.yaml pairs)")
    parser.add_argument("--timeframes", help="comma-separated timeframes (default: configs/data.yaml)")
    parser.add_argument("--since", help="UTC date/time or ms; default: resume after the newest stored candle")
    parser.add_argument(
        "--until", help="UTC date/time or ms, exclusive; default: configs/data.yaml until, or now"
    )
    parser.add_argument("--batch-rows", type=positive_int, help="candles per database transaction")
    parser.add_argument("--no-progress", action="store_true", help="log lines only, no progress bars")
    args = parser.parse_args(argv)
    with cli_session():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        config = load_config()
        pairs = parse_list(args.pairs, "--pairs", config["pairs"])
        timeframes = parse_list(args.timeframes, "--timeframes", config["timeframes"])
        since_ms = parse_time_ms(args.since, "--since")
        until_ms = parse_time_ms(args.until, "--until") if args.until else parse_time_ms(config.get("until"))
        check_request(pairs, timeframes, since_ms, until_ms)
    except (ConfigError, FetchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        results = run_job(
            pairs, timeframes, since_ms, until_ms, db.get_engine(), batch_rows=args.batch_rows,
            show_progress=not args.no_progress,
        )
    except (db.DatabaseUnavailable, ExchangeOutage) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt as exc:  # Interrupted from run_job, or a bare one before it started
        results = getattr(exc, "results", [])
        if results:
            print(summary_table(results))
        print("interrupted: the pair in flight is recorded as interrupted; re-run to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary_table(results))
    code = exit_code(results)
    if code == EXIT_CANNOT_RUN:
        print(f"STOPPED: {next(r.error for r in results if r.outage)}", file=sys.stderr)
    failed = [r for r in results if r.status != "ok"]
    if failed:
        names = ", ".join(f"{r.symbol} {r.timeframe}" for r in failed)
        print(f"FAILED: {names}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
