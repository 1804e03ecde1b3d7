"""The ccxt client factory and the symbol/timeframe helpers (no network)."""

from __future__ import annotations

import logging

import pytest

from binance import (
    file_stem,
    floor_to_timeframe,
    make_exchange,
    market_id,
    on_grid,
    parse_symbol,
    symbol_from_file_stem,
    symbol_from_market_id,
    timeframe_ms,
)


def _all_urls(tree) -> list[str]:
    if isinstance(tree, str):
        return [tree]
    return [u for value in tree.values() for u in _all_urls(value)]


def test_base_url_override_reaches_every_rest_endpoint(monkeypatch):
    monkeypatch.setenv("BINANCE_BASE_URL", "http://127.0.0.1:9")
    client = make_exchange()
    urls = _all_urls(client.urls["api"]) + _all_urls(client.urls["test"])
    assert len(urls) > 20  # spot, sapi, futures, options, ... all of them
    assert all(u.startswith("http://127.0.0.1:9/") for u in urls), urls
    assert client.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"
    # even sandbox mode (which swaps in the testnet URLs) cannot leak to a real host
    client.set_sandbox_mode(True)
    assert all(u.startswith("http://127.0.0.1:9/") for u in _all_urls(client.urls["api"]))


def test_factory_defaults_rate_limit_spot_and_testnet(monkeypatch):
    for name in ("BINANCE_BASE_URL", "BINANCE_API_KEY", "BINANCE_API_SECRET", "BINANCE_TESTNET"):
        monkeypatch.delenv(name, raising=False)
    client = make_exchange(timeout_ms=1234)
    assert client.enableRateLimit is True
    assert client.timeout == 1234
    assert client.options["fetchMarkets"]["types"] == ["spot"]
    assert client.urls["api"]["public"].startswith("https://api.binance.com/")
    monkeypatch.setenv("BINANCE_TESTNET", "true")
    assert make_exchange().urls["api"]["public"].startswith("https://testnet.binance.vision/")


def test_keys_come_from_env_and_are_never_logged(monkeypatch, caplog):
    monkeypatch.delenv("BINANCE_BASE_URL", raising=False)
    monkeypatch.setenv("BINANCE_API_KEY", "KEY-sekrit-123")
    monkeypatch.setenv("BINANCE_API_SECRET", "SECRET-sekrit-456")
    with caplog.at_level(logging.DEBUG):
        client = make_exchange(base_url="http://127.0.0.1:9")
    assert client.apiKey == "KEY-sekrit-123" and client.secret == "SECRET-sekrit-456"
    assert "sekrit" not in caplog.text


def test_timeframes():
    assert timeframe_ms("1h") == 3_600_000
    assert timeframe_ms("1d") == 86_400_000
    with pytest.raises(ValueError, match="unsupported timeframe"):
        timeframe_ms("7h")
    with pytest.raises(ValueError):
        timeframe_ms("1M")  # calendar months have no fixed length
    assert floor_to_timeframe(1_609_462_800_123, "1h") == 1_609_462_800_000
    # weekly candles open on Monday 00:00 UTC (2021-01-04 was a Monday)
    monday = 1_609_718_400_000
    assert on_grid(monday, "1w") and not on_grid(monday + 86_400_000, "1w")
    assert floor_to_timeframe(monday + 3 * 86_400_000, "1w") == monday


def test_symbols():
    assert parse_symbol("BTC/USDT") == ("BTC", "USDT")
    assert market_id("ETH/USDT") == "ETHUSDT"
    assert symbol_from_market_id("ETHUSDT") == "ETH/USDT"
    assert symbol_from_market_id("ETHBTC") == "ETH/BTC"
    assert file_stem("BTC/USDT") == "BTC_USDT"
    assert symbol_from_file_stem("SOL_USDT") == "SOL/USDT"
    for bad in ("BTCUSDT", "btc/usdt", "BTC/", "BTC/USDT/X"):
        with pytest.raises(ValueError, match="bad symbol"):
            parse_symbol(bad)


def test_unreachable_exchange_is_described_with_url_cause_and_fix(monkeypatch):
    import socket

    import ccxt

    from binance import api_base_url, network_cause, unreachable_hint

    with socket.socket() as sock:  # bound, never listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        client = make_exchange(base_url=url)
        assert api_base_url(client) == url
        with pytest.raises(ccxt.NetworkError) as info:
            client.fetch_time()
    assert network_cause(info.value) == "ConnectionRefusedError: [Errno 111] Connection refused"
    monkeypatch.setenv("BINANCE_BASE_URL", url)
    hint = unreachable_hint(url)  # the user pointed BINANCE_BASE_URL at something that is not running
    assert f"BINANCE_BASE_URL={url}" in hint and "python -m binance.fake_exchange" in hint
    monkeypatch.delenv("BINANCE_BASE_URL")
    assert api_base_url(make_exchange(base_url="")) == "https://api.binance.com"
    hint = unreachable_hint("https://api.binance.com")  # no internet: the fake exchange is the way out
    assert "network connection to https://api.binance.com" in hint
    assert "BINANCE_BASE_URL=http://127.0.0.1:8765" in hint
