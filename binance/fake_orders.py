"""The fake Binance's spot order endpoints, as ccxt calls them: an account that trades against the candles.

Attach an account to a running :class:`binance.fake_exchange.FakeExchange`::

    with FakeExchange(data_dir=path, now_ms=...) as fake:
        account = FakeAccount.attach(fake, {"USDT": 10_000.0}, api_key="k", secret="s")
        client = binance.make_exchange(base_url=fake.url, api_key="k", secret="s")

Endpoints (Binance's JSON shapes and error bodies): ``POST /api/v3/order`` (MARKET orders only,
``quantity`` in base units, ``newClientOrderId``; ACK/RESULT/FULL answers), ``GET /api/v3/order``
(by ``orderId`` or ``origClientOrderId``), ``DELETE /api/v3/order``, ``GET /api/v3/openOrders``,
``GET /api/v3/myTrades``, ``GET /api/v3/account``. With keys configured ("testnet mode") every
request must carry ``X-MBX-APIKEY`` and a valid HMAC-SHA256 ``signature`` of its query or body
(-2015 / -1022 otherwise); without keys signatures are not checked.

Execution: a market order fills completely at once at the OPEN of the exchange's current candle
(the source candle containing the fake's clock, ``fake.now_ms``), as an order sent right after a
bar's close would. Commission is ``fee_rate`` of the fill, charged like Binance does without BNB:
in the base asset on buys, in the quote asset on sells. Rejections like Binance's: LOT_SIZE
(quantity off the step), NOTIONAL (below 5 USDT), insufficient balance (-2010), unknown symbol.

Faults on top of the fake exchange's own (``fake.inject("500", path="/api/v3/order")`` fails a
request BEFORE the order is accepted): :meth:`FakeAccount.inject` adds faults that strike AFTER
the order was accepted and filled, so the client cannot know its outcome:
``accept_timeout`` (the answer comes ``delay_s`` late, after the client's timeout) and
``accept_500`` (HTTP 500 with Binance's -1007 "execution status unknown"); and forced rejections of
the next order, ``reject_balance`` (-2010) and ``reject_min_notional`` (-1013 NOTIONAL).

CLI: a fake exchange with an account and an accelerated clock, for ``make paper``::

    python -m binance.fake_orders --data-dir ../shared/data/binance_spot_1h_2017_2022 \\
        --start 2021-06-01 --speed 3600 --port 8765
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import itertools
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from binance.fake_exchange import _ERRORS, FakeExchange, _filters, _fmt, _missing_param, as_served
from binance.symbols import parse_symbol

log = logging.getLogger(__name__)

ORDER_PATHS = ("/api/v3/order", "/api/v3/openOrders", "/api/v3/myTrades", "/api/v3/account")
ACCOUNT_FAULT_KINDS = ("accept_timeout", "accept_500", "reject_balance", "reject_min_notional")
MIN_NOTIONAL_QUOTE = 5.0  # the NOTIONAL filter fake_exchange publishes

_ERR = {
    "api_key": (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}),
    "signature": (400, {"code": -1022, "msg": "Signature for this request is not valid."}),
    "no_order": (400, {"code": -2013, "msg": "Order does not exist."}),
    "unknown_order": (400, {"code": -2011, "msg": "Unknown order sent."}),
    "balance": (400, {"code": -2010, "msg": "Account has insufficient balance for requested action."}),
    "duplicate": (400, {"code": -2010, "msg": "Duplicate order sent."}),
    "lot_size": (400, {"code": -1013, "msg": "Filter failure: LOT_SIZE"}),
    "notional": (400, {"code": -1013, "msg": "Filter failure: NOTIONAL"}),
    "order_type": (400, {"code": -1116, "msg": "Invalid orderType."}),
    "side": (400, {"code": -1117, "msg": "Invalid side."}),
    "quantity": (400, {"code": -1100, "msg": "Illegal characters found in parameter 'quantity'."}),
    "unknown_status": (
        500,
        {
            "code": -1007,
            "msg": "Timeout waiting for response from backend server. "
            "Send status unknown; execution status unknown.",
        },
    ),
}


@dataclass
class AccountFault:
    """A fault after acceptance: fires on the next ``count`` orders (``-1``: forever)."""

    kind: str
    count: int = 1
    delay_s: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in ACCOUNT_FAULT_KINDS:
            raise ValueError(f"unknown account fault {self.kind!r}; use one of {ACCOUNT_FAULT_KINDS}")


class FakeAccount:
    """One spot account on a fake exchange: balances, orders and trades (thread-safe)."""

    def __init__(
        self,
        fake: FakeExchange,
        balances: Mapping[str, float] | None = None,
        *,
        api_key: str | None = None,
        secret: str | None = None,
        fee_rate: float = 0.001,
    ) -> None:
        self.fake = fake
        self.api_key, self.secret = api_key, secret
        self.fee_rate = float(fee_rate)
        self.balances: dict[str, float] = {k: float(v) for k, v in (balances or {}).items()}
        self.orders: dict[int, dict[str, Any]] = {}  # orderId -> Binance order JSON
        self.trades: list[dict[str, Any]] = []  # Binance myTrades JSON, oldest first
        self.faults: list[AccountFault] = []
        self.requests: dict[str, int] = {}  # "METHOD path" -> count, for tests
        self._ids = itertools.count(1)
        self._trade_ids = itertools.count(1)
        self._lock = threading.Lock()

    @classmethod
    def attach(
        cls, fake: FakeExchange, balances: Mapping[str, float] | None = None, **kwargs: Any
    ) -> FakeAccount:
        """A new account that ``fake`` serves on the order endpoints."""
        account = cls(fake, balances, **kwargs)
        fake.account = account
        return account

    def inject(self, kind: str, count: int = 1, delay_s: float = 3.0) -> AccountFault:
        """Add a fault that strikes after the next order was accepted (see the module docstring)."""
        fault = AccountFault(kind, count, delay_s)
        with self._lock:
            self.faults.append(fault)
        return fault

    # -- request handling --------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, Any] | None:
        """Answer one request: (status, JSON body), or None when the path is not an order endpoint."""
        parts = urlsplit(raw_path)
        if parts.path not in ORDER_PATHS:
            return None
        payload = body.decode() if method == "POST" else parts.query
        with self._lock:
            key = f"{method} {parts.path}"
            self.requests[key] = self.requests.get(key, 0) + 1
        problem = self._authenticate(payload, headers)
        if problem is not None:
            return problem
        params = dict(parse_qsl(payload, keep_blank_values=True))
        route = {
            ("POST", "/api/v3/order"): self._new_order,
            ("GET", "/api/v3/order"): self._query_order,
            ("DELETE", "/api/v3/order"): self._cancel_order,
            ("GET", "/api/v3/openOrders"): self._open_orders,
            ("GET", "/api/v3/myTrades"): self._my_trades,
            ("GET", "/api/v3/account"): self._account,
        }.get((method, parts.path))
        if route is None:
            return 405, {"code": -1000, "msg": "Method not allowed."}
        return route(params)

    def _authenticate(self, payload: str, headers: Mapping[str, str]) -> tuple[int, Any] | None:
        if self.secret is None:
            return None
        if headers.get("X-MBX-APIKEY") != self.api_key:
            return _ERR["api_key"]
        signed, sep, signature = payload.rpartition("&signature=")
        expected = hmac.new(self.secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
        if not sep or not hmac.compare_digest(signature, expected):
            return _ERR["signature"]
        return None

    def _symbol(self, params: Mapping[str, str]) -> tuple[str | None, tuple[int, Any] | None]:
        if not params.get("symbol"):
            return None, _missing_param("symbol")
        symbol = self.fake._by_id.get(params["symbol"])
        return (symbol, None) if symbol is not None else (None, _ERRORS["symbol"])

    def _lot_step(self, symbol: str) -> float:
        # the LOT_SIZE filter exchangeInfo publishes for the pair
        last_close = float(self.fake.source.series(symbol).ohlcv[-1, 3])
        return float(next(f for f in _filters(last_close) if f["filterType"] == "LOT_SIZE")["stepSize"])

    def price(self, symbol: str) -> float:
        """The execution price at the fake's clock: the open of the source candle containing it."""
        series = self.fake.source.series(symbol)
        index = int(np.searchsorted(series.ts_ms, self.fake.now_ms, side="right")) - 1
        if index < 0:
            raise ValueError(f"{symbol} has no candle at or before {self.fake.now_ms}")
        return float(as_served(series.ohlcv[index, 0]))  # the price the klines publish

    def _new_order(self, params: dict[str, str]) -> tuple[int, Any]:
        symbol, problem = self._symbol(params)
        if problem is not None:
            return problem
        for name in ("side", "type"):
            if not params.get(name):
                return _missing_param(name)
        if params["type"] != "MARKET":
            return _ERR["order_type"]
        side = params["side"]
        if side not in ("BUY", "SELL"):
            return _ERR["side"]
        if not params.get("quantity"):
            return _missing_param("quantity")
        try:
            qty = float(params["quantity"])
        except ValueError:
            return _ERR["quantity"]
        base, quote = parse_symbol(symbol)
        step = self._lot_step(symbol)
        lots = qty / step
        if qty <= 0 or abs(lots - round(lots)) > 1e-6:
            return _ERR["lot_size"]
        price = self.price(symbol)
        notional = qty * price
        if notional < MIN_NOTIONAL_QUOTE:
            return _ERR["notional"]
        client_id = params.get("newClientOrderId") or f"fake-{next(self._ids)}"
        with self._lock:
            forced = self._take_fault(("reject_balance", "reject_min_notional"))
            if forced is not None:
                log.info("fake Binance: injecting %s on order %s", forced.kind, client_id)
                return _ERR["balance" if forced.kind == "reject_balance" else "notional"]
            if any(o["clientOrderId"] == client_id and o["status"] == "NEW" for o in self.orders.values()):
                return _ERR["duplicate"]
            pay, get = (quote, base) if side == "BUY" else (base, quote)
            cost = notional if side == "BUY" else qty
            if self.balances.get(pay, 0.0) < cost * (1 - 1e-12):
                return _ERR["balance"]
            received = qty if side == "BUY" else notional
            commission = received * self.fee_rate
            self.balances[pay] = max(self.balances.get(pay, 0.0) - cost, 0.0)
            self.balances[get] = self.balances.get(get, 0.0) + received - commission
            now = self.fake.now_ms
            order_id = next(self._ids)
            trade = {
                "symbol": params["symbol"],
                "id": next(self._trade_ids),
                "orderId": order_id,
                "orderListId": -1,
                "price": _fmt(price),
                "qty": _fmt(qty),
                "quoteQty": _fmt(notional),
                "commission": _fmt(commission),
                "commissionAsset": get,
                "time": now,
                "isBuyer": side == "BUY",
                "isMaker": False,
                "isBestMatch": True,
            }
            order = {
                "symbol": params["symbol"],
                "orderId": order_id,
                "orderListId": -1,
                "clientOrderId": client_id,
                "price": "0.00000000",
                "origQty": _fmt(qty),
                "executedQty": _fmt(qty),
                "cummulativeQuoteQty": _fmt(notional),
                "status": "FILLED",
                "timeInForce": "GTC",
                "type": "MARKET",
                "side": side,
                "stopPrice": "0.00000000",
                "icebergQty": "0.00000000",
                "time": now,
                "updateTime": now,
                "isWorking": True,
                "workingTime": now,
                "origQuoteOrderQty": "0.00000000",
                "selfTradePreventionMode": "EXPIRE_MAKER",
            }
            self.orders[order_id] = order
            self.trades.append(trade)
            fault = self._take_fault(("accept_timeout", "accept_500"))
        log.info(
            "fake Binance: %s %s %s @ %s filled (order %d, %s)",
            side,
            _fmt(qty),
            symbol,
            _fmt(price),
            order_id,
            client_id,
        )
        if fault is not None:
            log.info("fake Binance: injecting %s after accepting order %d", fault.kind, order_id)
            if fault.kind == "accept_500":
                return _ERR["unknown_status"]
            self.fake._stopping.wait(fault.delay_s)  # answer after the client gave up
        answer = {k: order[k] for k in ("symbol", "orderId", "orderListId", "clientOrderId")}
        answer["transactTime"] = now
        if params.get("newOrderRespType", "FULL") == "ACK":
            return 200, answer
        answer.update(
            {
                k: v
                for k, v in order.items()
                if k not in answer and k not in ("time", "updateTime", "isWorking", "stopPrice", "icebergQty")
            }
        )
        if params.get("newOrderRespType", "FULL") == "FULL":
            answer["fills"] = [
                {
                    "price": trade["price"],
                    "qty": trade["qty"],
                    "commission": trade["commission"],
                    "commissionAsset": trade["commissionAsset"],
                    "tradeId": trade["id"],
                }
            ]
        return 200, answer

    def _take_fault(self, kinds: tuple[str, ...]) -> AccountFault | None:
        for fault in self.faults:
            if fault.kind not in kinds:
                continue
            if fault.count > 0:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
            return fault
        return None

    def _find(self, params: Mapping[str, str]) -> dict[str, Any] | None:
        with self._lock:
            if params.get("orderId"):
                order = self.orders.get(int(params["orderId"]))
                return order if order is not None and order["symbol"] == params["symbol"] else None
            client_id = params.get("origClientOrderId")
            matches = [
                o
                for o in self.orders.values()
                if o["clientOrderId"] == client_id and o["symbol"] == params["symbol"]
            ]
            return matches[-1] if matches else None

    def _query_order(self, params: dict[str, str]) -> tuple[int, Any]:
        _, problem = self._symbol(params)
        if problem is not None:
            return problem
        if not (params.get("orderId") or params.get("origClientOrderId")):
            return _missing_param("orderId")
        order = self._find(params)
        return (200, dict(order)) if order is not None else _ERR["no_order"]

    def _cancel_order(self, params: dict[str, str]) -> tuple[int, Any]:
        _, problem = self._symbol(params)
        if problem is not None:
            return problem
        order = self._find(params)
        if order is None or order["status"] != "NEW":
            return _ERR["unknown_order"]  # market orders are filled at once: nothing is ever open
        with self._lock:
            order["status"] = "CANCELED"
        return 200, dict(order)

    def _open_orders(self, params: dict[str, str]) -> tuple[int, Any]:
        if params.get("symbol"):
            _, problem = self._symbol(params)
            if problem is not None:
                return problem
        with self._lock:
            return 200, [
                dict(o)
                for o in self.orders.values()
                if o["status"] == "NEW" and (not params.get("symbol") or o["symbol"] == params["symbol"])
            ]

    def _my_trades(self, params: dict[str, str]) -> tuple[int, Any]:
        _, problem = self._symbol(params)
        if problem is not None:
            return problem
        limit = min(int(params.get("limit") or 500), 1000)
        with self._lock:
            rows = [t for t in self.trades if t["symbol"] == params["symbol"]]
        if params.get("orderId"):
            rows = [t for t in rows if t["orderId"] == int(params["orderId"])]
        if params.get("startTime"):
            rows = [t for t in rows if t["time"] >= int(params["startTime"])]
        if params.get("endTime"):
            rows = [t for t in rows if t["time"] <= int(params["endTime"])]
        if params.get("fromId"):
            rows = [t for t in rows if t["id"] >= int(params["fromId"])]
        return 200, [dict(t) for t in rows[:limit]]

    def _account(self, params: dict[str, str]) -> tuple[int, Any]:
        with self._lock:
            balances = [
                {"asset": a, "free": _fmt(v), "locked": "0.00000000"}
                for a, v in sorted(self.balances.items())
            ]
        fee_bps = int(round(self.fee_rate * 1e4))
        return 200, {
            "makerCommission": fee_bps,
            "takerCommission": fee_bps,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "commissionRates": {
                "maker": _fmt(self.fee_rate),
                "taker": _fmt(self.fee_rate),
                "buyer": "0.00000000",
                "seller": "0.00000000",
            },
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "brokered": False,
            "requireSelfTradePrevention": False,
            "preventSor": False,
            "updateTime": self.fake.now_ms,
            "accountType": "SPOT",
            "balances": balances,
            "permissions": ["SPOT"],
            "uid": 1,
        }


