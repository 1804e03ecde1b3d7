"""db.py candle storage: bulk idempotent writes, atomic batches, reads, newest candle, gap report, runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg2.errors
import pytest
from sqlalchemy import text

import db

H = 3_600_000
T0 = 1_609_459_200_000


def candles(n: int, start: int = T0, step: int = H) -> np.ndarray:
    ts = start + step * np.arange(n)
    close = 100 + np.arange(n, dtype=float)
    return np.column_stack([ts, close - 0.5, close + 1.25, close - 1.0, close, np.full(n, 3.5)])


def test_write_is_bulk_idempotent_and_exact(engine):
    rows = candles(2500)
    assert db.write_candles(engine, "t_write", "BTC/USDT", "1h", rows) == 2500
    assert db.write_candles(engine, "t_write", "BTC/USDT", "1h", rows) == 0  # a re-run adds nothing
    # overlapping batch: only the new tail is inserted; list-of-lists (ccxt) input works too
    more = candles(10, start=T0 + 2495 * H).tolist()
    assert db.write_candles(engine, "t_write", "BTC/USDT", "1h", more) == 5
    frame = db.read_candles(engine, "t_write", "BTC/USDT", "1h")
    assert len(frame) == 2505 and frame.open_time_ms.is_monotonic_increasing
    np.testing.assert_array_equal(frame.to_numpy()[:2500], rows)
    assert frame.open_time_ms.dtype == np.int64
    # half-open range reads, other series untouched
    part = db.read_candles(engine, "t_write", "BTC/USDT", "1h", T0 + H, T0 + 4 * H)
    assert part.open_time_ms.tolist() == [T0 + H, T0 + 2 * H, T0 + 3 * H]
    assert db.read_candles(engine, "t_write", "ETH/USDT", "1h").empty
    assert db.newest_open_time_ms(engine, "t_write", "BTC/USDT", "1h") == T0 + 2504 * H
    assert db.newest_open_time_ms(engine, "t_write", "ETH/USDT", "1h") is None
    # a DataFrame with the files' column names is accepted as well
    frame_in = pd.DataFrame(
        candles(3, start=T0 + 10_000 * H), columns=["ts_ms", "open", "high", "low", "close", "volume"]
    )
    assert db.write_candles(engine, "t_write", "BTC/USDT", "1h", frame_in) == 3


def test_failed_batch_leaves_nothing(engine, monkeypatch):
    rows = candles(100)
    assert db.write_candles(engine, "t_atomic", "ETH/USDT", "1h", rows[:10]) == 10
    real = db._copy_payload

    def truncated(ts, values, key=()):  # a COPY stream cut off mid-row, as if the client died sending
        return real(ts, values, key)[:-40]

    monkeypatch.setattr(db, "_copy_payload", truncated)
    for symbol in ("BTC/USDT", "ETH/USDT"):  # the append fast path, then the staging path (overlap)
        # The server rejects the cut stream; the batch's transaction rolls back (checked below).
        with pytest.raises(psycopg2.errors.BadCopyFileFormat, match="unexpected EOF in COPY data"):
            db.write_candles(engine, "t_atomic", symbol, "1h", rows)
    monkeypatch.setattr(db, "_copy_payload", real)
    assert db.read_candles(engine, "t_atomic", "BTC/USDT", "1h").empty
    assert len(db.read_candles(engine, "t_atomic", "ETH/USDT", "1h")) == 10
    with pytest.raises(ValueError, match="NaN"):
        bad = rows.copy()
        bad[50, 4] = np.nan
        db.write_candles(engine, "t_atomic", "BTC/USDT", "1h", bad)
    assert db.write_candles(engine, "t_atomic", "BTC/USDT", "1h", rows) == 100  # the connection is fine
    # duplicates inside one batch are stored once (they take the staging path)
    assert db.write_candles(engine, "t_atomic", "SOL/USDT", "1h", np.concatenate([rows[:5], rows[:5]])) == 5


def test_gap_report(engine):
    rows = candles(80)
    keep = np.ones(80, bool)
    keep[10] = False  # one missing hour
    keep[20:50] = False  # 30 missing hours
    keep[75:] = False  # missing after the newest candle: not a gap (nothing follows it yet)
    db.write_candles(engine, "t_gaps", "BTC/USDT", "1h", rows[keep])
    gaps = db.gap_report(engine, "t_gaps", "BTC/USDT", "1h")
    assert gaps == [db.Gap(T0 + 10 * H, T0 + 11 * H, 1), db.Gap(T0 + 20 * H, T0 + 50 * H, 30)]
    assert db.gap_report(engine, "t_gaps", "BTC/USDT", "1h", start_ms=T0 + 12 * H) == [gaps[1]]


def test_fetch_runs_are_recorded(engine):
    run_id = db.start_fetch_run(
        engine,
        exchange="t_runs",
        symbol="BTC/USDT",
        timeframe="1h",
        since_ms=1,
        until_ms=None,
        job_id="job-x",
    )
    runs = db.fetch_runs(engine, job_id="job-x")
    assert runs.status.tolist() == ["running"]
    db.finish_fetch_run(engine, run_id, status="ok", rows_fetched=5, rows_inserted=3, gaps=1, until_ms=99)
    row = db.fetch_runs(engine, job_id="job-x").iloc[0]
    assert (row.status, row.rows_inserted, row.gaps, row.since_ms, row.until_ms) == ("ok", 3, 1, 1, 99)
    assert row.finished_at is not None
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT count(*) FROM market.fetch_runs WHERE job_id = 'job-x'")).scalar() == 1
        )


def test_concurrent_writer_falls_back_to_the_staging_path(engine):
    """Another transaction stores one of the batch's candles first: the append COPY would violate the
    key, so the batch is re-done through the staging table and that candle is skipped."""
    import threading

    rows = candles(10)
    other = engine.connect()
    transaction = other.begin()
    other.execute(
        text(
            "INSERT INTO market.ohlcv (exchange, symbol, timeframe, open_time_ms, open, high, low, close,"
            " volume)"
            " VALUES ('t_race', 'BTC/USDT', '1h', :ts, 1, 1, 1, 1, 1)"
        ),
        {"ts": int(rows[5, 0])},
    )
    outcome: list[object] = []
    writer = threading.Thread(
        target=lambda: outcome.append(db.write_candles(engine, "t_race", "BTC/USDT", "1h", rows))
    )
    writer.start()  # its COPY waits on the uncommitted row (or sees it committed): same outcome
    writer.join(timeout=0.5)
    transaction.commit()
    other.close()
    writer.join(timeout=30)
    assert outcome == [9]
    frame = db.read_candles(engine, "t_race", "BTC/USDT", "1h")
    assert len(frame) == 10 and frame.close.iloc[5] == 1.0  # the other writer's candle was kept
