"""Airflow: DAG loading and structure, and both DAGs run end to end in-process with ``dag.test()``.

Real parts throughout: Airflow 3 with its metadata in PostgreSQL (a database of its own, prepared by
``airflow_runner.prepare``: `airflow db migrate` + the exchange pool), the fake exchange through
ccxt, market data in PostgreSQL and dbt building ``features.indicators``. The market data goes to a
database of this module's own (DATABASE_URL points at it meanwhile), so dbt's ``features`` schema
and the default ``binance`` label never mix with other tests' rows.
"""

from __future__ import annotations

import os
import sys
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
import yaml
from sqlalchemy import create_engine, make_url, text

H = 3_600_000
DAY = 24 * H
START = datetime(2021, 1, 1, tzinfo=UTC)  # inside both the shared candles and the synthetic market
START_MS = int(START.timestamp() * 1000)

TEST_SETTINGS = {
    "pairs": ["BTC/USDT", "ETH/USDT"],
    "timeframes": ["1h"],
    "since": "2021-01-01",
    # Short waits so retries happen within the test; one request retry so a few 429s reach Airflow.
    "fetch": {"retries": 3, "retry_delay_s": 1, "retry_backoff": 2.0, "max_retry_delay_s": 4,
              "request_retries": 1},
    "quality": {"max_lag_bars": 1, "gap_lookback_bars": 48},
}


