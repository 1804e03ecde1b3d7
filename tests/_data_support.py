"""Helpers for the market-data tests: a fresh database per test and the candle files' expected rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, make_url, text

JAN1_2021 = 1_609_459_200_000
JUN1_2021 = 1_622_505_600_000
H = 3_600_000


@pytest.fixture
def fresh_db(database_url) -> Iterator[str]:
    """URL of a brand-new database on the session's server (for subprocesses that use the default
    ``exchange`` label, so they never share rows with other tests); dropped afterwards."""
    import db

    server = make_url(database_url)
    name = f"{server.database}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        engine = db._engines.pop(url, None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def file_candles(folder: Path, symbol: str, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The candle file's rows with open time in [start_ms, end_ms), in ``db.read_candles`` columns,
    at the precision the fake exchange serves them (`binance.fake_exchange.as_served`)."""
    from binance.fake_exchange import as_served

    frame = pd.read_csv(folder / f"{symbol.replace('/', '_')}.csv.gz")
    frame = frame[(frame.ts_ms >= start_ms) & (frame.ts_ms < end_ms)].rename(
        columns={"ts_ms": "open_time_ms"}
    )
    frame = frame.reset_index(drop=True).astype({"open_time_ms": "int64"})
    values = ["open", "high", "low", "close", "volume"]
    frame[values] = as_served(frame[values].to_numpy())
    return frame


def stored(engine, symbol: str, exchange: str = "binance", timeframe: str = "1h") -> pd.DataFrame:
    import db

    return db.read_candles(engine, exchange, symbol, timeframe)
