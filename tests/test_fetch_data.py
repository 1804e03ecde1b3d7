"""fetch_data / data_fetch_job against the fake exchange (real ccxt) and the real PostgreSQL."""

from __future__ import annotations

import _data_support
import ccxt
import numpy as np
import pandas as pd
import pytest
from _data_support import JAN1_2021, JUN1_2021, H, file_candles, stored

import data_fetch_job
import db
from binance import make_exchange
from binance.fake_exchange import FakeExchange, as_served
from fetch_data import (
    FetchError,
    InvalidCandleError,
    RetryPolicy,
    fetch_range,
    parse_time_ms,
    validate_candles,
)
from settings import format_ms

FAST = RetryPolicy(max_retries=12, base_delay_s=0.05, max_delay_s=0.5)  # 9 faults may hit one page
PAIRS = ["BTC/USDT", "ETH/USDT"]
fresh_db = _data_support.fresh_db  # a throwaway database per test (fixture)


@pytest.fixture(scope="module")
def fake(shared_1h):
    with FakeExchange(shared_1h, symbols=PAIRS) as server:
        yield server


@pytest.fixture
def client(fake):
    fake.clear_faults()
    fake.set_now(None)
    yield make_exchange(base_url=fake.url, timeout_ms=1000)
    fake.clear_faults()


def assert_matches_files(engine, folder, label, start=JAN1_2021, end=JUN1_2021):
    for symbol in PAIRS:
        got = stored(engine, symbol, exchange=label)
        expected = file_candles(folder, symbol, start, end)
        assert len(got) > 3000
        pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_two_pairs_stored_exactly_and_rerun_inserts_nothing(engine, client, shared_1h):
    results = data_fetch_job.run_job(
        PAIRS, ["1h"], JAN1_2021, JUN1_2021, engine, client, exchange="t_exact", show_progress=False
    )
    assert [r.status for r in results] == ["ok", "ok"]
    assert_matches_files(engine, shared_1h, "t_exact")
    assert [r.rows_inserted for r in results] == [
        len(file_candles(shared_1h, s, JAN1_2021, JUN1_2021)) for s in PAIRS
    ]
    again = data_fetch_job.run_job(
        PAIRS, ["1h"], JAN1_2021, JUN1_2021, engine, client, exchange="t_exact", show_progress=False
    )
    assert [r.rows_inserted for r in again] == [0, 0]
    assert [r.rows_fetched for r in again] == [r.rows_fetched for r in results]
    runs = db.fetch_runs(engine).query("exchange == 't_exact'")
    assert len(runs) == 4 and set(runs.status) == {"ok"}
    assert runs.rows_inserted.tolist()[2:] == [0, 0]


def test_transient_faults_still_store_every_candle_once(engine, client, fake, shared_1h):
    fake.inject("429", count=2, every=3, retry_after_s=1)
    fake.inject("500", count=2, every=2)
    fake.inject("503")
    fake.inject("slow", count=2, delay_s=1.5)  # beyond the client's 1 s timeout
    fake.inject("drop")
    fake.inject("malformed")
    fake.inject("418", path="/api/v3/exchangeInfo", retry_after_s=1)
    results = data_fetch_job.run_job(
        PAIRS,
        ["1h"],
        JAN1_2021,
        JUN1_2021,
        engine,
        client,
        exchange="t_faults",
        policy=FAST,
        batch_rows=1000,
        show_progress=False,
    )
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert sum(r.retries for r in results) >= 10
    assert fake.faults == []  # every injected fault was served
    assert_matches_files(engine, shared_1h, "t_faults")


def test_permanent_error_on_one_pair_fails_only_that_pair(fresh_db, fake, shared_1h, monkeypatch, capsys):
    fake.clear_faults()
    fake.inject("invalid_symbol", count=-1, symbol="ETH/USDT")
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("BINANCE_BASE_URL", fake.url)
    try:
        code = data_fetch_job.main(
            [
                "--pairs",
                "ETH/USDT,BTC/USDT,DOGE/USDT",
                "--timeframes",
                "1h",
                "--since",
                "2021-01-01",
                "--until",
                "2021-02-01",
                "--no-progress",
            ]
        )
    finally:
        fake.clear_faults()
    out, err = capsys.readouterr()
    assert code == 1
    assert "FAILED: ETH/USDT 1h, DOGE/USDT 1h" in err
    assert "Invalid symbol" in out and "unknown symbol DOGE/USDT" in out
    engine = db.get_engine(fresh_db)
    pd.testing.assert_frame_equal(
        stored(engine, "BTC/USDT"),
        file_candles(shared_1h, "BTC/USDT", JAN1_2021, parse_time_ms("2021-02-01")),
    )
    runs = db.fetch_runs(engine)
    assert runs.set_index("symbol").status.to_dict() == {
        "ETH/USDT": "failed",
        "BTC/USDT": "ok",
        "DOGE/USDT": "failed",
    }


