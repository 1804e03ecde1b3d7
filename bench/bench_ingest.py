"""Ingestion speed: the candle write path vs pandas.to_sql on the same rows, and end to end.

Runs in a throwaway database on the server ``DATABASE_URL`` names (else the embedded PostgreSQL),
dropped afterwards. Prints one table; the README quotes it.

Usage:
    python bench/bench_ingest.py                 # 1,000,000 rows, 2 pairs end to end
    python bench/bench_ingest.py --rows 200000 --e2e-pairs 1
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import db  # noqa: E402
from binance import make_exchange  # noqa: E402
from binance.fake_exchange import FakeExchange  # noqa: E402
from fetch_data import fetch_range  # noqa: E402

SHARED_1H = ROOT.parent / "shared" / "data" / "binance_spot_1h_2017_2022"
H = 3_600_000


def synthetic_rows(n: int, seed: int = 0) -> np.ndarray:
    """[n, 6] candles on the hour grid with realistic-looking float values."""
    rng = np.random.default_rng(seed)
    ts = 1_500_000_000_000 // H * H + H * np.arange(n, dtype=np.int64)
    close = 20_000 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    return np.column_stack([ts, open_, high, low, close, rng.lognormal(3, 1, n)])


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the write-path comparison")
    parser.add_argument("--symbols", type=int, default=10, help="the rows are split over this many series")
    parser.add_argument("--e2e-pairs", type=int, default=2, help="pairs fetched end to end (full history)")
    args = parser.parse_args(argv)
    logging.getLogger("fetch_data").setLevel(logging.ERROR)  # gap warnings are expected here

    results: list[tuple[str, int, float]] = []
    with db.scratch_database("bench_ingest") as url:
        engine = db.get_engine(url)
        per = args.rows // args.symbols
        series = [synthetic_rows(per, seed) for seed in range(args.symbols)]
        n = per * args.symbols
        print(
            f"write path: {n:,} rows in {args.symbols} series of {per:,}, database {db.masked(url)}",
            flush=True,
        )

        seconds, _ = timed(lambda: [db._copy_payload(s[:, 0].astype(np.int64), s[:, 1:]) for s in series])
        results.append(("build binary COPY payload (numpy)", n, seconds))

        def write_all(label: str) -> int:
            return sum(db.write_candles(engine, label, f"S{i}/USDT", "1h", s) for i, s in enumerate(series))

        seconds, inserted = timed(lambda: write_all("bench_append"))
        assert inserted == n, inserted
        results.append(("db.write_candles, append fast path (direct COPY)", n, seconds))

        for i, s in enumerate(series):  # one stored candle inside each batch forces the staging path
            db.write_candles(engine, "bench_stage", f"S{i}/USDT", "1h", s[-1:])
        seconds, inserted = timed(lambda: write_all("bench_stage"))
        assert inserted == n - args.symbols, inserted
        results.append(("db.write_candles, overlap path (COPY->stage->ON CONFLICT)", n, seconds))

        seconds, inserted = timed(lambda: write_all("bench_stage"))
        assert inserted == 0, inserted
        results.append(("db.write_candles re-run (all duplicates)", n, seconds))

        batch = 5000
        seconds, inserted = timed(
            lambda: sum(
                db.write_candles(engine, "bench_batches", "S0/USDT", "1h", series[0][i : i + batch])
                for i in range(0, per, batch)
            )
        )
        results.append((f"db.write_candles, append path in {batch:,}-row batches", per, seconds))

        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE market.ohlcv_to_sql (LIKE market.ohlcv INCLUDING ALL)"))
            conn.execute(
                text(
                    "CREATE TABLE market.ohlcv_ceiling (open_time_ms bigint PRIMARY KEY, open float8,"
                    " high float8, low float8, close float8, volume float8)"
                )
            )
        one = synthetic_rows(n)  # one series, so open times are unique under the single-column key

        def plain_copy() -> None:
            # the ceiling: binary COPY straight into a keyed table (no staging, no conflict handling)
            payload = db._copy_payload(one[:, 0].astype(np.int64), one[:, 1:])
            with engine.begin() as conn:
                cursor = conn.connection.driver_connection.cursor()
                cursor.copy_expert(
                    "COPY market.ohlcv_ceiling FROM STDIN WITH (FORMAT binary)", io.BytesIO(payload)
                )

        seconds, _ = timed(plain_copy)
        results.append(("ceiling: plain binary COPY, bigint-keyed table", n, seconds))

        frames = []
        for i, s in enumerate(series):
            frame = pd.DataFrame(s[:, 1:], columns=list(db.CANDLE_COLUMNS[1:]))
            frame.insert(0, "open_time_ms", s[:, 0].astype(np.int64))
            frame.insert(0, "timeframe", "1h")
            frame.insert(0, "symbol", f"S{i}/USDT")
            frame.insert(0, "exchange", "bench")
            frames.append(frame)
        to_sql_frame = pd.concat(frames, ignore_index=True)
        print("pandas.to_sql on the same rows (takes a while)...", flush=True)
        seconds, _ = timed(
            lambda: to_sql_frame.to_sql(
                "ohlcv_to_sql", engine, schema="market", if_exists="append", index=False
            )
        )
        results.append(("pandas.DataFrame.to_sql (default method)", n, seconds))

        source = SHARED_1H if SHARED_1H.exists() else None
        with FakeExchange(source) as fake:
            pairs = (
                fake.source.symbols[: args.e2e_pairs]
                if source is None
                else ["BTC/USDT", "ETH/USDT"][: args.e2e_pairs]
            )
            client = make_exchange(base_url=fake.url)
            client.load_markets()

            def end_to_end() -> int:
                return sum(
                    fetch_range(client, engine, p, "1h", 0, exchange="bench_e2e").rows_inserted for p in pairs
                )

            seconds, inserted = timed(end_to_end)
            what = "replayed files" if source else "synthetic market"
            results.append(
                (f"end to end: fake exchange ({what}) -> ccxt -> db, {len(pairs)} pairs", inserted, seconds)
            )
            client.enableRateLimit = False
            seconds, fetched = timed(
                lambda: sum(
                    fetch_range(client, engine, p, "1h", 0, exchange="bench_free").rows_inserted
                    for p in pairs
                )
            )
            results.append(("  same, ccxt rate limiter off", fetched, seconds))

    width = max(len(r[0]) for r in results)
    print(f"\n{'path':<{width}}  {'rows':>10}  {'seconds':>8}  {'candles/s':>10}")
    for label, rows, seconds in results:
        print(f"{label:<{width}}  {rows:>10,}  {seconds:>8.2f}  {rows / seconds:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
