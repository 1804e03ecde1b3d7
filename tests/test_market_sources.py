"""Synthetic generator and oracle, rule specialists, and market_data's CSV/synthetic loaders and splits."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import market_data
import specialists
import synthetic
from indicators import FEATURE_NAMES, WARM_BARS, compute_indicators
from settings import ConfigError

HOUR_MS = 3_600_000


def next_bar_corr(data, pair: int) -> float:
    s = synthetic.signal_of(data)[:-1, pair]
    r = np.log(data.close[1:, pair] / data.close[:-1, pair])
    return float(np.corrcoef(s, r)[0, 1])


def test_synthetic_shape_times_and_warm_features():
    data = synthetic.generate(n_pairs=3, n_bars=500, start="2021-03-01", seed=1)
    assert data.close.shape == (500, 3) and data.features.shape == (500, 3, len(FEATURE_NAMES) + 1)
    assert data.feature_names[-1] == "signal" and data.symbols == ["SYN0/USDT", "SYN1/USDT", "SYN2/USDT"]
    assert data.open_time_ms[0] == market_data.to_ms("2021-03-01")
    assert np.all(np.diff(data.open_time_ms) == HOUR_MS)
    assert not np.isnan(data.features).any()
    np.testing.assert_array_equal(data.open[1:], data.close[:-1])
    assert np.all(data.high >= np.maximum(data.open, data.close)) and np.all(
        data.low <= np.minimum(data.open, data.close)
    )
    again = synthetic.generate(n_pairs=3, n_bars=500, start="2021-03-01", seed=1)
    np.testing.assert_array_equal(again.features, data.features)


def test_planted_signal_has_the_chosen_correlation():
    planted = synthetic.generate(n_pairs=2, n_bars=40_000, signal_corr=0.1, regime_switch_prob=0.0, seed=3)
    none = synthetic.generate(n_pairs=2, n_bars=40_000, signal_corr=0.0, regime_switch_prob=0.0, seed=3)
    for pair in range(2):
        assert next_bar_corr(planted, pair) == pytest.approx(0.1, abs=0.02)
        assert abs(next_bar_corr(none, pair)) < 0.02
    returns = np.log(planted.close[1:] / planted.close[:-1])
    assert np.corrcoef(returns.T)[0, 1] == pytest.approx(0.3, abs=0.03)
    assert np.std(returns) == pytest.approx(0.01, rel=0.05)


def test_regimes_switch_volatility():
    data = synthetic.generate(n_pairs=1, n_bars=20_000, regime_switch_prob=0.01, seed=4)
    regime = data.meta["regime"]
    assert set(np.unique(regime)) == {0, 1}
    r = np.log(data.close[1:, 0] / data.close[:-1, 0])
    ratio = np.std(r[regime[1:] == 1]) / np.std(r[regime[1:] == 0])
    assert ratio == pytest.approx(2.0, rel=0.1)


def test_bad_synthetic_knobs_are_config_errors():
    with pytest.raises(ConfigError, match="n_pair"):
        synthetic.generate(n_pair=3)
    with pytest.raises(ConfigError, match="signal_corr"):
        synthetic.generate(signal_corr=1.5)


def test_oracle_profits_from_the_plant_and_not_without_it():
    planted = synthetic.generate(n_pairs=4, n_bars=6_000, signal_corr=0.1, seed=5)
    train, test = planted.slice_bars(0, 4_000), planted.slice_bars(4_000, 6_000)
    threshold, growth = synthetic.tune_oracle(train)
    assert growth > 1.0
    held_out = synthetic.log_growth(test, synthetic.oracle_targets(test, threshold))
    assert held_out > 0.5
    targets = synthetic.oracle_targets(test, threshold)
    assert np.allclose(targets.sum(axis=1), 1.0) and targets.min() >= 0.0
    flat = synthetic.generate(n_pairs=4, n_bars=6_000, signal_corr=0.0, seed=5)
    flat_threshold, _ = synthetic.tune_oracle(flat.slice_bars(0, 4_000))
    flat_test = flat.slice_bars(4_000, 6_000)
    assert synthetic.log_growth(flat_test, synthetic.oracle_targets(flat_test, flat_threshold)) < held_out / 4


def test_rule_specialists():
    data = synthetic.generate(n_pairs=2, n_bars=600, seed=2)
    rsi = data.features[:, :, data.feature_names.index("rsi_14")]
    calls = specialists.compute_calls("rsi", data, {"lower": 40, "upper": 60})
    np.testing.assert_array_equal(calls == 1, rsi < 40)
    np.testing.assert_array_equal(calls == -1, rsi > 60)
    pctb = data.features[:, :, data.feature_names.index("bb_pctb_20")]
    calls = specialists.compute_calls("bollinger", data)
    np.testing.assert_array_equal(calls, (pctb < 0).astype(int) - (pctb > 1))
    calls = specialists.compute_calls("ma_trend", data, {"fast": 3, "slow": 10})
    t, i = 50, 1
    fast, slow = data.close[t - 2 : t + 1, i].mean(), data.close[t - 9 : t + 1, i].mean()
    assert calls[t, i] == np.sign(fast - slow) and np.all(calls[:9] == 0)
    s = synthetic.signal_of(data)
    calls = specialists.compute_calls("signal", data, {"threshold": 0.2})
    np.testing.assert_array_equal(calls, (s > 0.2).astype(int) - (s < -0.2))
    with pytest.raises(ConfigError, match="fast"):
        specialists.compute_calls("ma_trend", data, {"fast": 10, "slow": 5})


# ----------------------------------------------------------------------------------------------
# CSV folders, load(), splits
# ----------------------------------------------------------------------------------------------


def write_csv(path, src, pair, rows):
    """Candles of ``src``'s pair at the given row indices as a gzip CSV in the shared data's format."""
    lines = ["ts_ms,open,high,low,close,volume"]
    for k in rows:
        values = (getattr(src, f)[k, pair] for f in ("open", "high", "low", "close", "volume"))
        lines.append(f"{src.open_time_ms[k]}," + ",".join(repr(float(v)) for v in values))
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")


def test_csv_folder_with_gaps_and_late_listing(tmp_path):
    src = synthetic.generate(n_pairs=2, n_bars=300, seed=9)
    times = src.open_time_ms
    outage = set(range(150, 153))  # 3 missing hours in pair A
    write_csv(tmp_path / "AAA_USDT.csv.gz", src, 0, [k for k in range(300) if k not in outage])
    write_csv(tmp_path / "BBB_USDT.csv.gz", src, 1, range(40, 300))  # listed later

    data = market_data.from_csv_dir(tmp_path, ["AAA/USDT", "BBB/USDT"], "1h")
    assert data.feature_names == FEATURE_NAMES  # the columns of db.load_market
    # Pair B is warm from bar 40 + 33; pair A restarts its warm-up after the gap at 150..152.
    expected = [t for k, t in enumerate(times) if k >= 40 + WARM_BARS and not (150 <= k < 153 + WARM_BARS)]
    np.testing.assert_array_equal(data.open_time_ms, expected)
    ind = compute_indicators(
        src.open[40:, 1], src.high[40:, 1], src.low[40:, 1], src.close[40:, 1], src.volume[40:, 1]
    )
    rows = np.searchsorted(times[40:], data.open_time_ms)
    for f, name in enumerate(FEATURE_NAMES):
        np.testing.assert_allclose(data.features[:, 1, f], ind[name][rows], rtol=1e-12)

    part = market_data.load(
        {
            "kind": "csv",
            "path": str(tmp_path),
            "symbols": None,
            "timeframe": "1h",
            "start": int(times[200]),
            "end": int(times[250]),
        }
    )
    assert part.symbols == ["AAA/USDT", "BBB/USDT"] and part.n_bars == 50
    np.testing.assert_array_equal(part.features, data.slice_time(int(times[200]), int(times[250])).features)


def test_shared_csv_data(shared_1h):
    data = market_data.from_csv_dir(shared_1h, ["BTC/USDT", "ETH/USDT"], "1h", "2020-06-01", "2020-09-01")
    assert data.n_bars > 2000 and data.open_time_ms[0] >= market_data.to_ms("2020-06-01")
    assert not np.isnan(data.features).any() and data.open_time_ms[-1] < market_data.to_ms("2020-09-01")
    # SOL was listed in August 2020: aligned bars start once its indicators are warm.
    late = market_data.from_csv_dir(shared_1h, ["BTC/USDT", "SOL/USDT"], "1h", "2020-06-01", "2020-09-01")
    first_sol = int(market_data._read_candles_csv(shared_1h / "SOL_USDT.csv.gz")[0, 0])
    assert late.open_time_ms[0] == first_sol + WARM_BARS * HOUR_MS


def test_load_dispatch_and_errors():
    data = market_data.load({"kind": "synthetic", "n_pairs": 2, "n_bars": 100})
    assert data.n_pairs == 2 and market_data.load_market_data is market_data.load
    with pytest.raises(ConfigError, match="kind"):
        market_data.load({"kind": "parquet"})
    with pytest.raises(ConfigError, match="pth"):
        market_data.load({"kind": "csv", "pth": "x", "timeframe": "1h"})
    with pytest.raises(ConfigError, match="symbols"):
        market_data.load({"kind": "db", "timeframe": "1h"})


def test_split_by_dates():
    data = synthetic.generate(n_pairs=1, n_bars=24 * 30, start="2021-01-01")
    parts = market_data.split_by_dates(
        data,
        {
            "train": {"start": "2021-01-01", "end": "2021-01-20"},
            "validation": {"start": "2021-01-20", "end": "2021-01-25"},
            "test": {"start": "2021-01-25", "end": "2021-02-01"},
        },
    )
    assert [p.n_bars for p in parts.values()] == [19 * 24, 5 * 24, 6 * 24]
    with pytest.raises(ConfigError, match="overlap"):
        market_data.split_by_dates(
            data,
            {
                "a": {"start": "2021-01-01", "end": "2021-01-10"},
                "b": {"start": "2021-01-09", "end": "2021-01-12"},
            },
        )
    with pytest.raises(ConfigError, match="holds no bars"):
        market_data.split_by_dates(data, {"a": {"start": "2022-01-01", "end": "2022-01-10"}})
    with pytest.raises(ConfigError, match="not before"):
        market_data.split_by_dates(data, {"a": {"start": "2021-01-10", "end": "2021-01-01"}})


# ----------------------------------------------------------------------------------------------
# load() is strict: what would give 0 bars or a wrong market is refused, naming the fix (#15 item 9)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def hourly_csv(tmp_path):
    src = synthetic.generate(n_pairs=2, n_bars=200, seed=9)
    write_csv(tmp_path / "AAA_USDT.csv.gz", src, 0, range(200))
    write_csv(tmp_path / "BBB_USDT.csv.gz", src, 1, range(200))
    return {"kind": "csv", "path": str(tmp_path), "symbols": ["AAA/USDT", "BBB/USDT"], "timeframe": "1h"}


def test_load_refuses_a_timeframe_the_files_do_not_hold(hourly_csv):
    assert market_data.load(hourly_csv).n_bars > 0
    with pytest.raises(ConfigError, match=r"AAA_USDT.csv.gz holds candles 60 minutes apart.*\(240 min"):
        market_data.load({**hourly_csv, "timeframe": "4h"})
    with pytest.raises(ConfigError, match="unsupported timeframe"):
        market_data.load({**hourly_csv, "timeframe": "90m"})


def test_load_refuses_start_after_end(hourly_csv):
    with pytest.raises(ConfigError, match="start 2020-01-05 must be before end 2020-01-02"):
        market_data.load({**hourly_csv, "start": "2020-01-05", "end": "2020-01-02"})
    with pytest.raises(ConfigError, match="db source: start 2021-02-01 must be before end 2021-01-01"):
        market_data.load({"kind": "db", "symbols": ["BTC/USDT"], "timeframe": "1h",
                          "start": "2021-02-01", "end": "2021-01-01"})  # fmt: skip


def test_load_refuses_repeated_symbols(hourly_csv):
    with pytest.raises(ConfigError, match=r"names \['AAA/USDT'\] more than once"):
        market_data.load({**hourly_csv, "symbols": ["AAA/USDT", "BBB/USDT", "AAA/USDT"]})
    with pytest.raises(ConfigError, match=r"names \['BTC/USDT'\] more than once"):
        market_data.load({"kind": "db", "symbols": ["BTC/USDT", "BTC/USDT"], "timeframe": "1h"})
    with pytest.raises(ConfigError, match="more than once"):
        market_data.load({"kind": "synthetic", "n_pairs": 2, "symbols": ["X/USDT", "X/USDT"]})


def test_load_refuses_a_range_without_bars(hourly_csv):
    with pytest.raises(ConfigError, match=r"holds no bar where every pair has a warm candle in \[2030-01-01"):
        market_data.load({**hourly_csv, "start": "2030-01-01", "end": "2030-02-01"})


def test_load_names_a_missing_folder_or_file(hourly_csv, tmp_path):
    with pytest.raises(ConfigError, match="is not a directory of CSV candles"):
        market_data.load({**hourly_csv, "path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match=r"no candle file for CCC/USDT .*CCC_USDT.csv"):
        market_data.load({**hourly_csv, "symbols": ["AAA/USDT", "CCC/USDT"]})