def test_open_candle_is_never_stored_and_resume_picks_it_up_once_closed(engine, client, fake):
    fake.set_now(JAN1_2021 + 5 * H + 30 * 60_000)  # 05:30: the 05:00 candle is still open
    result = fetch_range(client, engine, "BTC/USDT", "1h", JAN1_2021, JAN1_2021 + 10 * H, exchange="t_open")
    assert result.until_ms == JAN1_2021 + 5 * H
    assert db.newest_open_time_ms(engine, "t_open", "BTC/USDT", "1h") == JAN1_2021 + 4 * H
    assert result.rows_inserted == 5
    fake.set_now(JAN1_2021 + 6 * H)  # 05:00 closes exactly now
    resumed = fetch_range(client, engine, "BTC/USDT", "1h", exchange="t_open")  # no since: resume
    assert (resumed.since_ms, resumed.rows_inserted) == (JAN1_2021 + 5 * H, 1)
    assert stored(engine, "BTC/USDT", "t_open").open_time_ms.tolist() == [JAN1_2021 + i * H for i in range(6)]


def test_resume_from_newest_or_configured_default(engine, client):
    first = data_fetch_job.run_job(
        ["ETH/USDT"],
        ["1h"],
        None,
        JAN1_2021 + 48 * H,
        engine,
        client,
        exchange="t_resume",
        default_since_ms=JAN1_2021,
        show_progress=False,
    )[0]
    assert (first.since_ms, first.rows_inserted) == (JAN1_2021, 48)
    second = data_fetch_job.run_job(
        ["ETH/USDT"],
        ["1h"],
        None,
        JAN1_2021 + 72 * H,
        engine,
        client,
        exchange="t_resume",
        show_progress=False,
    )[0]
    assert (second.since_ms, second.rows_fetched, second.rows_inserted) == (JAN1_2021 + 48 * H, 24, 24)


def test_btc_2018_gap_is_reported_not_filled(engine, client):
    since, until = parse_time_ms("2018-02-01"), parse_time_ms("2018-02-15")
    result = fetch_range(client, engine, "BTC/USDT", "1h", since, until, exchange="t_gap")
    gap_start = parse_time_ms("2018-02-08T01:00")
    big = [g for g in result.gaps if g.missing_bars > 10]
    # the candles of 2018-02-08 00:00 and 2018-02-09 10:00 are 34 hours apart: 33 candles missing
    assert big == [db.Gap(gap_start, gap_start + 33 * H, 33)]
    assert big == [g for g in db.gap_report(engine, "t_gap", "BTC/USDT", "1h") if g.missing_bars > 10]
    assert db.read_candles(engine, "t_gap", "BTC/USDT", "1h", gap_start, gap_start + 33 * H).empty
    run = db.fetch_runs(engine).query("exchange == 't_gap'").iloc[0]
    assert run.gaps == len(result.gaps)


def test_permanent_errors_fail_fast_with_clear_messages(engine, client):
    cases = [
        (dict(symbol="BTC/USDT", timeframe="7h"), "unsupported timeframe"),
        (dict(symbol="BTC/USDT", timeframe="1m"), "Invalid interval"),  # the exchange refuses it
        (dict(symbol="FOO/USDT", timeframe="1h"), "unknown symbol FOO/USDT"),
        (dict(symbol="BTCUSDT", timeframe="1h"), "bad symbol"),
        (dict(symbol="BTC/USDT", timeframe="1h", since_ms=JUN1_2021, until_ms=JAN1_2021), "bad dates"),
        (dict(symbol="BTC/USDT", timeframe="1h", since_ms=parse_time_ms("2030-01-01")), "bad dates"),
    ]
    for kwargs, message in cases:
        with pytest.raises(FetchError, match=message) as info:
            fetch_range(client, engine, exchange="t_perm", policy=FAST, sleep=lambda s: None, **kwargs)
        assert info.value.permanent and info.value.result.status == "failed"
    with pytest.raises(FetchError, match="bad date"):
        parse_time_ms("2021-13-01")
    assert set(db.fetch_runs(engine).query("exchange == 't_perm'").status) == {"failed"}


