"""`make demo` end to end on a small range: fake exchange fallback -> PostgreSQL -> dbt -> PPO -> report."""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
import yaml
from sqlalchemy import text

import demo
from tests.conftest import SHARED_1H

pytestmark = pytest.mark.slow

PAIRS = ["BTC/USDT", "ETH/USDT"]


def _stored_candles(engine) -> int:
    """Candles of the demo's pairs stored for [2021-01-01, 2021-03-01)."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT count(*) FROM market.ohlcv WHERE exchange='binance' AND timeframe='1h' "
                "AND symbol = ANY(:pairs) AND open_time_ms >= 1609459200000 "
                "AND open_time_ms < 1614556800000"
            ),
            {"pairs": PAIRS},
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
        "env": {"episode_length": 24},
        "model": {"specialist_hiddens": [8], "meta_hiddens": [8]},
        "ppo": {"train_batch_size": 300, "minibatch_size": 150, "num_epochs": 1},
        "resources": {"num_env_runners": 0, "num_envs_per_env_runner": 1},
        "validation": {"every_iterations": 1},
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    demo_cfg = {
        "exchange": {"probe_timeout_ms": 2000, "fake_port": 0},
        "ingest": {"pairs": PAIRS, "timeframe": "1h", "since": "2021-01-01", "until": "2021-03-01"},
        "train_config": str(tmp_path / "train.yaml"),
        "run_id": run_id,
        "backtest_split": "test",
        "saved_models_dir": str(tmp_path / "saved_models"),
        "logs_dir": str(tmp_path / "logs"),
    }
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo_cfg))
    return str(tmp_path / "demo.yaml")


def test_demo_runs_end_to_end_and_reuses_what_exists(engine, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("BINANCE_BASE_URL", raising=False)
    if SHARED_1H.exists():
        monkeypatch.setenv("DEMO_DATA_DIR", str(SHARED_1H))
    else:
        monkeypatch.delenv("DEMO_DATA_DIR", raising=False)  # the fake exchange's synthetic market
    run_id = f"demo_test_{uuid.uuid4().hex[:6]}"
    config_path = _write_configs(tmp_path, run_id)
    try:
        assert demo.main(["--config", config_path]) == 0
        first = capsys.readouterr().out
        assert "local fake exchange" in first and "[demo] training run" in first
        report = tmp_path / "logs" / run_id / "backtest"
        assert (report / "report.html").exists()
        table = json.loads((report / "metrics.json").read_text())
        benchmarks = {"buy_hold_first", "equal_weight_hold", "equal_weight_rebalanced", "cash"}
        assert {"agent"} | benchmarks <= set(table)
        stored = _stored_candles(engine)
        with engine.connect() as conn:
            features = conn.execute(
                text("SELECT count(*) FROM features.indicators WHERE symbol = ANY(:pairs)"),
                {"pairs": PAIRS},
            ).scalar_one()
        assert stored > 2 * 1400 and features >= stored

        # A second run inserts nothing and reuses the trained run instead of retraining.
        assert demo.main(["--config", config_path]) == 0
        second = capsys.readouterr().out
        assert "reusing the trained run" in second and "[demo] training run" not in second
        assert _stored_candles(engine) == stored
    finally:
        shutil.rmtree(tmp_path / "saved_models", ignore_errors=True)


def test_demo_config_rejects_unknown_and_missing_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("run_id: x\ntypo_key: 1\n")
    with pytest.raises(demo.ConfigError, match="typo_key"):
        demo.load_demo_config(tmp_path / "bad.yaml")
    (tmp_path / "short.yaml").write_text("run_id: x\n")
    with pytest.raises(demo.ConfigError, match="lacks"):
        demo.load_demo_config(tmp_path / "short.yaml")
