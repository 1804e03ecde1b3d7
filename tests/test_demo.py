"""`make demo` end to end on a small range: fake exchange fallback -> PostgreSQL -> dbt -> PPO -> report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import yaml
from sqlalchemy import create_engine, text

import demo
import market_data
from binance.fake_exchange import FakeExchange
from settings import parse_time_ms
from tests.conftest import ROOT, SHARED_1H

pytestmark = [pytest.mark.slow, pytest.mark.synthetic_fallback]
H = 3_600_000

PAIRS = ["BTC/USDT", "ETH/USDT"]


def _stored_candles(engine, label: str) -> int:
    """Candles of the demo's pairs stored under ``label`` for [2021-01-01, 2021-03-01)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM market.ohlcv WHERE exchange = :label AND timeframe='1h' "
                "AND symbol = ANY(:pairs) AND open_time_ms >= 1609459200000 "
                "AND open_time_ms < 1614556800000"
            ),
            {"label": label, "pairs": PAIRS},
        ).scalar_one()


def _write_configs(tmp_path, run_id: str) -> str:
    train_cfg = {
        "run": {"iterations": 1, "checkpoint_every": 1},
        "data": {
            "source": {"kind": "db", "symbols": PAIRS, "timeframe": "1h", "start": "2021-01-01",
                       "end": "2021-03-01"},
            "splits": {
                "train": {"start": "2021-01-01", "end": "2021-02-01"},
                "validation": {"start": "2021-02-01", "end": "2021-02-15"},
                "test": {"start": "2021-02-15", "end": "2021-03-01"},
            },
        },
        # A 4-day normalization window: the validation split (from 2021-02-01) needs history_bars of
        # warm history before it, and January's stored indicator rows are fewer than the default 727.
        "env": {"episode_length": 24, "normalization": {"window": 96}},
        "model": {"specialist_hiddens": [8], "meta_hiddens": [8]},
        "ppo": {"train_batch_size": 300, "minibatch_size": 150, "num_epochs": 1},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 1},
        "validation": {"every_iterations": 1},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    demo_cfg = {
        "exchange": {"source": "fake", "probe_timeout_ms": 2000, "fake_port": 0},
        "ingest": {"pairs": PAIRS, "timeframe": "1h", "since": "2021-01-01", "until": "2021-03-01"},
        "database": "unused_with_database_url",  # conftest sets DATABASE_URL: the demo uses it
        "train_config": str(tmp_path / "train.yaml"),
        "run_id": run_id,
        "backtest_split": "test",
        "saved_models_dir": str(tmp_path / "saved_models"),
        "logs_dir": str(tmp_path / "logs"),
    }
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo_cfg))
    return str(tmp_path / "demo.yaml")


def test_demo_runs_end_to_end_and_reuses_what_exists(engine, tmp_path, monkeypatch, capfd):
    # The fake exchange is forced (exchange.source: fake), so the test never depends on whether
    # Binance is reachable from this machine.
    monkeypatch.delenv("BINANCE_BASE_URL", raising=False)
    if SHARED_1H.exists():
        monkeypatch.setenv("DEMO_DATA_DIR", str(SHARED_1H))
        expected_source, label = f"fake exchange replaying {SHARED_1H}", f"replay:{SHARED_1H}"
    else:
        monkeypatch.delenv("DEMO_DATA_DIR", raising=False)  # the fake exchange's synthetic market
        expected_source, label = "synthetic market (seed 0)", "synthetic_seed0"
    assert market_data.describe_source({"kind": "db", "exchange": label}) == expected_source
    run_id = f"demo_test_{uuid.uuid4().hex[:6]}"
    config_path = _write_configs(tmp_path, run_id)
    try:
        assert demo.main(["--config", config_path]) == 0
        first, console_err = capfd.readouterr()
        lines = first.splitlines()
        # The data is named on the first lines, and the final table's title names it again.
        assert any(line.startswith(f"[demo] data: {expected_source}, from the local fake exchange")
                   for line in lines[:3]), lines[:3]
        assert f"Backtest on {expected_source}, test split" in first and "[demo] training run" in first
        report = tmp_path / "logs" / run_id / "backtest"
        title = f"<title>Backtest of {run_id} on {expected_source}</title>"
        assert title in (report / "report.html").read_text()
        table = json.loads((report / "metrics.json").read_text())
        assert table["data_source"] == expected_source
        manifest = json.loads((tmp_path / "saved_models" / run_id / "manifest.json").read_text())
        assert manifest["data_source"] == expected_source
        benchmarks = {"buy_hold_first", "equal_weight_hold", "equal_weight_rebalanced", "cash"}
        assert {"agent"} | benchmarks <= set(table)
        stored = _stored_candles(engine, label)
        assert _stored_candles(engine, "binance") == 0  # nothing stored as if it came from Binance
        with engine.connect() as conn:
            features = conn.execute(
                text("SELECT count(*) FROM features.indicators WHERE exchange = :label "
                     "AND symbol = ANY(:pairs)"),
                {"label": label, "pairs": PAIRS},
            ).scalar_one()
        # Every hour of Jan and Feb 2021 from the synthetic market; the real files have a few gaps.
        assert stored == 2 * 1416 if not SHARED_1H.exists() else stored > 2 * 1400
        assert features >= stored
        # Progress details and library output went to the run's log file, not to the console.
        log_text = (tmp_path / "logs" / run_id / "demo.log").read_text()
        assert "INFO fetch_data" in log_text and "fetch_data" not in first
        for noise in ("WARNING", "core_worker", "Deprecat", "gputil", "XDG_RUNTIME_DIR", "\x1b["):
            assert noise not in console_err, console_err
        assert "\x1b[" not in log_text

        # A second run inserts nothing and reuses the trained run instead of retraining.
        assert demo.main(["--config", config_path]) == 0
        second = capfd.readouterr().out
        assert "reusing the trained run" in second and "[demo] training run" not in second
        assert _stored_candles(engine, label) == stored

        # A trained run is never reused on other data: the demo says how to retrain instead.
        binance = demo.MarketSource(None, "binance", "Binance", "the real Binance API")
        with pytest.raises(SystemExit, match="was trained on .* not on Binance.*make clean-demo"):
            demo.train_or_reuse(demo.load_demo_config(config_path), binance)
    finally:
        shutil.rmtree(tmp_path / "saved_models", ignore_errors=True)


