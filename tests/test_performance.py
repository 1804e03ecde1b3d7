"""performance.py: benchmarks against independent numpy computations, per-bar records, report files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import metrics
import performance as perf
from market_data import MarketData

FEE = 0.001
CASH = 10_000.0


def toy_market(n_bars: int = 300, n_pairs: int = 3, seed: int = 0) -> MarketData:
    """Random-walk candles whose opens differ from the previous close (gaps test the timing)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_bars, n_pairs)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.003, (n_bars, n_pairs)))
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    volume = rng.uniform(100, 200, (n_bars, n_pairs))
    return MarketData(
        symbols=[f"C{i}/USDT" for i in range(n_pairs)],
        timeframe="1h",
        open_time_ms=1_600_000_000_000 + 3_600_000 * np.arange(n_bars, dtype=np.int64),
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        features=close[:, :, None].copy(),
        feature_names=["close"],
    )


def reference_rebalanced(market: MarketData, fee: float) -> np.ndarray:
    """Equal weight rebalanced at every open, in plain numpy (Portfolio's documented rule, re-derived)."""
    o, c = market.open, market.close
    n = market.n_pairs
    w = np.full(n, 1.0 / n)
    cash, q = CASH, np.zeros(n)
    equity = [CASH]
    for t in range(1, market.n_bars):
        p = o[t]
        value = cash + q @ p
        dq = w * value / p - q
        if cash - (dq @ p + fee * np.abs(dq) @ p) < 0:
            sell = dq < 0
            available = cash - dq[sell] @ p[sell] * (1 - fee)
            needed = dq[~sell] @ p[~sell] * (1 + fee)
            dq[~sell] *= available / needed * (1 - 1e-12)
        cash -= dq @ p + fee * np.abs(dq) @ p
        q = q + dq
        equity.append(cash + q @ c[t])
    return np.array(equity)


def test_cash_and_hold_benchmarks_closed_form():
    market = toy_market()
    recs = perf.run_benchmarks(market, {"initial_cash": CASH, "fee_rate": FEE, "slippage_bps": 5.0})
    np.testing.assert_array_equal(recs["cash"].equity, CASH)
    # Buy at bar 1's open with all the cash: price moved by slippage, fee on top of the notional.
    qty0 = CASH / (market.open[1, 0] * (1 + 5e-4) * (1 + FEE))
    expected = np.concatenate(([CASH], qty0 * market.close[1:, 0]))
    np.testing.assert_allclose(recs["buy_hold_first"].equity, expected, rtol=1e-9)
    qty = CASH / market.n_pairs / (market.open[1] * (1 + 5e-4) * (1 + FEE))
    expected = np.concatenate(([CASH], market.close[1:] @ qty))
    np.testing.assert_allclose(recs["equal_weight_hold"].equity, expected, rtol=1e-9)
    assert recs["buy_hold_first"].fees.sum() == pytest.approx(qty0 * market.open[1, 0] * (1 + 5e-4) * FEE)


def test_equal_weight_rebalanced_without_fees_closed_form():
    market = toy_market(seed=1)
    rec = perf.run_benchmarks(market, {"initial_cash": CASH, "fee_rate": 0.0}, ["equal_weight_rebalanced"])
    growth = market.close / market.open  # [T, N] open-to-close
    g = growth[1:].mean(axis=1)  # value growth from open to close of bars 1..T-1 (equal weights)
    w_close = growth[1:-1] / growth[1:-1].sum(axis=1, keepdims=True)
    h = (w_close * market.open[2:] / market.close[1:-1]).sum(axis=1)  # close t -> open t+1
    factors = np.cumprod(g) * np.concatenate(([1.0], np.cumprod(h)))
    np.testing.assert_allclose(rec["equal_weight_rebalanced"].equity, CASH * np.concatenate(([1.0], factors)),
                               rtol=1e-9)


