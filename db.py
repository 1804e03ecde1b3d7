"""PostgreSQL access: connection, migrations, candle storage and the market arrays read side.

Connection: ``DATABASE_URL`` (environment or ``.env``) names the server. When it is unset an
embedded PostgreSQL 16 (the ``pgserver`` package) is started in ``PGSERVER_DATA_DIR`` (default
``.pgdata/`` in the project), so a fresh machine needs no database install.

Lifecycle of the embedded server: it keeps running after the process that started it ends, so
dbt, Airflow tasks and other processes can share it. `embedded_session` stops it on exit when the
session started it (``make demo`` and the test suite do this); ``python db.py stop`` (``make
db-stop``) stops one left running by any other entry point.

Usage:
    python db.py migrate        # apply Alembic migrations (also done automatically on first use)
    python db.py url            # print the resolved database URL (password masked)
    python db.py stop           # stop the embedded PostgreSQL if it is running (make db-stop)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from settings import PROJECT_ROOT, env

log = logging.getLogger(__name__)
logging.getLogger("pgserver").setLevel(logging.WARNING)  # its INFO lines echo every pg_ctl call

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# One advisory-lock key for migrations, so concurrent first uses (Airflow mapped tasks) serialize.
_MIGRATION_LOCK_KEY = 727_001

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_platformdirs() -> Iterator[None]:
    # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (containers,
    # CI) that warns on every entry point although the /tmp fallback it uses works.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield


def embedded_data_dir(data_dir: str | Path | None = None) -> Path:
    """The embedded server's data folder: ``data_dir``, else ``PGSERVER_DATA_DIR``, else ``.pgdata/``."""
    return Path(data_dir or env("PGSERVER_DATA_DIR", str(PROJECT_ROOT / ".pgdata"))).resolve()


def embedded_url(data_dir: str | Path | None = None, database: str = "postgres") -> str:
    """Start (or reuse) the embedded PostgreSQL server and return its SQLAlchemy URL."""
    with _quiet_platformdirs():
        import pgserver  # imported lazily: only needed when no DATABASE_URL is configured

    folder = embedded_data_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not embedded_running(folder):  # stopped by another process (`db.py stop`) since we started it
        _forget_handle(folder)
    # cleanup_mode=None keeps the server running for other processes (dbt, Airflow, tests).
    server = pgserver.get_server(folder, cleanup_mode=None)
    uri = server.get_uri(database)  # postgresql://postgres:@/db?host=/path/to/socket
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def _postmaster(data_dir: str | Path | None = None) -> Any:
    """pgserver's view of the server running on ``data_dir``, or None when none is running."""
    with _quiet_platformdirs():
        from pgserver.utils import PostmasterInfo

    folder = embedded_data_dir(data_dir)
    info = PostmasterInfo.read_from_pgdata(folder) if folder.is_dir() else None
    return info if info is not None and info.is_running() else None


def embedded_running(data_dir: str | Path | None = None) -> bool:
    """True when an embedded server is running on ``data_dir`` (see `embedded_data_dir`)."""
    return _postmaster(data_dir) is not None


def stop_embedded(data_dir: str | Path | None = None) -> bool:
    """Stop the embedded server on ``data_dir`` (fast shutdown: open sessions are ended).

    Returns False when none was running. Engines this process holds on it are disposed first.
    """
    info = _postmaster(data_dir)
    if info is None:
        return False
    from pgserver import _commands

    folder = embedded_data_dir(data_dir)
    socket = f"host={info.socket_dir}" if info.socket_dir is not None else f":{info.port}/"
    with _engines_lock:
        for url in [u for u in _engines if socket in u]:
            _engines.pop(url).dispose()
    handle = _forget_handle(folder)
    # pgserver runs postgres as its own system user when we are root; pg_ctl must run as that user.
    user = handle.system_user if handle is not None else ("pgserver" if os.geteuid() == 0 else None)
    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=folder, user=user)
    return True


def _forget_handle(folder: Path) -> Any:
    """Drop this process's pgserver handle of ``folder`` (stale once its server stopped), so a
    later `embedded_url` starts a new server instead of returning the old socket; returns it."""
    from pgserver.postgres_server import PostgresServer

    handle = PostgresServer._instances.pop(folder, None)
    if handle is not None:
        atexit.unregister(handle._cleanup)
        handle.global_process_id_list.get_and_remove(os.getpid())
    return handle