def main(argv: list[str] | None = None) -> int:
    from settings import env, parse_time_ms

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", help="folder of <BASE>_<QUOTE>.csv[.gz] candles (default: synthetic)")
    parser.add_argument("--symbols", help="comma-separated pairs to list, e.g. BTC/USDT,ETH/USDT")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--start", required=True, help="exchange clock at start (UTC date or epoch ms)")
    parser.add_argument("--speed", type=float, default=3600.0, help="exchange seconds per wall second")
    parser.add_argument("--cash", type=float, default=10_000.0, help="USDT in the account")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start_ms = parse_time_ms(args.start, "--start")
    fake = FakeExchange(
        args.data_dir, args.port, start_ms, symbols=args.symbols.split(",") if args.symbols else None
    )
    # Keys from .env when set, so `trade.py --mode testnet` signs against this fake like against Binance.
    FakeAccount.attach(
        fake, {"USDT": args.cash}, api_key=env("BINANCE_API_KEY"), secret=env("BINANCE_API_SECRET")
    )
    with fake:
        print(
            f"fake Binance with an account on {fake.url} ({fake.describe()}), clock x{args.speed:g}",
            flush=True,
        )
        wall0 = time.monotonic()
        try:
            while True:
                fake.set_now(start_ms + int((time.monotonic() - wall0) * args.speed * 1000))
                time.sleep(0.05)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
