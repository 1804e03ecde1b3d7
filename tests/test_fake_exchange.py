"""The fake Binance: JSON shapes, klines semantics, aggregation, the exchange clock, faults, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from http.client import RemoteDisconnected

import numpy as np
import pandas as pd
import pytest

from binance import make_exchange
from binance.fake_exchange import FakeExchange
from fetch_data import validate_candles

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
H = 3_600_000
JAN1 = 1_609_459_200_000  # 2021-01-01 00:00 UTC


def get(url: str, timeout: float = 5.0) -> tuple[int, dict, object]:
    """(status, headers, parsed JSON or raw text) of a GET, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status, headers, body = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, dict(exc.headers), exc.read()
    try:
        return status, headers, json.loads(body)
    except ValueError:
        return status, headers, body.decode()


def post(url: str, payload: object, method: str = "POST") -> object:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def replay(shared_1h):
    with FakeExchange(shared_1h, symbols=["BTC/USDT", "ETH/USDT"]) as fake:
        yield fake


@pytest.fixture(scope="module")
def btc_file(shared_1h) -> pd.DataFrame:
    return pd.read_csv(shared_1h / "BTC_USDT.csv.gz")


def test_ping_time_and_exchange_info_shapes(replay):
    assert get(replay.url + "/api/v3/ping")[2] == {}
    assert get(replay.url + "/api/v3/time")[2] == {"serverTime": replay.now_ms}
    status, headers, info = get(replay.url + "/api/v3/exchangeInfo")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert {"timezone", "serverTime", "rateLimits", "exchangeFilters", "symbols"} <= set(info)
    btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
    assert (btc["baseAsset"], btc["quoteAsset"], btc["status"]) == ("BTC", "USDT", "TRADING")
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"} <= set(filters)
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"