@contextlib.contextmanager
def embedded_session() -> Iterator[None]:
    """Stop the embedded PostgreSQL on exit when it was not running on entry: what a session
    starts, it stops. A server that was already running (or none at all) is left as it was."""
    owns = not embedded_running()
    try:
        yield
    finally:
        if owns and embedded_running():
            stop_embedded()
            log.info("stopped the embedded PostgreSQL in %s", embedded_data_dir())


def database_url() -> str:
    """The SQLAlchemy URL of the project database: ``DATABASE_URL`` or the embedded server."""
    url = env("DATABASE_URL")
    if url:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return url
    return embedded_url()


def masked(url: str) -> str:
    """The URL with its password hidden, safe for logs."""
    return make_url(url).render_as_string(hide_password=True)


class DatabaseUnavailable(RuntimeError):
    """The database server cannot be reached; the message names the URL (password masked), the
    driver's reason and what to check."""


def error_summary(exc: BaseException) -> str:
    """A database error in one line: the driver's own message, without SQLAlchemy's SQL and link."""
    driver_error = getattr(exc, "orig", None) or exc
    return f"{type(driver_error).__name__}: {' '.join(str(driver_error).split())}"[:400]


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) says the database connection failed or was lost."""
    import psycopg2
    from sqlalchemy import exc as sa_exc

    kinds = (DatabaseUnavailable, sa_exc.OperationalError, sa_exc.InterfaceError,
             psycopg2.OperationalError, psycopg2.InterfaceError)
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        if isinstance(current, kinds):
            return True
        seen.append(current)
        current = current.__cause__ or current.__context__
    return False


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailable:
    """The :class:`DatabaseUnavailable` to raise for ``exc`` on ``url``."""
    fix = ("check that PostgreSQL is running there and accepts this user, or fix DATABASE_URL "
           "(unset, the project starts its own embedded PostgreSQL)")
    return DatabaseUnavailable(f"cannot reach the database {masked(url)}: {error_summary(exc)}; {fix}")


def check_connection(engine: Engine) -> None:
    """Raise :class:`DatabaseUnavailable` unless ``engine``'s server answers a query now."""
    from sqlalchemy import exc as sa_exc

    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except sa_exc.DBAPIError as exc:
        raise unavailable(engine.url.render_as_string(hide_password=False), exc) from exc


def get_engine(url: str | None = None, migrate: bool = True) -> Engine:
    """A pooled engine for ``url`` (default: :func:`database_url`), migrated on first use.

    Raises :class:`DatabaseUnavailable` (one line naming the server and the cause) when the server
    cannot be reached.
    """
    from sqlalchemy import exc as sa_exc

    url = url or database_url()
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, future=True)
            if migrate:
                try:
                    migrate_schema(engine)
                except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
                    engine.dispose()
                    raise unavailable(url, exc) from exc
            _engines[url] = engine
    return engine


def dispose_engine(url: str) -> None:
    """Close the cached engine of ``url`` (its pooled connections) if there is one."""
    with _engines_lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


