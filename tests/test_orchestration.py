"""The plain functions behind the Airflow DAGs: settings, planning, and the data-quality rules."""

from __future__ import annotations

import numpy as np
import pytest

import orchestration
from settings import ConfigError

H = 3_600_000
DAY = 24 * H
JAN1_2021 = 1_609_459_200_000


def test_config_merges_override_and_rejects_unknown_keys(tmp_path, monkeypatch):
    override = tmp_path / "override.yaml"
    override.write_text("pairs: [SOL/USDT]\nfetch: {retries: 1}\n")
    monkeypatch.setenv("AIRFLOW_PIPELINE_CONFIG", str(override))
    config = orchestration.load_config()
    assert config.pairs == ("SOL/USDT",) and config.fetch.retries == 1
    assert config.fetch.pool == "binance_api"  # untouched keys keep configs/airflow.yaml's values
    assert config.timeframes  # from configs/data.yaml

    override.write_text("fetch: {retrys: 1}\n")
    with pytest.raises(ConfigError, match="retrys"):
        orchestration.load_config()


def test_plan_ingest_resumes_unless_backfilling():
    config = orchestration.load_config()
    regular = orchestration.plan_ingest(config, JAN1_2021, JAN1_2021 + H)
    assert len(regular) == len(config.pairs) * len(config.timeframes)
    assert all(t["since_ms"] is None and t["until_ms"] == JAN1_2021 + H for t in regular)
    backfill = orchestration.plan_ingest(config, JAN1_2021, JAN1_2021 + H, fill_interval=True)
    assert all(t["since_ms"] == JAN1_2021 for t in backfill)
    from airflow.sdk.api.datamodels._generated import DagRunType  # what a task's dag_run carries

    assert orchestration.is_backfill_run(DagRunType.BACKFILL)
    assert not orchestration.is_backfill_run(DagRunType.SCHEDULED) and not orchestration.is_backfill_run(None)


def test_plan_backfill_chunks_abut_and_cover_the_range_once():
    chunks = orchestration.plan_backfill("2021-01-01", "2021-03-15", ["BTC/USDT", "ETH/USDT"], ["1h"], 30)
    for symbol in ("BTC/USDT", "ETH/USDT"):
        mine = [c for c in chunks if c["symbol"] == symbol]
        assert [c["since_ms"] for c in mine] == [JAN1_2021, JAN1_2021 + 30 * DAY, JAN1_2021 + 60 * DAY]
        assert all(a["until_ms"] == b["since_ms"] for a, b in zip(mine, mine[1:], strict=False))
        assert mine[-1]["until_ms"] == orchestration.parse_time_ms("2021-03-15")
    with pytest.raises(ConfigError, match="not after"):
        orchestration.plan_backfill("2021-02-01", "2021-01-01", ["BTC/USDT"], ["1h"], 30)


def test_summarize_chunks_names_failed_chunks():
    chunks = orchestration.plan_backfill("2021-01-01", "2021-01-03", ["BTC/USDT"], ["1h"], 1)
    results = [{**chunks[0], "rows_inserted": 24}]
    with pytest.raises(orchestration.FetchError, match="1 of 2 backfill chunk.*2021-01-02"):
        orchestration.summarize_chunks(chunks, results)
    assert orchestration.summarize_chunks(chunks[:1], results)["rows_inserted"] == 24


def test_quality_flags_stale_data_new_gaps_and_missing_features(engine):
    import data_quality
    import db

    exchange = "t_quality"
    ts = JAN1_2021 + H * np.arange(100, dtype=np.int64)
    ts = np.delete(ts, [90, 91])  # a new 2-bar hole near the end
    ts = np.delete(ts, [10])  # an old hole, outside the look-back window
    prices = np.full((ts.size, 5), 100.0)
    db.write_candles(engine, exchange, "BTC/USDT", "1h", np.column_stack([ts, prices]))
    db.write_candles(engine, exchange, "ETH/USDT", "1h", np.column_stack([ts[:50], prices[:50]]))
    end_ms = JAN1_2021 + 100 * H  # the last closed bar opens at 99 h: BTC is current

    report = data_quality.check_market_data(
        engine, exchange, [("BTC/USDT", "1h"), ("ETH/USDT", "1h"), ("BNB/USDT", "1h")], end_ms,
        max_lag_bars=1, gap_lookback_bars=24, check_features=False,
    )
    kinds = sorted((i.symbol, i.kind) for i in report.issues)
    assert kinds == [("BNB/USDT", "stale"), ("BTC/USDT", "gap"), ("ETH/USDT", "stale")]
    assert "2 missing bar(s)" in next(i.detail for i in report.issues if i.kind == "gap")
    with pytest.raises(data_quality.DataQualityError, match="ETH/USDT"):
        data_quality.assert_quality(report)

    clean = data_quality.check_market_data(
        engine, exchange, [("BTC/USDT", "1h")], end_ms, gap_lookback_bars=5, check_features=True
    )
    assert [i.kind for i in clean.issues] == ["features_lag"]  # no dbt rows for this exchange label
