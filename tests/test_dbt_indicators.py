"""dbt indicators (features.indicators) against TA-Lib, the numpy twin, batches vs full refresh, gap rule.

Real candles: BTC/USDT and ETH/USDT 1h from ../shared/data, 2018-01-01 .. 2019-03-01 (14 months,
including BTC's 34-hour outage of 2018-02-08). They are stored under their own exchange name so
other tests' candles in the session database never mix in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from sqlalchemy import text

import db
import indicators
from dbt_runner import DbtError, dbt_env, run_dbt

EXCHANGE = "dbt_test"
SYMBOLS = ["BTC/USDT", "ETH/USDT"]
START_MS = 1514764800000  # 2018-01-01
END_MS = 1551398400000  # 2019-03-01
HOUR_MS = 3_600_000
COMPARED = ["close", *indicators.FEATURE_NAMES[1:], "bar_index", "warm",
            "rsi_avg_gain_14", "rsi_avg_loss_14", "ema_12", "ema_26"]
# What the README claims, per feature group (measured on these candles: see each test).
RECURSIONS = ["rsi_14", "macd", "macd_signal", "macd_hist", "atr_14"]  # EMA / Wilder recursions
ROLLING_LEVELS = ["bb_middle_20", "bb_upper_20", "bb_lower_20", "volatility_24"]  # rolling statistics
ROLLING_RATIOS = ["bb_pctb_20", "bb_width_20", "volume_z_24"]  # ratios of them, order 1, often near 0


def _candles(shared_1h, symbol: str) -> pd.DataFrame:
    frame = pd.read_csv(shared_1h / f"{symbol.replace('/', '_')}.csv.gz")
    return frame[(frame.ts_ms >= START_MS) & (frame.ts_ms < END_MS)].reset_index(drop=True)


def _table(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM features.indicators WHERE exchange = :e ORDER BY symbol, open_time_ms"),
            {"e": EXCHANGE},
        )
        return pd.DataFrame(result.all(), columns=list(result.keys()))


@pytest.fixture(scope="module")
def candles(shared_1h) -> dict[str, pd.DataFrame]:
    return {symbol: _candles(shared_1h, symbol) for symbol in SYMBOLS}


@pytest.fixture(scope="module")
def batched_and_full(engine, candles):
    """The table after loading in 3 batches (the last one backfills a hole, ETH starts in the
    second) with a dbt run after each, and after a full refresh of the same candles."""
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM market.ohlcv WHERE exchange = :e"), {"e": EXCHANGE})
    n = min(len(frame) for frame in candles.values())
    hole = slice(int(n * 0.3), int(n * 0.3) + 50)  # withheld in batch 1, backfilled by batch 3
    cuts = [0, int(n * 0.5), int(n * 0.8), n]
    parts = {
        symbol: [frame.iloc[: cuts[1]].drop(frame.index[hole]), frame.iloc[cuts[1] : cuts[2]],
                 pd.concat([frame.iloc[hole], frame.iloc[cuts[2] :]])]
        for symbol, frame in candles.items()
    }
    # ETH arrives late (its first run computes the whole series, no anchor yet)
    eth = parts["ETH/USDT"]
    parts["ETH/USDT"] = [eth[0].iloc[:0], pd.concat(eth[:2]), eth[2]]
    for batch in range(3):
        for symbol in SYMBOLS:
            db.write_candles(engine, EXCHANGE, symbol, "1h", parts[symbol][batch])
        run_dbt(["run"], quiet=True)
    batched = _table(engine)
    run_dbt(["build", "--full-refresh"], quiet=True)
    return batched, _table(engine)


def test_batches_equal_full_refresh(batched_and_full, candles):
    batched, full = batched_and_full
    assert len(full) == sum(len(frame) for frame in candles.values())
    assert list(batched.columns) == list(full.columns)
    pd.testing.assert_frame_equal(batched, full, check_exact=True)


def _segments(frame: pd.DataFrame):
    starts = np.flatnonzero(frame["bar_index"].to_numpy() == 0)
    for start, end in zip(starts, [*starts[1:], len(frame)], strict=True):
        yield frame.iloc[start:end]


def test_indicators_equal_talib(batched_and_full):
    _, full = batched_and_full
    compared = 0
    for symbol in SYMBOLS:
        rows = full[full.symbol == symbol]
        for segment in _segments(rows):
            if len(segment) <= indicators.WARM_BARS:
                continue
            c, h, lo = (segment[name].to_numpy(float) for name in ("close", "high", "low"))
            upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
            macd, signal, hist = talib.MACD(c, 12, 26, 9)
            expected = {
                "rsi_14": talib.RSI(c, 14), "atr_14": talib.ATR(h, lo, c, 14),
                "macd": macd, "macd_signal": signal, "macd_hist": hist,
                "bb_upper_20": upper, "bb_middle_20": middle, "bb_lower_20": lower,
                "bb_pctb_20": (c - lower) / (upper - lower), "bb_width_20": (upper - lower) / middle,
            }
            warm = segment["warm"].to_numpy(bool)
            # TA-Lib's own first outputs: where our warm-up ends, theirs has too
            assert not np.isnan(macd[warm]).any() and np.isnan(macd[: indicators.WARM_BARS]).all()
            for name, reference in expected.items():
                ours = segment[name].to_numpy(float)[warm]
                # Levels: worst 5.1e-13 relative (macd_signal). %b and bandwidth are ratios that
                # cross zero, where relative errors mean nothing: absolute for them.
                atol = 1e-10 if name in ROLLING_RATIOS else 0.0
                np.testing.assert_allclose(ours, reference[warm], rtol=1e-12, atol=atol, err_msg=name)
            compared += int(warm.sum())
    assert compared > 2 * 9000  # over a year of warm hourly rows per pair


def test_numpy_twin_equals_dbt_and_non_talib_columns(batched_and_full):
    _, full = batched_and_full
    for symbol in SYMBOLS:
        rows = full[full.symbol == symbol]
        ours = indicators.compute_indicators(
            *(rows[name].to_numpy(float) for name in ("open", "high", "low", "close", "volume")),
            open_time_ms=rows["open_time_ms"].to_numpy(), timeframe_ms=HOUR_MS,
        )
        np.testing.assert_array_equal(ours["bar_index"], rows["bar_index"].to_numpy())
        np.testing.assert_array_equal(ours["warm"], rows["warm"].to_numpy())
        assert set(indicators.FEATURE_NAMES) == {"close", "log_return", *RECURSIONS, *ROLLING_LEVELS,
                                                 *ROLLING_RATIOS}  # fmt: skip
        for name in indicators.FEATURE_NAMES:
            table = rows[name].to_numpy(float)
            np.testing.assert_array_equal(np.isnan(ours[name]), np.isnan(table), err_msg=name)
            if name in ROLLING_LEVELS:  # measured: 9.7e-16 relative at worst
                np.testing.assert_allclose(ours[name], table, rtol=2e-15, atol=0.0, err_msg=name)
            elif name in ROLLING_RATIOS:  # measured: 9.2e-14 absolute at worst (%b)
                np.testing.assert_allclose(ours[name], table, rtol=0.0, atol=2e-13, err_msg=name)
            elif name == "log_return":  # numpy's own vectorized log (AVX-512 CPUs) and the C library's
                # log that PostgreSQL calls may differ in the last bit: measured 1 ulp in 4% of the bars
                np.testing.assert_array_max_ulp(ours[name][1:], table[1:], maxulp=1)
            else:  # the recursions and the close: bit for bit
                np.testing.assert_array_equal(ours[name], table, err_msg=name)
        # the non-TA-Lib columns against pandas, per segment
        for segment in _segments(rows):
            log_return = np.log(segment["close"] / segment["close"].shift(1))
            volatility = log_return.rolling(24).std()
            volume = segment["volume"]
            z_score = (volume - volume.rolling(24).mean()) / volume.rolling(24).std()
            warm = segment["warm"].to_numpy(bool)
            np.testing.assert_allclose(segment["log_return"][warm], log_return[warm], rtol=1e-12)
            np.testing.assert_allclose(segment["volatility_24"][warm], volatility[warm], rtol=1e-9)
            np.testing.assert_allclose(segment["volume_z_24"][warm], z_score[warm], rtol=1e-6, atol=1e-9)


def test_gap_rule_restarts_indicators(batched_and_full, candles):
    _, full = batched_and_full
    btc = full[full.symbol == "BTC/USDT"].reset_index(drop=True)
    times = btc["open_time_ms"].to_numpy()
    after_gap = np.flatnonzero(np.diff(times) != HOUR_MS) + 1
    assert len(after_gap) >= 1  # the 2018-02-08 outage lies in the range
    for start in after_gap:
        assert btc.loc[start, "bar_index"] == 0 and pd.isna(btc.loc[start, "log_return"])
        stop = min(start + indicators.WARM_BARS, len(btc))
        assert not btc.loc[start : stop - 1, "warm"].any()
        # values after the gap are those of the segment computed alone, as if history began there
        end = start + int(np.argmax(btc["bar_index"].to_numpy()[start + 1 :] == 0)) + 1
        if end == start + 1:
            end = len(btc)
        alone = indicators.compute_indicators(
            *(btc[name].to_numpy(float)[start:end] for name in ("open", "high", "low", "close", "volume"))
        )
        np.testing.assert_allclose(alone["rsi_14"], btc["rsi_14"].to_numpy(float)[start:end], rtol=1e-12)
        np.testing.assert_allclose(alone["macd"], btc["macd"].to_numpy(float)[start:end], rtol=1e-12)


def test_numpy_gap_rule_on_synthetic_series():
    rng = np.random.default_rng(3)
    n = 200
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    high, low, volume = close * 1.01, close * 0.99, rng.uniform(1, 2, n)
    times = np.arange(n, dtype=np.int64) * HOUR_MS
    times[120:] += 3 * HOUR_MS  # three missing bars before row 120
    out = indicators.compute_indicators(close, high, low, close, volume, times, HOUR_MS)
    assert out["bar_index"][119] == 119 and out["bar_index"][120] == 0
    assert out["warm"][119] and not out["warm"][120:153].any() and out["warm"][153]
    alone = indicators.compute_indicators(close[120:], high[120:], low[120:], close[120:], volume[120:])
    for name in indicators.FEATURE_NAMES:
        np.testing.assert_array_equal(out[name][120:], alone[name], err_msg=name)
    first = indicators.compute_indicators(close[:120], high[:120], low[:120], close[:120], volume[:120])
    np.testing.assert_array_equal(out["rsi_14"][:120], first["rsi_14"])


def test_flat_prices_give_defined_features():
    n = 60
    flat = np.full(n, 0.1234567)
    out = indicators.compute_indicators(flat, flat, flat, flat, np.full(n, 5.0))
    warm = out["warm"]
    assert (out["rsi_14"][warm] == 50).all() and (out["bb_pctb_20"][warm] == 0.5).all()
    assert (out["bb_width_20"][warm] == 0).all() and (out["volume_z_24"][warm] == 0).all()
    assert (out["volatility_24"][warm] == 0).all()


def test_load_market_aligns_warm_bars(batched_and_full, engine):
    _, full = batched_and_full
    market = db.load_market(SYMBOLS, "1h", exchange=EXCHANGE, engine=engine)
    assert market.feature_names == indicators.FEATURE_NAMES
    assert market.features.shape == (market.n_bars, 2, len(indicators.FEATURE_NAMES))
    assert not np.isnan(market.features).any()
    warm_times = [set(full[(full.symbol == s) & full.warm].open_time_ms) for s in SYMBOLS]
    assert set(market.open_time_ms) == warm_times[0] & warm_times[1]
    dropped = len(warm_times[0] | warm_times[1]) - market.n_bars  # warm for one pair only
    assert market.meta["dropped_bars"] == dropped
    assert market.n_bars < len(full) // 2  # gaps and warm-ups are left out, not filled
    eth = full[full.symbol == "ETH/USDT"].set_index("open_time_ms").loc[market.open_time_ms]
    np.testing.assert_array_equal(market.close[:, 1], eth["close"].to_numpy())
    np.testing.assert_array_equal(market.features[:, 1, 2], eth["rsi_14"].to_numpy())
    part = db.load_market(SYMBOLS, "1h", market.open_time_ms[10], market.open_time_ms[20],
                          exchange=EXCHANGE, engine=engine)
    np.testing.assert_array_equal(part.open_time_ms, market.open_time_ms[10:20])
    with pytest.raises(ValueError, match="no warm indicator rows"):
        db.load_market(["NOPE/USDT"], "1h", exchange=EXCHANGE, engine=engine)


def test_failed_dbt_test_raises_with_report(batched_and_full, engine):
    ghost = {"e": "ghost_exchange"}
    with engine.begin() as conn:  # a feature row without a candle
        conn.execute(text(
            "INSERT INTO features.indicators (exchange, symbol, timeframe, open_time_ms, close, warm,"
            " bar_index) VALUES (:e, 'X/USDT', '1h', 0, 1.0, false, 0)"), ghost)
    try:
        with pytest.raises(DbtError) as failure:
            run_dbt(["test", "--select", "every_feature_row_has_its_candle"], quiet=True)
        assert "every_feature_row_has_its_candle" in failure.value.report
        assert "1 failing rows" in failure.value.report or "FAIL 1" in failure.value.report
    finally:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM features.indicators WHERE exchange = :e"), ghost)


def test_dbt_env_from_socket_and_tcp_urls():
    socket = dbt_env("postgresql+psycopg2://postgres:@/mydb?host=/data/.pgdata")
    assert socket["DBT_PG_HOST"] == "/data/.pgdata" and socket["DBT_PG_DBNAME"] == "mydb"
    tcp = dbt_env("postgresql+psycopg2://me:p%40ss@db.example:6543/feat")
    assert (tcp["DBT_PG_HOST"], tcp["DBT_PG_PORT"], tcp["DBT_PG_USER"]) == ("db.example", "6543", "me")
    assert tcp["DBT_PG_PASSWORD"] == "p@ss" and tcp["DBT_PG_DBNAME"] == "feat"