def test_klines_shape_and_values_match_the_files(replay, btc_file):
    status, _, rows = get(f"{replay.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={JAN1}&limit=3")
    assert status == 200 and len(rows) == 3
    row = rows[0]
    assert len(row) == 12
    assert isinstance(row[0], int) and isinstance(row[6], int) and isinstance(row[8], int)
    assert all(isinstance(row[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))
    assert row[6] == row[0] + H - 1  # closeTime
    expected = btc_file[btc_file.ts_ms >= JAN1].head(3)
    assert [r[0] for r in rows] == expected.ts_ms.tolist()
    got = np.array([[float(x) for x in r[1:6]] for r in rows])
    np.testing.assert_array_equal(got, expected[["open", "high", "low", "close", "volume"]].to_numpy())


def test_klines_start_end_limit_semantics(replay, btc_file):
    url = f"{replay.url}/api/v3/klines?symbol=BTCUSDT&interval=1h"
    assert len(get(f"{url}&startTime={JAN1}")[2]) == 500  # default limit
    assert len(get(f"{url}&startTime={JAN1}&limit=5000")[2]) == 1000  # capped at 1000
    rows = get(f"{url}&startTime={JAN1}&endTime={JAN1 + 5 * H}")[2]
    assert [r[0] for r in rows] == [JAN1 + i * H for i in range(6)]  # endTime inclusive (open time)
    rows = get(f"{url}&startTime={JAN1 + 1}&endTime={JAN1 + 2 * H}")[2]
    assert [r[0] for r in rows] == [JAN1 + H, JAN1 + 2 * H]  # a candle opening before startTime is out
    rows = get(f"{url}&endTime={JAN1}&limit=2")[2]
    assert [r[0] for r in rows] == [JAN1 - H, JAN1]  # endTime only: the latest `limit` up to it
    latest = get(f"{url}&limit=2")[2]
    assert latest[-1][0] == int(btc_file.ts_ms.iloc[-1])  # no times: the newest candles
    # a real exchange gap: the 33 hours missing after 2018-02-08 00:00 are simply absent
    gap_start = 1_518_048_000_000
    rows = get(f"{url}&startTime={gap_start}&limit=2")[2]
    assert rows[1][0] - rows[0][0] == 34 * H


def test_binance_errors(replay):
    url = f"{replay.url}/api/v3/klines"
    assert get(f"{url}?symbol=NOPEUSDT&interval=1h")[:3:2] == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert get(f"{url}?symbol=BTCUSDT&interval=7h")[2]["code"] == -1120
    assert get(f"{url}?symbol=BTCUSDT&interval=1m")[2] == {"code": -1120, "msg": "Invalid interval."}  # finer
    assert get(f"{url}?symbol=BTCUSDT&interval=1h&startTime=10&endTime=5")[2]["code"] == -1023
    assert get(f"{url}?interval=1h")[2]["code"] == -1102
    assert get(f"{url}?symbol=BTCUSDT&interval=1h&limit=0")[2]["code"] == -1130


def test_aggregation_to_other_timeframes(replay, btc_file):
    frame = btc_file[(btc_file.ts_ms >= JAN1) & (btc_file.ts_ms < JAN1 + 10 * 86_400_000)].copy()
    frame.index = pd.to_datetime(frame.ts_ms, unit="ms")
    monday = pd.Timestamp("2021-01-04")  # Binance's weeks open on Monday 00:00 UTC
    for interval, rule, origin in (("4h", "4h", "epoch"), ("1d", "1D", "epoch"), ("1w", "7D", monday)):
        expected = (
            frame.resample(rule, label="left", closed="left", origin=origin)
            .agg({"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"})
            .dropna()
        )
        if interval == "1w":
            expected = expected[expected.index >= monday]  # the week before is only partly in the frame
        start = int(expected.index[0].value // 1_000_000)
        rows = get(
            f"{replay.url}/api/v3/klines?symbol=BTCUSDT&interval={interval}&startTime={start}"
            f"&limit={len(expected)}"
        )[2]
        assert [r[0] for r in rows] == [int(t.value // 1_000_000) for t in expected.index], interval
        got = np.array([[float(x) for x in r[1:6]] for r in rows])
        np.testing.assert_allclose(got, expected.to_numpy(), rtol=1e-12, err_msg=interval)


def test_now_controls_latest_and_open_candle(shared_1h):
    now = JAN1 + 5 * H + 30 * 60_000  # 05:30: the 05:00 candle is still open
    with FakeExchange(shared_1h, symbols=["BTC/USDT"], now_ms=now) as fake:
        assert get(fake.url + "/api/v3/time")[2]["serverTime"] == now
        rows = get(f"{fake.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=3")[2]
        assert [r[0] for r in rows] == [JAN1 + 3 * H, JAN1 + 4 * H, JAN1 + 5 * H]
        assert rows[-1][6] > now  # closeTime in the future: the open candle
        four_hour = get(f"{fake.url}/api/v3/klines?symbol=BTCUSDT&interval=4h&limit=1")[2][0]
        one_hour = get(f"{fake.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={JAN1 + 4 * H}")[2]
        assert four_hour[0] == JAN1 + 4 * H
        assert four_hour[4] == one_hour[-1][4]  # the open 4h candle's close is the latest 1h close
        post(fake.url + "/_control/now", {"now_ms": now + 10 * H})
        assert get(fake.url + "/api/v3/time")[2]["serverTime"] == now + 10 * H


def test_faults_via_control_endpoint(replay):
    klines = f"{replay.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={JAN1}&limit=2"
    post(
        replay.url + "/_control/faults",
        [
            {"kind": "429", "retry_after_s": 7},
            {"kind": "418"},
            {"kind": "503"},
            {"kind": "500"},
            {"kind": "malformed"},
        ],
    )
    status, headers, body = get(klines)
    assert (status, headers["Retry-After"], body["code"]) == (429, "7", -1003)
    status, headers, body = get(klines)
    assert status == 418 and headers["Retry-After"] == "1" and "banned" in body["msg"]
    assert get(klines)[0] == 503
    assert get(klines)[:3:2] == (
        500,
        {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
    )
    status, _, body = get(klines)
    assert status == 200 and isinstance(body, str)  # not JSON
    assert get(klines)[0] == 200  # faults are used up
    post(replay.url + "/_control/faults", {"kind": "drop"})
    with pytest.raises((RemoteDisconnected, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(klines, timeout=5).read()
    post(replay.url + "/_control/faults", {"kind": "slow", "delay_s": 1.0})
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(klines, timeout=0.3).read()
    # every-Nth and per-symbol matching, forever until cleared
    post(replay.url + "/_control/faults", {"kind": "invalid_symbol", "count": -1, "symbol": "ETH/USDT"})
    post(replay.url + "/_control/faults", {"kind": "500", "count": 2, "every": 2, "symbol": "BTCUSDT"})
    assert [get(klines)[0] for _ in range(4)] == [200, 500, 200, 500]
    eth = klines.replace("BTCUSDT", "ETHUSDT")
    assert get(eth)[2]["code"] == -1121 and get(eth)[2]["code"] == -1121
    stats = get(replay.url + "/_control/stats")[2]
    assert stats["requests"]["/api/v3/klines"] >= 12 and len(stats["faults"]) == 1
    post(replay.url + "/_control/faults", {}, method="DELETE")
    assert get(eth)[0] == 200


def test_ccxt_against_the_synthetic_market():
    with FakeExchange(seed=7, synthetic_bars=3000) as fake, FakeExchange(seed=7, synthetic_bars=3000) as twin:
        client = make_exchange(base_url=fake.url)
        client.load_markets()
        assert {"BTC/USDT", "ETH/USDT", "BNB/USDT", "ADA/USDT"} <= set(client.markets)
        rows = client.fetch_ohlcv("ETH/USDT", "1h", since=fake.source.start_ms, limit=1000)
        assert len(rows) == 1000
        validate_candles(rows, "ETH/USDT", "1h")  # well-formed OHLC on the hour grid
        same = make_exchange(base_url=twin.url).fetch_ohlcv(
            "ETH/USDT", "1h", since=fake.source.start_ms, limit=1000
        )
        assert rows == same  # seeded: reproducible
    with FakeExchange(seed=8, synthetic_bars=3000) as other:
        assert make_exchange(base_url=other.url).fetch_ohlcv("ETH/USDT", "1h", limit=5) != rows[-5:]


def test_cli_serves_a_folder(shared_1h):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "binance.fake_exchange",
            "--data-dir",
            str(shared_1h),
            "--port",
            "0",
            "--symbols",
            "BTC/USDT",
            "--fault",
            "503:1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        assert get(url + "/api/v3/ping")[2] == {}
        klines = f"{url}/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=1"
        assert get(klines)[0] == 503 and get(klines)[0] == 200
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_shared_fixture_serves_ccxt(fake_exchange):
    client = make_exchange(base_url=fake_exchange.url)
    client.load_markets()
    assert "BTC/USDT" in client.markets
    rows = client.fetch_ohlcv("BTC/USDT", "1h", limit=3)
    assert len(rows) == 3 and rows[-1][0] + H == fake_exchange.now_ms  # the newest candle just closed


def test_damaged_page_faults():
    """``empty``, ``truncated`` and ``missing_candle`` answer 200 with a damaged page; ``after`` lets
    requests through first (synthetic market: no ../shared data needed)."""
    from binance.fake_exchange import parse_fault

    with FakeExchange() as fake:
        klines = f"{fake.url}/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={JAN1}&limit=9"
        full = get(klines)[2]
        assert len(full) == 9
        post(fake.url + "/_control/faults", {"kind": "empty", "after": 1})  # also over HTTP
        assert get(klines)[2] == full  # let through
        assert get(klines)[:3:2] == (200, [])
        fake.inject("truncated")
        assert get(klines)[2] == full[:4]
        fake.inject("missing_candle")
        assert get(klines)[2] == full[:4] + full[5:]
        assert get(klines)[2] == full and fake.faults == []
    spec = parse_fault("empty:-1:2:3")
    assert (spec.kind, spec.count, spec.every, spec.after) == ("empty", -1, 2, 3)
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_fault("hole")