def test_backoff_is_exponential_and_honours_retry_after(engine, client, fake):
    waits: list[float] = []
    fake.inject("500", count=3)
    fake.inject("429", retry_after_s=7)
    policy = RetryPolicy(max_retries=5, base_delay_s=0.5, max_delay_s=30)
    fetch_range(
        client,
        engine,
        "ETH/USDT",
        "1h",
        JAN1_2021,
        JAN1_2021 + 2 * H,
        exchange="t_backoff",
        policy=policy,
        sleep=waits.append,
    )
    assert waits == [0.5, 1.0, 2.0, 7.0]
    fake.inject("418", count=-1, retry_after_s=3600)  # a long ban: give up now, retry later
    with pytest.raises(FetchError, match="wait 3600 s") as info:
        fetch_range(
            client,
            engine,
            "ETH/USDT",
            "1h",
            JAN1_2021,
            JAN1_2021 + 2 * H,
            exchange="t_backoff",
            policy=policy,
            sleep=waits.append,
        )
    assert not info.value.permanent


def test_validate_candles():
    good = [[JAN1_2021, 10.0, 12.0, 9.0, 11.0, 5.0], [JAN1_2021 + H, 11.0, 11.0, 11.0, 11.0, 0.0]]
    ts, values = validate_candles(good, "BTC/USDT", "1h")
    assert ts.tolist() == [JAN1_2021, JAN1_2021 + H] and values.shape == (2, 5)
    broken = {
        "off the 1h grid": [[JAN1_2021 + 1, 10.0, 12.0, 9.0, 11.0, 5.0]],
        "not strictly increasing": [good[1], good[0]],
        "non-positive price": [[JAN1_2021, 0.0, 12.0, 9.0, 11.0, 5.0]],
        "negative volume": [[JAN1_2021, 10.0, 12.0, 9.0, 11.0, -1.0]],
        "high below": [[JAN1_2021, 10.0, 10.5, 9.0, 11.0, 5.0]],
        "low above": [[JAN1_2021, 10.0, 12.0, 10.5, 11.0, 5.0]],
    }
    for problem, rows in broken.items():
        with pytest.raises(InvalidCandleError, match=problem):
            validate_candles(rows, "BTC/USDT", "1h")
    with pytest.raises(ccxt.BadResponse):
        validate_candles([[JAN1_2021, None, 1.0, 1.0, 1.0, 1.0]], "BTC/USDT", "1h")
    assert np.all(validate_candles([], "BTC/USDT", "1h")[0] == [])


def test_fetch_data_cli(fresh_db, fake, monkeypatch, capsys):
    import fetch_data

    fake.clear_faults()
    fake.set_now(None)
    monkeypatch.setenv("DATABASE_URL", fresh_db)
    monkeypatch.setenv("BINANCE_BASE_URL", fake.url)
    args = ["BTC/USDT", "--timeframe", "1h", "--since", "2021-01-01", "--until", "2021-01-02"]
    assert fetch_data.main(args) == 0
    assert "24 inserted of 24 fetched" in capsys.readouterr().out
    assert fetch_data.main(["BTC/USDT", "--timeframe", "7h"]) == 2  # refused before any work
    assert "error: unsupported timeframe '7h'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Hardening (issue 15): damaged pages, real gaps, the circuit breaker, a lost database connection.
# These run on the fake exchange's seeded synthetic market, so they need no ../shared data.
# --------------------------------------------------------------------------------------------------

FEB1_2021 = parse_time_ms("2021-02-01")
SPAN_MS = 4000 * H  # four pages of 1000 candles


@pytest.fixture(scope="module")
def synthetic():
    with FakeExchange() as server:  # BTC, ETH, BNB, ADA against USDT, 2020-01-01 onwards
        yield server


@pytest.fixture
def synthetic_client(synthetic):
    synthetic.clear_faults()
    yield make_exchange(base_url=synthetic.url, timeout_ms=2000)
    synthetic.clear_faults()


def assert_source_rows(engine, fake, label, symbol, start_ms, end_ms):
    """Stored candles equal the fake exchange's source candles in [start_ms, end_ms), at the 8
    decimals the exchange serves."""
    series = fake.source.series(symbol)
    keep = (series.ts_ms >= start_ms) & (series.ts_ms < end_ms)
    got = stored(engine, symbol, exchange=label)
    np.testing.assert_array_equal(got.open_time_ms.to_numpy(), series.ts_ms[keep])
    values = got[["open", "high", "low", "close", "volume"]].to_numpy()
    np.testing.assert_array_equal(values, as_served(series.ohlcv[keep]))