def test_equal_weight_rebalanced_with_fees_matches_numpy():
    market = toy_market(seed=2)
    rec = perf.run_benchmarks(market, {"initial_cash": CASH, "fee_rate": FEE}, ["equal_weight_rebalanced"])
    expected = reference_rebalanced(market, FEE)
    np.testing.assert_allclose(rec["equal_weight_rebalanced"].equity, expected, rtol=1e-9)


def test_record_is_consistent():
    market = toy_market(seed=3)
    recs = perf.run_benchmarks(market, {"initial_cash": CASH, "fee_rate": FEE, "slippage_bps": 3.0})
    for rec in recs.values():
        # Per-pair PnL explains the equity curve exactly; weights sum to one.
        np.testing.assert_allclose(CASH + np.cumsum(rec.pnl.sum(axis=1)), rec.equity, rtol=1e-9)
        np.testing.assert_allclose(rec.weights_after.sum(axis=1), 1.0)
        np.testing.assert_allclose(rec.weights_before.sum(axis=1), 1.0)
    ewr = recs["equal_weight_rebalanced"]
    # Bar 1 buys everything from cash: turnover 1 (less the fee reserve), then small drift trades.
    assert ewr.weights_before[1, -1] == 1.0
    assert 0.99 < metrics.turnover(ewr.weights_before[:2], ewr.weights_after[:2]) <= 1.0
    assert recs["cash"].metrics(8760)["exposure"] == 0.0
    assert recs["equal_weight_hold"].metrics(8760)["turnover"] == pytest.approx(1.0, abs=1e-3)


def test_unknown_benchmark():
    with pytest.raises(ValueError, match="unknown benchmark"):
        perf.benchmark_targets("martingale", 10, 2)


def test_table_formats_every_metric():
    market = toy_market(seed=4, n_bars=50)
    recs = perf.run_benchmarks(market, {"initial_cash": CASH})
    table = perf.metrics_table(recs, 8760)
    text = perf.format_table(table)
    for name in metrics.METRIC_NAMES:
        assert name in text
    json.dumps(table)  # plain floats


def test_write_report(tmp_path):
    market = toy_market(seed=5, n_bars=120)
    recs = perf.run_benchmarks(market, {"initial_cash": CASH, "fee_rate": FEE})
    agent = recs["equal_weight_rebalanced"]
    agent.name = "agent"
    agent.calls = np.random.default_rng(0).integers(-1, 2, (market.n_bars, market.n_pairs))
    records = {"agent": agent, **recs}
    table = perf.write_report(tmp_path, records, 8760.0, market.close, title="toy")
    for name in ("metrics.json", "equity.csv", "report.html"):  # figures inside report.html (tearsheet.py)
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["periods_per_year"] == 8760.0
    for name in ("agent", *perf.BENCHMARKS):
        assert set(metrics.METRIC_NAMES) <= set(data[name])
    assert data["cash"]["sharpe"] is None  # undefined (flat curve) -> null, never NaN in JSON
    assert table["agent"]["total_return"] == pytest.approx(data["agent"]["total_return"])
    lines = (tmp_path / "equity.csv").read_text().splitlines()
    assert lines[0] == "open_time_ms,agent," + ",".join(perf.BENCHMARKS)
    assert len(lines) == market.n_bars + 1
    html = (tmp_path / "report.html").read_text()
    assert 'data-figure="calls"' in html and "Max drawdown" in html


