"""Benchmark the dbt indicator build: full build on ~1M candles, then incremental one-bar updates.

Uses every pair of ../shared/data/binance_spot_1h_2017_2022 (33 pairs, ~950k candles) in a
throwaway database on the project's PostgreSQL server (db.database_url(): DATABASE_URL or the
embedded one), dropped at the end. The history's ingested_at is moved back a day after loading,
as for candles ingested by earlier runs: an incremental run re-checks only candles ingested in
the last `ingest_lag_minutes` (dbt var) plus the new ones.

Usage:
    python bench/bench_dbt.py [--data-dir DIR] [--pairs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import db  # noqa: E402
from dbt_runner import run_dbt  # noqa: E402
from settings import PROJECT_ROOT  # noqa: E402

DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "binance_spot_1h_2017_2022"
HOUR_MS = 3_600_000


def _node_seconds(result, name: str) -> float:
    """Execution time dbt recorded for the node whose unique_id ends with ``name``."""
    return sum(r.execution_time for r in result.results if r.node.unique_id.endswith(name))


def _load(engine, data_dir: Path, pairs: int | None) -> tuple[int, list[str], float]:
    files = sorted(p for p in data_dir.glob("*_USDT.csv.gz"))[:pairs]
    started = time.perf_counter()
    total = 0
    symbols = []
    for path in files:
        symbol = path.name.removesuffix(".csv.gz").replace("_", "/")
        total += db.write_candles(engine, "binance", symbol, "1h", pd.read_csv(path))
        symbols.append(symbol)
    with engine.begin() as conn:  # history was ingested by earlier runs
        conn.execute(text("UPDATE market.ohlcv SET ingested_at = ingested_at - interval '1 day'"))
    # the UPDATE leaves dead index entries with recent ingested_at values behind; real ingestion
    # never updates rows, so clean them up rather than benchmark a bloat of our own making
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE market.ohlcv"))
    return total, symbols, time.perf_counter() - started


def _append_bar(engine, symbols: list[str]) -> None:
    """One new closed candle per pair, one hour after its newest (a small random move)."""
    rng = np.random.default_rng(len(symbols))
    for symbol in symbols:
        newest = db.newest_open_time_ms(engine, "binance", symbol, "1h")
        with engine.connect() as conn:
            close = conn.execute(
                text("SELECT close FROM market.ohlcv WHERE exchange = 'binance' AND symbol = :s"
                     " AND timeframe = '1h' AND open_time_ms = :t"), {"s": symbol, "t": newest},
            ).scalar_one()
        new_close = close * float(np.exp(rng.normal(0, 0.01)))
        row = [[newest + HOUR_MS, close, max(close, new_close) * 1.001, min(close, new_close) * 0.999,
                new_close, 10.0]]
        db.write_candles(engine, "binance", symbol, "1h", row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=None, help="first N pairs only (default: all)")
    args = parser.parse_args(argv)
    if not args.data_dir.exists():
        print(f"{args.data_dir} is missing: nothing to benchmark")
        return 0

    rows: list[tuple[str, float, str]] = []
    with db.scratch_database("bench_dbt") as url:
        engine = db.get_engine(url)
        candles, symbols, seconds = _load(engine, args.data_dir, args.pairs)
        rows.append((f"load {len(symbols)} pairs (db.write_candles)", seconds, f"{candles:,} candles"))
        print(f"loaded {candles:,} candles of {len(symbols)} pairs in {seconds:.1f}s", flush=True)

        started = time.perf_counter()
        result = run_dbt(["build", "--full-refresh"], url=url, quiet=True)
        total = time.perf_counter() - started
        rows.append(("full build: indicators model", _node_seconds(result, ".indicators"), ""))
        rows.append(("full build: dbt build total (model + tests)", total, f"{len(result.results)} nodes"))
        print(f"full build {total:.1f}s", flush=True)

        # The first run after the bulk load re-checks every candle ingested within
        # ingest_lag_minutes of the newest processed one (here: all of them); later runs are
        # the steady state of hourly updates.
        for label, command in (("1st after bulk load", ["run"]), ("steady", ["run"]), ("steady", ["build"])):
            _append_bar(engine, symbols)
            started = time.perf_counter()
            result = run_dbt(command, url=url, quiet=True)
            total = time.perf_counter() - started
            rows.append((f"incremental +1 bar/pair ({label}): model",
                         _node_seconds(result, ".indicators"), f"{len(symbols)} new rows"))
            rows.append((f"incremental +1 bar/pair ({label}): dbt {command[0]} total", total,
                         "run_dbt wall time" + (", with the data tests" if command[0] == "build" else "")))

    width = max(len(step) for step, _, _ in rows)
    print(f"\n{'step':<{width}}  {'seconds':>8}  note   (load average {os.getloadavg()[0]:.1f})")
    for step, seconds, note in rows:
        print(f"{step:<{width}}  {seconds:>8.2f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