def test_empty_page_mid_range_is_asked_again_and_the_range_completes(engine, synthetic, synthetic_client):
    synthetic.inject("empty", count=2, after=2)  # pages 3 and 4 first come back [] (maintenance)
    result = fetch_range(
        synthetic_client, engine, "BTC/USDT", "1h", JAN1_2021, JAN1_2021 + SPAN_MS, exchange="t_empty1",
        policy=FAST,
    )
    assert (result.status, result.rows_fetched, result.gaps) == ("ok", 4000, [])
    assert result.retries >= 2 and synthetic.faults == []
    assert_source_rows(engine, synthetic, "t_empty1", "BTC/USDT", JAN1_2021, JAN1_2021 + SPAN_MS)


def test_persistent_empty_pages_fail_the_pair_naming_the_missing_span(engine, synthetic, synthetic_client):
    """Defect 1: an empty page before `until` ended the range and reported the pair ok."""
    synthetic.inject("empty", count=-1, after=2)  # after two good pages the exchange answers [] only
    results = data_fetch_job.run_job(
        ["BTC/USDT"], ["1h"], JAN1_2021, JAN1_2021 + SPAN_MS, engine, synthetic_client,
        exchange="t_empty2", policy=FAST, show_progress=False,
    )
    result = results[0]
    assert result.status == "failed" and not result.permanent
    missing_from = JAN1_2021 + 2000 * H
    span = f"missing 2000 candle(s) from {format_ms(missing_from)} to {format_ms(JAN1_2021 + SPAN_MS)}"
    assert span in result.error
    assert data_fetch_job.exit_code(results) == 1
    run = db.fetch_runs(engine).query("exchange == 't_empty2'").iloc[0]
    assert run.status == "failed" and "missing 2000 candle(s)" in run.error
    # the candles fetched before the empty pages are kept, and nothing beyond them is invented
    assert_source_rows(engine, synthetic, "t_empty2", "BTC/USDT", JAN1_2021, missing_from)


def test_truncated_and_holed_pages_still_store_every_candle(engine, synthetic, synthetic_client):
    synthetic.inject("truncated", count=2, every=2)
    synthetic.inject("missing_candle", count=1, after=1)
    result = fetch_range(
        synthetic_client, engine, "ETH/USDT", "1h", JAN1_2021, JAN1_2021 + SPAN_MS, exchange="t_damaged",
        policy=FAST,
    )
    assert (result.status, result.gaps) == ("ok", [])  # a dropped candle is not an exchange gap
    assert synthetic.faults == []
    assert_source_rows(engine, synthetic, "t_damaged", "ETH/USDT", JAN1_2021, JAN1_2021 + SPAN_MS)


def test_real_exchange_gaps_are_reported_never_filled(engine, synthetic, tmp_path):
    """A gap the exchange really has (same answer when asked again) stays a gap, also at the range's
    end, and a pair listed after the range start is not a gap."""
    series = synthetic.source.series("BNB/USDT")
    ts, ohlcv = series.ts_ms, series.ohlcv
    start = int(np.searchsorted(ts, JAN1_2021))
    hole = slice(start + 500, start + 530)  # 30 candles missing mid-range
    tail = slice(start + 1980, start + 2100)  # missing across the end of the requested range
    keep = np.ones(ts.size, bool)
    keep[hole] = keep[tail] = False
    frame = pd.DataFrame(ohlcv[keep], columns=["open", "high", "low", "close", "volume"])
    frame.insert(0, "ts_ms", ts[keep])
    frame.to_csv(tmp_path / "BNB_USDT.csv", index=False)
    with FakeExchange(tmp_path) as fake:
        client = make_exchange(base_url=fake.url)
        result = fetch_range(
            client, engine, "BNB/USDT", "1h", JAN1_2021, JAN1_2021 + 2000 * H, exchange="t_realgap",
            policy=FAST,
        )
    assert result.status == "ok"
    assert result.gaps == [
        db.Gap(int(ts[hole.start]), int(ts[hole.stop]), 30),
        db.Gap(int(ts[tail.start]), int(ts[tail.stop]), 120),  # runs past the range end
    ]
    got = stored(engine, "BNB/USDT", exchange="t_realgap")
    expected = ts[keep][(ts[keep] >= JAN1_2021) & (ts[keep] < JAN1_2021 + 2000 * H)]
    np.testing.assert_array_equal(got.open_time_ms.to_numpy(), expected)  # nothing invented

    with FakeExchange(tmp_path) as fake:  # a range wholly before the first candle: ok, empty, no gap
        client = make_exchange(base_url=fake.url)
        early = fetch_range(client, engine, "BNB/USDT", "1h", parse_time_ms("2019-06-01"),
                            parse_time_ms("2019-07-01"), exchange="t_unlisted", policy=FAST)
    assert (early.status, early.rows_fetched, early.gaps) == ("ok", 0, [])