# ------------------------------------------------------------------------------------ refusals
def test_refuses_missing_run(tmp_path, capsys):
    assert perf.main(["--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("run: {}\n")
    assert perf.main(["--run", str(tmp_path / "half")]) == 2
    assert "cannot load the run" in capsys.readouterr().err


def test_refuses_manifest_mismatch():
    market = toy_market(n_pairs=2)
    manifest = {"symbols": ["BTC/USDT", "ETH/USDT"], "timeframe": "1h", "feature_names": ["close"]}
    with pytest.raises(perf.BacktestError, match="symbols"):
        perf.check_manifest(manifest, market)
    manifest = {"symbols": list(market.symbols), "timeframe": "1d"}
    with pytest.raises(perf.BacktestError, match="timeframe"):
        perf.check_manifest(manifest, market)
    perf.check_manifest({"symbols": list(market.symbols), "timeframe": "1h"}, market)


def test_refuses_empty_range():
    market = toy_market(n_bars=48)  # 2020-09-13 12:26 UTC onwards
    cfg = {"data": {"splits": {"train": {"start": "2020-01-01", "end": "2020-06-01"},
                               "validation": {"start": "2020-06-01", "end": "2020-09-01"},
                               "test": {"start": "2020-09-01", "end": "2021-01-01"}}}}
    part, first_bar, label = perf.select_range(cfg, market, "test", None, None)
    assert part.n_bars == 48 and first_bar == 0 and label == "test split"
    with pytest.raises(perf.BacktestError, match="holds 0 bars"):
        perf.select_range(cfg, market, "train", None, None)
    with pytest.raises(perf.BacktestError, match="holds 0 bars"):
        perf.select_range(cfg, market, None, "2030-01-01", None)
    with pytest.raises(perf.BacktestError, match="before"):
        perf.select_range(cfg, market, None, "2021-01-01", "2020-01-01")
    with pytest.raises(perf.BacktestError, match="not a date"):
        perf.select_range(cfg, market, None, "yesterday", None)
    part, _, _ = perf.select_range(cfg, market, None, "2020-09-14", "2020-09-14T06:00")
    assert part.n_bars == 6


def test_range_comes_with_its_history_or_is_refused():
    market = toy_market(n_bars=48)  # hourly from 2020-09-13 12:26 UTC: 12 bars before 2020-09-14
    cfg = {"data": {"splits": {"test": {"start": "2020-09-14", "end": "2021-01-01"}}}}
    part, first_bar, _ = perf.select_range(cfg, market, "test", None, None, history_bars=5)
    assert first_bar == 4 and part.open_time_ms[first_bar] >= perf.parse_date_ms("2020-09-14", "x")
    assert part.open_time_ms[first_bar - 1] < perf.parse_date_ms("2020-09-14", "x")
    np.testing.assert_array_equal(part.close, market.close[market.n_bars - part.n_bars :])
    # 12 bars before the first one: 13 up to and including it, so a need of 20 lacks 7.
    with pytest.raises(perf.BacktestError, match="needs 20 bars.*holds 13, so 7 bars are missing"):
        perf.select_range(cfg, market, "test", None, None, history_bars=20)


# ------------------------------------------------------------------------------ end to end (slow)
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A run trained by Train.py's CLI on configs/smoke.yaml (real RLlib, about a minute)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    base = tmp_path_factory.mktemp("perf_smoke")
    cmd = [sys.executable, str(root / "Train.py"), "--config", "configs/smoke.yaml", "--run-id", "smoke",
           "--saved-models", str(base / "saved"), "--logs", str(base / "logs")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"smoke training failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return base / "saved" / "smoke"


def policy_cfg(run_dir):
    import decision

    return decision.load_run_files(run_dir)[0]


@pytest.mark.slow
def test_backtest_smoke_run_end_to_end(smoke_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert perf.main(["--run", str(smoke_run), "--split", "test", "--out", str(out)]) == 0
    console = capsys.readouterr().out
    for name in ("agent", *perf.BENCHMARKS, *metrics.METRIC_NAMES):
        assert name in console
    for name in ("metrics.json", "equity.csv", "report.html"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "metrics.json").read_text())
    assert data["periods_per_year"] == 8760
    for name in ("agent", *perf.BENCHMARKS):
        assert set(metrics.METRIC_NAMES) <= set(data[name]), name
    assert data["cash"]["total_return"] == 0.0

    # The agent's recorded path is the env's own accounting (the run's policy played through the env
    # from the test split's first bar, warm from the bars before it); deterministic from run to run.
    import decision
    import SequentialTradingEnv
    import training

    policy = decision.load_policy(smoke_run)
    market, first_bar = training.load_splits(policy_cfg(smoke_run)).warm("test", policy.history_bars)
    env = SequentialTradingEnv.env(data=market, mode="eval", first_bar=first_bar, **policy.env_config)
    env.reset(seed=0)
    equity = [env.unwrapped.portfolio_value]
    for agent in env.agent_iter():
        obs, _, terminated, truncated, _ = env.last()
        if terminated or truncated:
            env.step(None)
            continue
        env.step(policy.meta_action(obs) if agent == "meta" else int(policy.specialist_actions(obs[None])[0]))
        if agent == "meta":
            equity.append(env.unwrapped.portfolio_value)
    rows = (out / "equity.csv").read_text().splitlines()
    agent_equity = np.array([float(r.split(",")[1]) for r in rows[1:]])
    np.testing.assert_array_equal(agent_equity, np.array(equity))
    assert rows[1].split(",")[0] == str(perf.parse_date_ms("2020-01-22", "test start"))
    second = perf.backtest(smoke_run, tmp_path / "again", split="test")
    agent = second.records["agent"]
    np.testing.assert_array_equal(agent.equity, agent_equity)
    # The per-pair PnL explains the agent's curve; weights are proper; calls are -1/0/+1.
    np.testing.assert_allclose(agent.equity[0] + np.cumsum(agent.pnl.sum(axis=1)), agent.equity, rtol=1e-9)
    np.testing.assert_allclose(agent.weights_after.sum(axis=1), 1.0)
    assert set(np.unique(agent.calls)) <= {-1, 0, 1}
    assert data["agent"]["fees_paid"] == pytest.approx(agent.fees.sum())


@pytest.mark.slow
def test_backtest_refuses_bad_inputs(smoke_run, tmp_path, capsys):
    # Other pairs than the run's (a CSV folder with one unrelated pair).
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    with pytest.raises(perf.BacktestError):
        perf.backtest(smoke_run, tmp_path / "x", data_dir=csv_dir)
    # The run's own pairs as CSV candles: the synthetic run also observed a planted `signal` feature
    # that candles cannot supply, so the features differ from the manifest.
    import training
    from binance.symbols import file_stem

    test = training.load_splits(policy_cfg(smoke_run)).test
    for i, symbol in enumerate(test.symbols):
        rows = np.column_stack([test.open_time_ms, test.open[:, i], test.high[:, i], test.low[:, i],
                                test.close[:, i], test.volume[:, i]])
        np.savetxt(csv_dir / f"{file_stem(symbol)}.csv", rows, delimiter=",", fmt="%.10g",
                   header="ts_ms,open,high,low,close,volume", comments="")
    assert perf.main(["--run", str(smoke_run), "--data-dir", str(csv_dir), "--out", str(tmp_path / "w")]) == 2
    assert "features" in capsys.readouterr().err
    assert perf.main(["--run", str(smoke_run), "--start", "2035-01-01", "--out", str(tmp_path / "y")]) == 2
    assert "holds 0 bars" in capsys.readouterr().err
    # Too close to the start of the data: 24 bars before 2020-01-02, the run needs 96 + 8 - 1 = 103
    # up to and including the first decision bar.
    assert perf.main(["--run", str(smoke_run), "--start", "2020-01-02", "--out", str(tmp_path / "h")]) == 2
    assert "holds 25, so 78 bars are missing" in capsys.readouterr().err
    # A corrupt checkpoint: the module weights are truncated.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(smoke_run, broken)
    for state in (broken / "checkpoint").rglob("module_state*"):
        state.write_bytes(b"not a checkpoint")
    assert perf.main(["--run", str(broken), "--out", str(tmp_path / "z")]) == 2
    assert "corrupt" in capsys.readouterr().err