def test_synthetic_market_covers_the_demo_range_in_leap_years():
    # 2020 has 366 days: the synthetic market must still reach the demo's `until` (2022-01-01).
    cfg = demo.load_demo_config(ROOT / "configs" / "demo.yaml")
    until_ms = parse_time_ms(cfg["ingest"]["until"])
    series = FakeExchange().source.series("BTC/USDT")
    assert int(series.ts_ms[-1]) + H == until_ms
    assert int(series.ts_ms[0]) == parse_time_ms("2020-01-01")


def test_data_source_labels_name_their_origin():
    assert market_data.describe_source({"kind": "synthetic", "seed": 3}) == "synthetic market (seed 3)"
    assert market_data.describe_source({"kind": "synthetic"}) == "synthetic market (seed 0)"
    assert market_data.describe_source({"kind": "csv", "path": "data/x"}) == "candles from data/x"
    assert market_data.describe_source({"kind": "db", "symbols": ["BTC/USDT"]}) == "Binance"
    for data_dir, seed, text_ in ((None, 7, "synthetic market (seed 7)"),
                                  ("../shared/data/d", 0, "fake exchange replaying ../shared/data/d")):
        label = market_data.fake_exchange_label(data_dir, seed)
        assert market_data.describe_source({"kind": "db", "exchange": label}) == text_
    assert "'t_exact'" in market_data.describe_source({"kind": "db", "exchange": "t_exact"})


def test_clean_demo_drops_its_database_and_db_stop_stops_the_server(tmp_path, monkeypatch):
    import db

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("PGSERVER_DATA_DIR", str(tmp_path / "pg"))
    cfg = demo.load_demo_config(ROOT / "configs" / "demo.yaml")
    cfg.update(saved_models_dir=str(tmp_path / "saved_models"), logs_dir=str(tmp_path / "logs"),
               database="demo_clean_test")
    try:
        url, where = demo.demo_database(cfg)  # starts the embedded server, creates the database
        assert "demo_clean_test" in url and "embedded PostgreSQL" in where and db.embedded_running()
        for folder in ("saved_models", "logs"):
            (tmp_path / folder / cfg["run_id"]).mkdir(parents=True)
        stop = [sys.executable, str(ROOT / "db.py"), "stop"]
        env = {**os.environ, "PGSERVER_DATA_DIR": str(tmp_path / "pg")}
        out = subprocess.run(stop, env=env, capture_output=True, text=True, check=True).stdout
        assert out.startswith("stopped the embedded PostgreSQL") and not db.embedded_running()
        out = subprocess.run(stop, env=env, capture_output=True, text=True, check=True).stdout
        assert out.startswith("no embedded PostgreSQL running")

        demo.main(["--clean", "--config", str(_dump(tmp_path, cfg))])
        assert not (tmp_path / "saved_models" / cfg["run_id"]).exists()
        assert not (tmp_path / "logs" / cfg["run_id"]).exists()
        assert not db.embedded_running()  # clean started the server for the drop, and stopped it
        with db.embedded_session():
            admin = create_engine(db.embedded_url(), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                names = set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
            admin.dispose()
        assert "demo_clean_test" not in names and "postgres" in names
        assert not db.embedded_running()
    finally:
        db.stop_embedded()


def _dump(tmp_path, cfg) -> object:
    path = tmp_path / "clean.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_demo_config_rejects_unknown_and_missing_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("run_id: x\ntypo_key: 1\n")
    with pytest.raises(demo.ConfigError, match="typo_key"):
        demo.load_demo_config(tmp_path / "bad.yaml")
    (tmp_path / "short.yaml").write_text("run_id: x\n")
    with pytest.raises(demo.ConfigError, match="lacks"):
        demo.load_demo_config(tmp_path / "short.yaml")
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["exchange"]["source"] = "internet"
    (tmp_path / "source.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(demo.ConfigError, match="exchange.source is 'internet'; use one of"):
        demo.load_demo_config(tmp_path / "source.yaml")
