"""The order path: ccxt against the fake exchange's account (signed requests, fills at its clock,
rejections, faults before and after acceptance) and the deterministic client order ids."""

from __future__ import annotations

import re

import pytest

from binance import make_exchange
from binance.fake_exchange import SYNTHETIC_START_MS, FakeExchange
from binance.fake_orders import FakeAccount
from binance.orders import OrderGateway, OrderRejected, OrderStatusUnknown, client_order_id

H = 3_600_000
KEY, SECRET = "test-key-0123", "test-secret-do-not-log-4567"


@pytest.fixture
def venue():
    """A synthetic fake exchange at bar 100 (+1 min), an account with 1,000 USDT, keys required."""
    with FakeExchange(now_ms=SYNTHETIC_START_MS + 100 * H + 60_000) as fake:
        account = FakeAccount.attach(fake, {"USDT": 1_000.0}, api_key=KEY, secret=SECRET)
        client = make_exchange(base_url=fake.url, api_key=KEY, secret=SECRET, timeout_ms=1_500)
        yield fake, account, OrderGateway(client)


def test_client_order_ids_are_deterministic_and_valid_for_binance():
    a = client_order_id("paper-run1", 1_600_000_000_000, "BTC/USDT", "buy")
    assert a == client_order_id("paper-run1", 1_600_000_000_000, "BTC/USDT", "buy")
    others = {
        client_order_id("paper-run2", 1_600_000_000_000, "BTC/USDT", "buy"),
        client_order_id("paper-run1", 1_600_003_600_000, "BTC/USDT", "buy"),
        client_order_id("paper-run1", 1_600_000_000_000, "ETH/USDT", "buy"),
        client_order_id("paper-run1", 1_600_000_000_000, "BTC/USDT", "sell"),
    }
    assert a not in others and len(others) == 4
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,36}", a)  # Binance's newClientOrderId rule
    with pytest.raises(ValueError, match="side"):
        client_order_id("x", 0, "BTC/USDT", "hold")


def test_market_order_fills_at_the_open_of_the_current_candle(venue):
    fake, account, gateway = venue
    open_price = float(fake.source.series("BTC/USDT").ohlcv[100, 0])
    cid = client_order_id("acct", 99 * H, "BTC/USDT", "buy")
    report = gateway.place_market("BTC/USDT", "buy", 2.0, cid)
    assert report.status == "closed" and report.filled == 2.0 and report.client_order_id == cid
    (fill,) = report.fills
    assert fill.price == pytest.approx(open_price, rel=1e-8) and fill.fee == pytest.approx(0.002)
    assert fill.fee_asset == "BTC"  # Binance charges buys in the asset received
    balances = gateway.balances()
    assert balances["BTC"] == pytest.approx(1.998)
    assert balances["USDT"] == pytest.approx(1_000.0 - 2.0 * float(f"{open_price:.8f}"), rel=1e-10)
    found = gateway.find("BTC/USDT", cid)
    assert found is not None and found.exchange_order_id == report.exchange_order_id
    assert [f.trade_id for f in found.fills] == [fill.trade_id]  # trades by order, from myTrades
    assert gateway.find("BTC/USDT", client_order_id("acct", 98 * H, "BTC/USDT", "buy")) is None
    assert gateway.open_orders("BTC/USDT") == []  # market orders never rest
    sell = gateway.place_market("BTC/USDT", "sell", 1.0, client_order_id("acct", 99 * H, "BTC/USDT", "sell"))
    assert sell.fills[0].fee_asset == "USDT"


def test_rejections_are_definite(venue):
    _, account, gateway = venue
    with pytest.raises(OrderRejected, match="insufficient balance"):
        gateway.place_market("BTC/USDT", "buy", 50.0, client_order_id("a", 1, "BTC/USDT", "buy"))
    with pytest.raises(OrderRejected, match="NOTIONAL"):
        gateway.place_market("BTC/USDT", "buy", 0.01, client_order_id("a", 2, "BTC/USDT", "buy"))
    with pytest.raises(OrderRejected, match="insufficient balance"):
        gateway.place_market("ETH/USDT", "sell", 1.0, client_order_id("a", 3, "ETH/USDT", "sell"))
    assert account.orders == {} and account.balances == {"USDT": 1_000.0}


def test_faults_after_acceptance_leave_the_outcome_unknown_until_asked(venue):
    fake, account, gateway = venue
    account.inject("accept_timeout", delay_s=3.0)  # the client's timeout is 1.5 s
    cid = client_order_id("a", 5, "BTC/USDT", "buy")
    with pytest.raises(OrderStatusUnknown, match="no definite answer"):
        gateway.place_market("BTC/USDT", "buy", 1.0, cid)
    assert gateway.find("BTC/USDT", cid).status == "closed"  # it was accepted and filled
    account.inject("accept_500")
    cid = client_order_id("a", 6, "BTC/USDT", "sell")
    with pytest.raises(OrderStatusUnknown, match="execution status unknown"):
        gateway.place_market("BTC/USDT", "sell", 0.5, cid)
    assert gateway.find("BTC/USDT", cid).filled == 0.5
    # a 5xx BEFORE acceptance: unknown to the client, absent on the exchange
    fake.inject("503", path="/api/v3/order")
    cid = client_order_id("a", 7, "BTC/USDT", "sell")
    with pytest.raises(OrderStatusUnknown):
        gateway.place_market("BTC/USDT", "sell", 0.2, cid)
    assert gateway.find("BTC/USDT", cid) is None
    assert len(account.orders) == 2


def test_signed_requests_are_checked(venue):
    fake, account, _ = venue
    wrong = OrderGateway(make_exchange(base_url=fake.url, api_key=KEY, secret="not-the-secret"))
    with pytest.raises(OrderRejected, match="Signature"):
        wrong.balances()
    other_key = OrderGateway(make_exchange(base_url=fake.url, api_key="someone-else", secret=SECRET))
    with pytest.raises(OrderRejected, match="API-key"):
        other_key.place_market("BTC/USDT", "buy", 1.0, "cm-x")
    assert account.orders == {}