@contextlib.contextmanager
def scratch_database(prefix: str, server_url: str | None = None) -> Iterator[str]:
    """Create a fresh, uniquely named database on the server of ``server_url`` (default: the
    project's), yield its URL, and drop it afterwards (for tests and benchmarks)."""
    server = make_url(server_url or database_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = server.set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            dispose_engine(url)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def migrate_schema(engine: Engine) -> None:
    """Apply every pending Alembic migration (idempotent, safe to call from many processes)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


# ---------------------------------------------------------------------------------------------
# Candles (market.ohlcv) and fetch runs (market.fetch_runs): the write and read side of ingestion.
# ---------------------------------------------------------------------------------------------

CANDLE_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")

# PostgreSQL binary COPY: signature, flags, header-extension length; a row is a field count then
# (length, big-endian value) per field. Built with one numpy structured array: no per-row Python.
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_PGCOPY_TRAILER = (-1).to_bytes(2, "big", signed=True)
_PGCOPY_ROW = np.dtype(
    [("fields", ">i2"), ("ts_len", ">i4"), ("ts", ">i8")]
    + [item for name in CANDLE_COLUMNS[1:] for item in ((f"{name}_len", ">i4"), (name, ">f8"))]
)


@dataclass(frozen=True)
class Gap:
    """A run of missing candles: open times ``start_ms`` .. ``end_ms`` (exclusive) have no candle."""

    start_ms: int  # first missing open time
    end_ms: int  # open time of the next stored candle
    missing_bars: int


def candle_arrays(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(open_time_ms int64 [n], ohlcv float64 [n, 5])`` from ccxt rows, an [n, 6] array or a DataFrame.

    A DataFrame needs the columns of :data:`CANDLE_COLUMNS` (``ts_ms`` is accepted for the time).
    """
    if isinstance(rows, pd.DataFrame):
        frame = rows.rename(columns={"ts_ms": "open_time_ms"})
        ts = frame["open_time_ms"].to_numpy(dtype=np.int64)
        values = frame[list(CANDLE_COLUMNS[1:])].to_numpy(dtype=np.float64)
        return ts, values
    if isinstance(rows, np.ndarray) and rows.dtype != object:
        array = rows
    else:
        # ccxt rows mix ints and floats; epoch ms (< 2**53) survive float64 exactly
        array = np.asarray(list(rows), dtype=np.float64)
    if array.size == 0:
        return np.empty(0, np.int64), np.empty((0, 5), np.float64)
    if array.ndim != 2 or array.shape[1] != 6:
        raise ValueError(
            f"candles must be [n, 6] (open_time_ms, open, high, low, close, volume), got {array.shape}"
        )
    return array[:, 0].astype(np.int64), np.ascontiguousarray(array[:, 1:], dtype=np.float64)


def _copy_payload(ts: np.ndarray, values: np.ndarray, key: tuple[str, ...] = ()) -> bytes:
    """Binary COPY rows ``(*key, open_time_ms, open, high, low, close, volume)``; ``key`` is per batch."""
    dtype = _PGCOPY_ROW
    if key:  # constant text columns: (length, bytes) fields in front of the candle's own
        encoded = [value.encode() for value in key]
        prefix = [(f"k{i}_len", ">i4") if j == 0 else (f"k{i}", f"S{len(raw)}")
                  for i, raw in enumerate(encoded) for j in (0, 1)]
        dtype = np.dtype([_PGCOPY_ROW.descr[0], *prefix, *_PGCOPY_ROW.descr[1:]])
    rows = np.empty(ts.size, dtype=dtype)
    rows["fields"] = len(CANDLE_COLUMNS) + len(key)
    for i, raw in enumerate(encoded if key else []):
        rows[f"k{i}_len"] = len(raw)
        rows[f"k{i}"] = raw
    rows["ts_len"] = 8
    rows["ts"] = ts
    for index, name in enumerate(CANDLE_COLUMNS[1:]):
        rows[f"{name}_len"] = 8
        rows[name] = values[:, index]
    return _PGCOPY_HEADER + rows.tobytes() + _PGCOPY_TRAILER


def write_candles(engine: Engine, exchange: str, symbol: str, timeframe: str, rows: Any) -> int:
    """Store candles in ``market.ohlcv`` in ONE transaction; returns how many were new.

    Rows newer than the series' newest stored candle (the usual incremental fetch) are appended by
    binary COPY straight into ``market.ohlcv`` inside a savepoint. Older rows (and everything, if a
    concurrent writer got in first) take the general path: binary COPY into a session-temporary
    staging table, then ``INSERT ... ON CONFLICT DO NOTHING``, so rows already stored are skipped
    (a re-run inserts 0). Either way a failure leaves nothing behind.
    The caller stores CLOSED candles only; values must be finite.
    """
    import psycopg2.errors

    ts, values = candle_arrays(rows)
    if ts.size == 0:
        return 0
    if not np.isfinite(values).all():
        raise ValueError(f"{symbol} {timeframe}: candles with NaN or infinite values cannot be stored")
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.execute(
                "SELECT max(open_time_ms) FROM market.ohlcv"
                " WHERE exchange = %s AND symbol = %s AND timeframe = %s",
                (exchange, symbol, timeframe),
            )
            newest = cursor.fetchone()[0]
            # Rows newer than the newest stored candle cannot conflict (barring a concurrent writer): they
            # go straight in; only the older part of the batch needs the staging table.
            appended = 0
            if ts.size == 1 or bool(np.all(ts[1:] > ts[:-1])):
                split = 0 if newest is None else int(np.searchsorted(ts, newest, side="right"))
                if split < ts.size:
                    key = (exchange, symbol, timeframe)
                    cursor.execute("SAVEPOINT ohlcv_append")
                    try:
                        cursor.copy_expert(
                            "COPY market.ohlcv (exchange, symbol, timeframe, open_time_ms, open, high, low,"
                            " close, volume) FROM STDIN WITH (FORMAT binary)",
                            io.BytesIO(_copy_payload(ts[split:], values[split:], key)),
                        )
                        cursor.execute("RELEASE SAVEPOINT ohlcv_append")
                        appended = int(ts.size - split)
                        ts, values = ts[:split], values[:split]
                    except psycopg2.errors.UniqueViolation:
                        cursor.execute("ROLLBACK TO SAVEPOINT ohlcv_append")  # someone else wrote: stage all
            if ts.size == 0:
                return appended
            # ON COMMIT DELETE ROWS: the table lives as long as the pooled connection, emptied per batch
            cursor.execute(
                "CREATE TEMP TABLE IF NOT EXISTS ohlcv_stage (open_time_ms bigint, open float8, high float8,"
                " low float8, close float8, volume float8) ON COMMIT DELETE ROWS"
            )
            payload = io.BytesIO(_copy_payload(ts, values))
            cursor.copy_expert("COPY ohlcv_stage FROM STDIN WITH (FORMAT binary)", payload)
            cursor.execute(
                "INSERT INTO market.ohlcv (exchange, symbol, timeframe, open_time_ms, open, high, low, close,"
                " volume) SELECT %s, %s, %s, open_time_ms, open, high, low, close, volume FROM ohlcv_stage"
                " ON CONFLICT DO NOTHING",
                (exchange, symbol, timeframe),
            )
            return appended + cursor.rowcount
        except psycopg2.OperationalError:
            # The server ended the session (backend killed, restart, network). The raw cursor bypasses
            # SQLAlchemy, so it would try to roll back on the dead connection and replace this root
            # cause with "connection already closed": discard the connection first.
            conn.invalidate()
            raise
        finally:
            cursor.close()


def read_candles(
    engine: Engine,
    exchange: str,
    symbol: str,
    timeframe: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> pd.DataFrame:
    """Stored candles with ``start_ms <= open_time_ms < end_ms`` (None = unbounded), oldest first.

    Columns: open_time_ms (int64), open, high, low, close, volume (float64).
    """
    query = text(
        "SELECT open_time_ms, open, high, low, close, volume FROM market.ohlcv"
        " WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe"
        " AND open_time_ms >= :start AND open_time_ms < :end ORDER BY open_time_ms"
    )
    params = {
        "exchange": exchange, "symbol": symbol, "timeframe": timeframe,
        "start": -(2**63) if start_ms is None else start_ms, "end": 2**63 - 1 if end_ms is None else end_ms,
    }
    with engine.connect() as conn:
        result = conn.execute(query, params).all()
    frame = pd.DataFrame(result, columns=list(CANDLE_COLUMNS))
    return frame.astype({"open_time_ms": "int64", **{c: "float64" for c in CANDLE_COLUMNS[1:]}})


def read_candles_since(
    engine: Engine,
    exchange: str,
    symbols: list[str],
    timeframe: str,
    after_ms: dict[str, int | None],
    end_ms: int,
) -> dict[str, np.ndarray]:
    """Every pair's stored candles with ``after_ms[symbol] < open_time_ms < end_ms`` (None: no lower
    bound) in ONE query, as ``{symbol: [rows, 6] float64}`` (open_time_ms, OHLCV), oldest first.
    For incremental readers such as trade.py, which keep the candles they have already read."""
    lowest = min((-(2**63) if v is None else v) for v in after_ms.values())
    query = text(
        "SELECT symbol, open_time_ms, open, high, low, close, volume FROM market.ohlcv"
        " WHERE exchange = :exchange AND timeframe = :timeframe AND symbol = ANY(:symbols)"
        " AND open_time_ms > :lowest AND open_time_ms < :end ORDER BY symbol, open_time_ms"
    )
    params = {"exchange": exchange, "timeframe": timeframe, "symbols": list(symbols), "lowest": lowest,
              "end": end_ms}
    with engine.connect() as conn:
        rows = conn.execute(query, params).all()
    out = {symbol: np.empty((0, 6)) for symbol in symbols}
    if rows:
        names = np.array([r[0] for r in rows])
        values = np.array([r[1:] for r in rows], dtype=np.float64)  # epoch ms are exact in float64
        for symbol in symbols:
            block = values[names == symbol]
            after = after_ms.get(symbol)
            out[symbol] = block if after is None else block[block[:, 0] > after]
    return out


def newest_open_time_ms(engine: Engine, exchange: str, symbol: str, timeframe: str) -> int | None:
    """Open time of the newest stored candle, or None when nothing is stored."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT max(open_time_ms) FROM market.ohlcv"
                " WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe"
            ),
            {"exchange": exchange, "symbol": symbol, "timeframe": timeframe},
        ).scalar()


def gap_report(
    engine: Engine,
    exchange: str,
    symbol: str,
    timeframe: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[Gap]:
    """Missing candles between stored ones (``start_ms <= open_time_ms < end_ms``), oldest first.

    Only holes between two stored candles count: before the first or after the last is not a gap.
    """
    from binance.symbols import timeframe_ms  # lazy: keeps ccxt out of plain db imports

    step = timeframe_ms(timeframe)
    query = text(
        "SELECT prev_ms, open_time_ms FROM ("
        "  SELECT open_time_ms, lag(open_time_ms) OVER (ORDER BY open_time_ms) AS prev_ms FROM market.ohlcv"
        "  WHERE exchange = :exchange AND symbol = :symbol AND timeframe = :timeframe"
        "  AND open_time_ms >= :start AND open_time_ms < :end"
        ") AS steps WHERE open_time_ms - prev_ms > :step ORDER BY open_time_ms"
    )
    params = {
        "exchange": exchange, "symbol": symbol, "timeframe": timeframe, "step": step,
        "start": -(2**63) if start_ms is None else start_ms, "end": 2**63 - 1 if end_ms is None else end_ms,
    }
    with engine.connect() as conn:
        rows = conn.execute(query, params).all()
    return [Gap(prev + step, nxt, (nxt - prev) // step - 1) for prev, nxt in rows]


def start_fetch_run(
    engine: Engine,
    *,
    exchange: str,
    symbol: str,
    timeframe: str,
    since_ms: int | None,
    until_ms: int | None,
    job_id: str | None = None,
) -> int:
    """Record a fetch as ``running`` in ``market.fetch_runs``; returns its run_id.

    A run that dies without :func:`finish_fetch_run` (SIGKILL, power loss) stays ``running``.
    """
    with engine.begin() as conn:
        return conn.execute(
            text(
                "INSERT INTO market.fetch_runs"
                " (job_id, exchange, symbol, timeframe, since_ms, until_ms, status)"
                " VALUES (:job_id, :exchange, :symbol, :timeframe, :since_ms, :until_ms, 'running')"
                " RETURNING run_id"
            ),
            {"job_id": job_id, "exchange": exchange, "symbol": symbol, "timeframe": timeframe,
             "since_ms": since_ms, "until_ms": until_ms},
        ).scalar_one()


def finish_fetch_run(
    engine: Engine,
    run_id: int,
    *,
    status: str,
    rows_fetched: int,
    rows_inserted: int,
    gaps: int,
    error: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> None:
    """Close a fetch run with its outcome (``since_ms``/``until_ms``: the resolved range, when known)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE market.fetch_runs SET status = :status, rows_fetched = :rows_fetched,"
                " rows_inserted = :rows_inserted, gaps = :gaps, error = :error, finished_at = now(),"
                " since_ms = coalesce(:since_ms, since_ms), until_ms = coalesce(:until_ms, until_ms)"
                " WHERE run_id = :run_id"
            ),
            {"run_id": run_id, "status": status, "rows_fetched": rows_fetched, "rows_inserted": rows_inserted,
             "gaps": gaps, "error": error, "since_ms": since_ms, "until_ms": until_ms},
        )