def _drop(admin, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def airflow_setup(database_url, tmp_path_factory):
    """Airflow configured in this process (tmp AIRFLOW_HOME, metadata in its own PostgreSQL database,
    test settings via AIRFLOW_PIPELINE_CONFIG) and a market-data database of its own."""
    import airflow_runner
    import db
    import orchestration

    server = make_url(database_url)
    suffix = uuid.uuid4().hex[:6]
    data_db, meta_db = f"{server.database}_af_{suffix}", f"{server.database}_afmeta_{suffix}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    home = tmp_path_factory.mktemp("airflow_home")
    override = home / "pipeline.yaml"
    override.write_text(yaml.safe_dump(TEST_SETTINGS))

    monkeypatch = pytest.MonkeyPatch()
    try:
        airflow_runner.ensure_database(database_url, data_db)
        airflow_runner.ensure_database(database_url, meta_db)
        data_url = server.set(database=data_db).render_as_string(hide_password=False)
        meta_url = server.set(database=meta_db).render_as_string(hide_password=False)
        monkeypatch.setenv("DATABASE_URL", data_url)
        monkeypatch.setenv("AIRFLOW_PIPELINE_CONFIG", str(override))
        config = orchestration.load_config()
        for key, value in airflow_runner.airflow_env(config, meta_url, home=home, base={}).items():
            if key not in ("PATH", "PYTHONPATH"):
                monkeypatch.setenv(key, value)
        airflow_runner.prepare(config, dict(os.environ))  # db migrate + pool, through Airflow's CLI

        if "airflow.settings" in sys.modules:  # imported earlier in this session: point it here
            from airflow import settings

            settings.dispose_orm()
            settings.configure_vars()
            settings.configure_orm()
        else:
            import airflow  # noqa: F401 - initializes the ORM from the environment set above

        yield {"config": config, "engine": db.get_engine(data_url), "data_url": data_url}
    finally:
        if "airflow.settings" in sys.modules:
            from airflow import settings

            settings.dispose_orm()
        for engine in list(db._engines.values()):
            engine.dispose()
        db._engines.clear()
        monkeypatch.undo()
        for name in (data_db, meta_db):
            _drop(admin, name)
        admin.dispose()


@pytest.fixture(scope="module")
def dags(airflow_setup):
    from airflow.dag_processing.dagbag import DagBag

    from airflow_runner import DAGS_FOLDER

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags


def _ti_states(run) -> dict[tuple[str, int], tuple[str, int, str | None]]:
    return {
        (ti.task_id, ti.map_index): (str(ti.state), ti.try_number, ti.rendered_map_index)
        for ti in run.get_task_instances()
    }


def _source_rows(fake, symbol: str, start_ms: int, end_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """The fake's candles in [start_ms, end_ms) at the precision it serves them."""
    from binance.fake_exchange import as_served

    series = fake.source.series(symbol)
    keep = (series.ts_ms >= start_ms) & (series.ts_ms < end_ms)
    return series.ts_ms[keep], as_served(series.ohlcv[keep])


def _assert_stored_equals_source(engine, fake, symbol: str, start_ms: int, end_ms: int) -> None:
    import db

    stored = db.read_candles(engine, "binance", symbol, "1h", start_ms, end_ms)
    ts, ohlcv = _source_rows(fake, symbol, start_ms, end_ms)
    assert len(ts) > 0
    np.testing.assert_array_equal(stored["open_time_ms"].to_numpy(), ts)
    values = stored[["open", "high", "low", "close", "volume"]].to_numpy()
    np.testing.assert_array_equal(values, ohlcv)


def _count(engine, sql: str, **params) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar())


# --------------------------------------------------------------------------------------------------


def test_dagbag_loads_both_dags_with_expected_structure(dags, airflow_setup):
    from airflow.sdk import CronDataIntervalTimetable
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    config = airflow_setup["config"]
    assert {"market_data_ingest", "market_data_backfill"} <= set(dags)

    ingest = dags["market_data_ingest"]
    assert isinstance(ingest.timetable, CronDataIntervalTimetable)
    assert ingest.catchup is False and ingest.max_active_runs == 1
    tasks = ingest.task_dict
    assert set(tasks) == {"plan", "fetch", "dbt_build", "quality"}
    assert tasks["plan"].downstream_task_ids == {"fetch"}
    assert tasks["fetch"].downstream_task_ids == {"dbt_build"}
    assert tasks["dbt_build"].downstream_task_ids == {"quality"}
    assert tasks["dbt_build"].trigger_rule == "all_done_min_one_success"
    assert tasks["dbt_build"].pool == config.dbt_pool == "dbt"  # one dbt build at a time
    fetch = tasks["fetch"]
    assert isinstance(fetch, MappedOperator)  # dynamic task mapping over the planned targets
    assert fetch.pool == config.fetch.pool == "binance_api"
    assert fetch.retries == 3 and fetch.retry_exponential_backoff == 2.0
    assert fetch.retry_policy is not None

    backfill = dags["market_data_backfill"]
    assert type(backfill.timetable).__name__ == "NullTimetable"  # triggered with params only
    assert set(backfill.params) == {"start", "end", "pairs", "timeframes", "chunk_days"}
    btasks = backfill.task_dict
    assert set(btasks) == {"plan_chunks", "fetch_chunk", "dbt_build", "summarize"}
    assert isinstance(btasks["fetch_chunk"], MappedOperator)
    assert btasks["fetch_chunk"].pool == "binance_api"
    assert btasks["fetch_chunk"].downstream_task_ids == {"dbt_build", "summarize"}
    assert btasks["dbt_build"].pool == "dbt"


@pytest.mark.slow
def test_ingest_end_to_end_then_rerun_adds_nothing(dags, airflow_setup, fake_exchange, monkeypatch):
    engine = airflow_setup["engine"]
    monkeypatch.setenv("BINANCE_BASE_URL", fake_exchange.url)
    end = START.replace(day=8)  # one week of hourly candles per pair
    end_ms = int(end.timestamp() * 1000)
    fake_exchange.set_now(end_ms)  # the 00:00 candle is the still-open one

    run = dags["market_data_ingest"].test(logical_date=end)
    states = _ti_states(run)
    assert str(run.state) == "success", states
    assert {k: v[0] for k, v in states.items()} == {
        ("plan", -1): "success", ("fetch", 0): "success", ("fetch", 1): "success",
        ("dbt_build", -1): "success", ("quality", -1): "success",
    }
    assert "BTC/USDT 1h" in states[("fetch", 0)][2]  # mapped tasks are named after their target
    for symbol in ("BTC/USDT", "ETH/USDT"):
        _assert_stored_equals_source(engine, fake_exchange, symbol, START_MS, end_ms)
        features = _count(engine, "SELECT count(*) FROM features.indicators WHERE symbol = :s", s=symbol)
        assert features == 7 * 24
    candles = _count(engine, "SELECT count(*) FROM market.ohlcv")
    assert candles == 2 * 7 * 24

    again = dags["market_data_ingest"].test(logical_date=end)
    assert str(again.state) == "success", _ti_states(again)
    assert _count(engine, "SELECT count(*) FROM market.ohlcv") == candles
    with engine.connect() as conn:  # the re-run's two fetches, as market.fetch_runs recorded them
        last = conn.execute(text(
            "SELECT symbol, status, rows_inserted FROM market.fetch_runs ORDER BY run_id DESC LIMIT 2"
        )).all()
    assert sorted(last) == [("BTC/USDT", "ok", 0), ("ETH/USDT", "ok", 0)]


@pytest.mark.slow
def test_permanent_error_fails_only_that_pair_and_429s_are_retried(
    dags, airflow_setup, fake_exchange, monkeypatch
):
    engine = airflow_setup["engine"]
    monkeypatch.setenv("BINANCE_BASE_URL", fake_exchange.url)

    # ETH answers a permanent error: its task fails at once (no retries); BTC's data lands; the
    # quality gate then fails loudly because ETH is stale.
    end = START.replace(day=9)
    end_ms = int(end.timestamp() * 1000)
    fake_exchange.set_now(end_ms)
    fake_exchange.inject("invalid_symbol", count=-1, symbol="ETH/USDT")
    run = dags["market_data_ingest"].test(logical_date=end)
    states = _ti_states(run)
    assert str(run.state) == "failed"
    fetch_states = {v[2].split()[0]: (v[0], v[1]) for k, v in states.items() if k[0] == "fetch"}
    assert fetch_states == {"BTC/USDT": ("success", 1), "ETH/USDT": ("failed", 1)}
    assert states[("dbt_build", -1)][0] == "success"
    assert states[("quality", -1)][0] == "failed"
    _assert_stored_equals_source(engine, fake_exchange, "BTC/USDT", START_MS, end_ms)
    eth_newest = "SELECT coalesce(max(open_time_ms), 0) FROM market.ohlcv WHERE symbol = 'ETH/USDT'"
    assert _count(engine, eth_newest) < end_ms - 2 * H

    # 429s on BTC, more than one attempt's request retries absorb: Airflow retries the task and it
    # succeeds; ETH catches up after the newest stored candle.
    fake_exchange.clear_faults()
    end = START.replace(day=10)
    end_ms = int(end.timestamp() * 1000)
    fake_exchange.set_now(end_ms)
    fake_exchange.inject("429", count=3, symbol="BTC/USDT")
    run = dags["market_data_ingest"].test(logical_date=end)
    states = _ti_states(run)
    assert str(run.state) == "success", states
    fetch_states = {v[2].split()[0]: (v[0], v[1]) for k, v in states.items() if k[0] == "fetch"}
    assert fetch_states["BTC/USDT"] == ("success", 2)
    assert fetch_states["ETH/USDT"] == ("success", 1)
    for symbol in ("BTC/USDT", "ETH/USDT"):
        _assert_stored_equals_source(engine, fake_exchange, symbol, START_MS, end_ms)


@pytest.mark.slow
def test_backfill_chunks_store_exactly_the_source_rows(dags, airflow_setup, fake_exchange, monkeypatch):
    engine = airflow_setup["engine"]
    monkeypatch.setenv("BINANCE_BASE_URL", fake_exchange.url)
    fake_exchange.set_now(None)
    start_ms = int(datetime(2021, 3, 1, tzinfo=UTC).timestamp() * 1000)
    end_ms = start_ms + 3 * DAY

    run = dags["market_data_backfill"].test(
        logical_date=None,
        run_conf={"start": "2021-03-01", "end": "2021-03-04", "pairs": ["BNB/USDT"], "chunk_days": 1},
    )
    states = _ti_states(run)
    assert str(run.state) == "success", states
    chunks = sorted(v[2] for k, v in states.items() if k[0] == "fetch_chunk")
    assert len(chunks) == 3 and all(label.startswith("BNB/USDT 1h 2021-03-0") for label in chunks)
    _assert_stored_equals_source(engine, fake_exchange, "BNB/USDT", start_ms, end_ms)
    assert _count(engine, "SELECT count(*) FROM market.ohlcv WHERE symbol = 'BNB/USDT'") == 3 * 24
    assert _count(engine, "SELECT count(*) FROM features.indicators WHERE symbol = 'BNB/USDT'") == 3 * 24


@pytest.mark.slow
def test_quality_judges_the_runs_own_interval_not_newer_candles(airflow_setup, fake_exchange, monkeypatch):
    """Defect 10: a backfill's quality task failed because a concurrent scheduled run had stored newer
    candles between the backfill's dbt build and its check. Runs after the tests above, which built
    features.indicators for BTC and ETH up to START + 9 days."""
    import data_fetch_job
    import data_quality
    from binance import make_exchange

    engine, config = airflow_setup["engine"], airflow_setup["config"]
    built_ms = START_MS + 9 * DAY  # the interval the last dbt build covered ends here
    later_ms = built_ms + 2 * DAY
    fake_exchange.set_now(later_ms)
    # the "concurrent scheduled run": newer candles, no dbt build yet
    results = data_fetch_job.run_job(
        list(config.pairs), ["1h"], built_ms, later_ms, engine, make_exchange(base_url=fake_exchange.url),
        show_progress=False,
    )
    assert [r.status for r in results] == ["ok", "ok"]
    assert data_quality.run_quality_check(config, built_ms)["checked"] == 2  # the earlier run's interval
    with pytest.raises(data_quality.DataQualityError, match="features_lag"):  # the newer interval's gate
        data_quality.run_quality_check(config, later_ms)