def test_a_long_ban_stops_every_pair_without_another_request(engine, synthetic, synthetic_client):
    """Defect 5: after a 418 on one pair the job kept calling the exchange for the others."""
    synthetic.inject("418", count=-1, retry_after_s=3600)
    before = dict(synthetic.stats)
    results = data_fetch_job.run_job(
        ["BTC/USDT", "ETH/USDT", "BNB/USDT", "ADA/USDT"], ["1h"], JAN1_2021, FEB1_2021, engine,
        synthetic_client, exchange="t_ban", policy=FAST, show_progress=False,
    )
    klines = synthetic.stats.get("/api/v3/klines", 0) - before.get("/api/v3/klines", 0)
    assert klines == 1  # the banned request only
    assert [r.status for r in results] == ["failed", "skipped", "skipped", "skipped"]
    assert all(r.outage for r in results) and data_fetch_job.exit_code(results) == 3
    assert "bans this IP (418)" in results[0].error and synthetic.url in results[0].error
    assert all(r.error == f"not attempted: {results[0].error}" for r in results[1:])


def test_a_429_storm_opens_the_circuit_after_one_pairs_retries(engine, synthetic, synthetic_client):
    synthetic.inject("429", count=-1, retry_after_s=0)
    results = data_fetch_job.run_job(
        ["BTC/USDT", "ETH/USDT"], ["1h"], JAN1_2021, FEB1_2021, engine, synthetic_client,
        exchange="t_storm", policy=RetryPolicy(max_retries=2, base_delay_s=0.01), show_progress=False,
    )
    assert [r.status for r in results] == ["failed", "skipped"]
    assert "keeps rate-limiting this IP" in results[0].error and results[0].retries == 2


def test_a_lost_database_connection_records_the_root_cause(engine, synthetic, synthetic_client):
    """Defect 5: a backend killed mid-write was recorded as 'connection already closed'."""
    from sqlalchemy import text

    with engine.begin() as conn:  # the server ends the session of whoever writes this label's candles
        conn.execute(text(
            "CREATE OR REPLACE FUNCTION market.t_kill_writer() RETURNS trigger AS $$"
            " BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); RETURN NEW; END $$ LANGUAGE plpgsql"
        ))
        conn.execute(text(
            "CREATE TRIGGER t_kill_writer BEFORE INSERT ON market.ohlcv FOR EACH ROW"
            " WHEN (NEW.exchange = 't_lost' AND NEW.symbol = 'BTC/USDT')"
            " EXECUTE FUNCTION market.t_kill_writer()"
        ))
    try:
        results = data_fetch_job.run_job(
            ["BTC/USDT", "ETH/USDT"], ["1h"], JAN1_2021, JAN1_2021 + 48 * H, engine, synthetic_client,
            exchange="t_lost", policy=FAST, show_progress=False,
        )
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER t_kill_writer ON market.ohlcv"))
            conn.execute(text("DROP FUNCTION market.t_kill_writer()"))
    runs = db.fetch_runs(engine).query("exchange == 't_lost'").set_index("symbol")
    assert runs.status.to_dict() == {"BTC/USDT": "failed", "ETH/USDT": "ok"}  # the server stayed up
    assert runs.error["BTC/USDT"].startswith("database connection lost: OperationalError: server closed")
    assert "already closed" not in runs.error["BTC/USDT"]
    assert [r.status for r in results] == ["failed", "ok"] and not results[0].outage
    assert len(stored(engine, "ETH/USDT", exchange="t_lost")) == 48


def test_fetch_data_cli_exit_codes_for_outages(fresh_db, monkeypatch, capsys):
    import socket

    import fetch_data

    with socket.socket() as sock:  # bound, never listening: refused
        sock.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{sock.getsockname()[1]}"
        monkeypatch.setenv("DATABASE_URL", fresh_db)
        monkeypatch.setenv("BINANCE_BASE_URL", f"http://{refused}")
        assert fetch_data.main(["BTC/USDT", "--since", "2021-01-01", "--until", "2021-01-02"]) == 3
        assert f"cannot reach the exchange at http://{refused}" in capsys.readouterr().err
        monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg2://postgres@{refused}/market")
        assert fetch_data.main(["BTC/USDT", "--since", "2021-01-01", "--until", "2021-01-02"]) == 3
        expected = f"cannot reach the database postgresql+psycopg2://postgres@{refused}/market"
        assert expected in capsys.readouterr().err
        assert fetch_data.main(["BTC/USDT", "--since", "1609459200"]) == 2  # refused before either
        assert "looks like epoch SECONDS" in capsys.readouterr().err
