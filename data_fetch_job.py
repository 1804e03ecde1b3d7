"""Fetch every configured pair and timeframe into PostgreSQL, isolating failures, with a summary.

Defaults come from ``configs/data.yaml`` (pairs, timeframes, since, until, the ``fetch`` retry
settings). Each pair/timeframe is one ``fetch_data.fetch_range`` call recorded in
``market.fetch_runs``; one failing never loses or blocks another's data. The exit code is 1 when
any pair failed, and the failed pairs are named. Re-running the same range inserts 0 rows.

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
from fetch_data import FetchError, FetchResult, RetryPolicy, fetch_range, iso_utc, parse_time_ms
from settings import CONFIG_DIR, ConfigError, check_keys, load_yaml

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
    """
    config = load_config()
    exchange = exchange or str(config.get("exchange", "binance"))
    if default_since_ms is None:
        default_since_ms = parse_time_ms(config.get("since"))
    policy = policy or _policy(config["fetch"])
    batch_rows = batch_rows or int(config["fetch"]["batch_rows"])
    job_id = job_id or uuid.uuid4().hex[:12]
    engine = engine or db.get_engine()
    results: list[FetchResult] = []
    for symbol in pairs:
        for timeframe in timeframes:
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
                if client is None:
                    client = make_exchange()
                result = fetch_range(
                    client,
                    engine,
                    symbol,
                    timeframe,
                    since_ms,
                    until_ms,
                    exchange=exchange,
                    default_since_ms=default_since_ms,
                    batch_rows=batch_rows,
                    policy=policy,
                    job_id=job_id,
                    progress=bar.update,
                )
            except Exception as exc:  # noqa: BLE001 - isolation: one pair's crash must not stop the others
                known = isinstance(exc, FetchError)
                result = (exc.result if known else None) or FetchResult(
                    symbol,
                    timeframe,
                    exchange,
                    since_ms,
                    until_ms,
                    status="failed",
                    error=str(exc) if known else f"{type(exc).__name__}: {exc}",
                    permanent=known and exc.permanent,
                )
                if known:
                    log.error("%s %s failed: %s", symbol, timeframe, exc)
                else:
                    log.exception("%s %s crashed", symbol, timeframe)
            finally:
                bar.close()
            results.append(result)
    return results


def summary_table(results: list[FetchResult]) -> str:
    """A fixed-width table of the job's results, one line per pair/timeframe."""
    header = (
        f"{'pair':<12} {'tf':<4} {'from':<16} {'until':<16} {'fetched':>8} {'inserted':>8} {'gaps':>4} "
        f"{'retries':>7}  status"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        status = r.status if r.status == "ok" else f"FAILED: {r.error}"
        lines.append(
            f"{r.symbol:<12} {r.timeframe:<4} {iso_utc(r.since_ms):<16} {iso_utc(r.until_ms):<16} "
            f"{r.rows_fetched:>8} {r.rows_inserted:>8} {len(r.gaps):>4} {r.retries:>7}  {status}"
        )
    return "\n".join(lines)


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
    parser.add_argument("--batch-rows", type=int, help="candles per database transaction")
    parser.add_argument("--no-progress", action="store_true", help="log lines only, no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config()
        pairs = args.pairs.split(",") if args.pairs else list(config["pairs"])
        timeframes = args.timeframes.split(",") if args.timeframes else list(config["timeframes"])
        since_ms = parse_time_ms(args.since)
        until_ms = parse_time_ms(args.until) if args.until else parse_time_ms(config.get("until"))
    except (ConfigError, FetchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = run_job(
        pairs, timeframes, since_ms, until_ms, batch_rows=args.batch_rows, show_progress=not args.no_progress
    )
    print(summary_table(results))
    failed = [r for r in results if r.status != "ok"]
    if failed:
        names = ", ".join(f"{r.symbol} {r.timeframe}" for r in failed)
        print(f"FAILED: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