def fetch_runs(engine: Engine, job_id: str | None = None) -> pd.DataFrame:
    """Recorded fetch runs (all, or one job's), oldest first."""
    where = " WHERE job_id = :job_id" if job_id else ""
    query = f"SELECT * FROM market.fetch_runs{where} ORDER BY run_id"
    with engine.connect() as conn:
        result = conn.execute(text(query), {"job_id": job_id})
        return pd.DataFrame(result.all(), columns=list(result.keys()))


def load_market(
    symbols: list[str],
    timeframe: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
    exchange: str = "binance",
    engine: Engine | None = None,
):
    """Aligned :class:`market_data.MarketData` over ``features.indicators`` (built by ``make dbt``).

    Bars are open times in [start_ms, end_ms) (None = open side). Alignment rule: a bar is kept
    only when EVERY pair has a candle there whose indicators are warm (``warm``: full TA-Lib
    history since the last gap, see indicators.py); any other bar is dropped, never filled, so
    the result has no NaN. ``features[t, n]`` holds :data:`indicators.FEATURE_NAMES` in order;
    ``meta`` records the source and how many bars were dropped.
    """
    from indicators import FEATURE_NAMES
    from market_arrays import MarketData

    symbols = list(symbols)
    if not symbols or len(set(symbols)) != len(symbols):
        raise ValueError(f"symbols must be a non-empty list without repeats, got {symbols}")
    engine = engine or get_engine()
    ohlcv = ["open", "high", "low", "close", "volume"]
    columns = ["symbol", "open_time_ms", *ohlcv, *[f"{name} AS f_{name}" for name in FEATURE_NAMES]]
    query = (
        f"SELECT {', '.join(columns)} FROM features.indicators"
        " WHERE exchange = :exchange AND timeframe = :timeframe AND symbol = ANY(:symbols) AND warm"
        " AND open_time_ms >= :start_ms AND open_time_ms < :end_ms ORDER BY open_time_ms, symbol"
    )
    params = {
        "exchange": exchange, "timeframe": timeframe, "symbols": symbols,
        "start_ms": -(2**63) if start_ms is None else int(start_ms),
        "end_ms": 2**63 - 1 if end_ms is None else int(end_ms),
    }
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT to_regclass('features.indicators')")).scalar()
        if exists is None:
            raise RuntimeError("features.indicators does not exist: build it with `make dbt`")
        result = conn.execute(text(query), params)
        frame = pd.DataFrame(result.all(), columns=list(result.keys()))
    missing = sorted(set(symbols) - set(frame["symbol"]))
    if missing:
        raise ValueError(
            f"no warm indicator rows for {missing} ({exchange}, {timeframe}) in the range; "
            "ingest their candles and run `make dbt`"
        )
    all_times = frame["open_time_ms"].nunique()
    complete = frame.groupby("open_time_ms")["symbol"].transform("size") == len(symbols)
    frame = frame[complete.to_numpy()]
    # order rows (time, requested symbol order) so one reshape gives [T, N, ...]
    position = frame["symbol"].map({symbol: i for i, symbol in enumerate(symbols)}).to_numpy()
    frame = frame.iloc[np.lexsort((position, frame["open_time_ms"].to_numpy()))]
    steps, pairs = len(frame) // len(symbols), len(symbols)

    def block(names: list[str]) -> np.ndarray:
        return frame[names].to_numpy(dtype=np.float64).reshape(steps, pairs, len(names))

    prices = block(ohlcv)
    return MarketData(
        symbols=symbols,
        timeframe=timeframe,
        open_time_ms=frame["open_time_ms"].to_numpy(dtype=np.int64)[::pairs].copy(),
        open=prices[:, :, 0].copy(),
        high=prices[:, :, 1].copy(),
        low=prices[:, :, 2].copy(),
        close=prices[:, :, 3].copy(),
        volume=prices[:, :, 4].copy(),
        features=block([f"f_{name}" for name in FEATURE_NAMES]),
        feature_names=list(FEATURE_NAMES),
        meta={
            "source": "db",
            "table": "features.indicators",
            "exchange": exchange,
            "start_ms": start_ms,
            "end_ms": end_ms,
            "dropped_bars": int(all_times - steps),
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["migrate", "url", "stop"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "stop":
        folder = embedded_data_dir()
        stopped = stop_embedded()
        print(f"stopped the embedded PostgreSQL in {folder}" if stopped
              else f"no embedded PostgreSQL running in {folder}")
        return 0
    url = database_url()
    if args.command == "migrate":
        get_engine(url)
        print(f"migrated {masked(url)}")
    else:
        print(masked(url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
