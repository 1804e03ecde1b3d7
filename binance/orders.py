"""Orders through ccxt: the only code that places, queries or cancels orders on an exchange.

- :func:`client_order_id` gives every order a deterministic id from (account, bar, pair, side), so
  a cycle repeated after a crash names the same order again and can ask the exchange whether it
  already exists instead of sending it twice (Binance's ``newClientOrderId``: ``[A-Za-z0-9_-]{1,36}``).
- :class:`OrderGateway` wraps a ccxt client: market orders with that id, lookup by id, open
  orders, the trades of an order, balances. Outcomes are classified so the caller knows what to
  record: :class:`OrderRejected` (the exchange said no: minimum notional, lot size, balance; the
  order does not exist) and :class:`OrderStatusUnknown` (a timeout, a 5xx or a dropped connection:
  the order may or may not exist; ask with :meth:`OrderGateway.find` before doing anything else).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import ccxt

log = logging.getLogger(__name__)

CLIENT_ID_PREFIX = "cm-"  # marks the orders this project placed
_ID_HEX_CHARS = 28  # prefix + 28 hex = 31 characters, within Binance's 36


def client_order_id(account: str, bar_open_time_ms: int, symbol: str, side: str) -> str:
    """The deterministic client order id of ``account``'s ``side`` order of ``symbol`` after the bar
    opening at ``bar_open_time_ms``: the same inputs always give the same id."""
    if side not in ("buy", "sell"):
        raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")
    digest = hashlib.sha256(f"{account}|{int(bar_open_time_ms)}|{symbol}|{side}".encode()).hexdigest()
    return CLIENT_ID_PREFIX + digest[:_ID_HEX_CHARS]


class OrderError(RuntimeError):
    """An order call failed; the message says what the exchange answered."""


class OrderRejected(OrderError):
    """The exchange refused the order (it does not exist there): e.g. minimum notional, balance, lot size."""


class OrderStatusUnknown(OrderError):
    """The request may or may not have reached the exchange (timeout, 5xx, dropped connection)."""


@dataclass(frozen=True)
class TradeFill:
    """One execution of an order (Binance myTrades row / FULL answer fill)."""

    trade_id: str
    qty: float  # base units
    price: float
    fee: float  # in fee_asset
    fee_asset: str
    ts_ms: int


@dataclass
class OrderReport:
    """What the exchange says about one order."""

    symbol: str
    side: str  # buy | sell
    client_order_id: str
    exchange_order_id: str
    status: str  # ccxt's: open | closed (filled) | canceled | expired | rejected
    amount: float
    filled: float
    average_price: float | None
    fills: list[TradeFill] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.status in ("closed", "canceled", "expired", "rejected")


def _fills(trades: list[dict[str, Any]], default_ts_ms: int = 0) -> list[TradeFill]:
    out = []
    for trade in trades or []:
        fee = trade.get("fee") or {}
        out.append(
            TradeFill(
                trade_id=str(trade["id"]),
                qty=float(trade["amount"]),
                price=float(trade["price"]),
                fee=float(fee.get("cost") or 0.0),
                fee_asset=str(fee.get("currency") or ""),
                ts_ms=int(trade.get("timestamp") or default_ts_ms),  # FULL answers' fills carry no time
            )
        )
    return out


def _transient(exc: ccxt.BaseError) -> bool:
    # NetworkError covers timeouts (RequestTimeout, Binance's -1007), 5xx (ExchangeNotAvailable) and
    # dropped connections; OperationFailed adds Binance's -1001 internal error.
    return isinstance(exc, ccxt.NetworkError | ccxt.OperationFailed)


class _RedactKeys(logging.Filter):
    """Replaces API keys and secrets in log records with ``***``: ccxt's DEBUG log of every request
    prints its headers, the API key among them."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(secret in message for secret in self.secrets):
            for secret in self.secrets:
                message = message.replace(secret, "***")
            record.msg, record.args = message, None
        return True


_REDACT = _RedactKeys()
logging.getLogger("ccxt.base.exchange").addFilter(_REDACT)  # the logger ccxt's requests are logged to


class OrderGateway:
    """Market orders, lookups and balances on one ccxt exchange (markets are loaded on first use)."""

    def __init__(self, client: ccxt.Exchange) -> None:
        self.client = client
        _REDACT.secrets.update(s for s in (client.apiKey, client.secret) if s)
        # fetchOpenOrders without a symbol is allowed by the API; ccxt only warns about its weight.
        client.options["warnOnFetchOpenOrdersWithoutSymbol"] = False

    def markets(self) -> dict[str, Any]:
        return self.client.load_markets()

    def _report(self, order: dict[str, Any], fallback_client_id: str) -> OrderReport:
        fills = _fills(order.get("trades") or [], int(order.get("timestamp") or 0))
        filled = float(order.get("filled") or 0.0)
        if filled > 0 and abs(sum(f.qty for f in fills) - filled) > 1e-12 * max(filled, 1.0):
            # the answer did not carry every execution (ACK/RESULT answers, queries): ask for them
            fills = self.trades(order["symbol"], str(order["id"]))
        return OrderReport(
            symbol=order["symbol"],
            side=order["side"],
            client_order_id=order.get("clientOrderId") or fallback_client_id,
            exchange_order_id=str(order["id"]),
            status=order.get("status") or "open",
            amount=float(order.get("amount") or 0.0),
            filled=filled,
            average_price=None if order.get("average") is None else float(order["average"]),
            fills=fills,
        )

    def place_market(self, symbol: str, side: str, amount: float, client_id: str) -> OrderReport:
        """Send a market order of ``amount`` base units; raises OrderRejected / OrderStatusUnknown."""
        try:
            order = self.client.create_order(
                symbol,
                "market",
                side,
                amount,
                None,
                {"newClientOrderId": client_id, "newOrderRespType": "FULL"},
            )
        except ccxt.BaseError as exc:
            raise self._classify(exc, f"{side} {amount} {symbol} ({client_id})") from exc
        return self._report(order, client_id)

    def find(self, symbol: str, client_id: str) -> OrderReport | None:
        """The order with this client id, or None when the exchange never accepted it."""
        try:
            order = self.client.fetch_order(None, symbol, {"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            return None
        except ccxt.BaseError as exc:
            raise self._classify(exc, f"query {symbol} {client_id}") from exc
        return self._report(order, client_id)

    def cancel(self, symbol: str, client_id: str) -> None:
        try:
            self.client.cancel_order(None, symbol, {"origClientOrderId": client_id})
        except ccxt.OrderNotFound:
            pass  # already filled or never there: nothing to cancel
        except ccxt.BaseError as exc:
            raise self._classify(exc, f"cancel {symbol} {client_id}") from exc

    def open_orders(self, symbol: str | None = None) -> list[OrderReport]:
        try:
            orders = self.client.fetch_open_orders(symbol)
        except ccxt.BaseError as exc:
            raise self._classify(exc, "open orders") from exc
        return [self._report(o, "") for o in orders]

    def trades(self, symbol: str, exchange_order_id: str) -> list[TradeFill]:
        try:
            return _fills(self.client.fetch_my_trades(symbol, params={"orderId": exchange_order_id}))
        except ccxt.BaseError as exc:
            raise self._classify(exc, f"trades of order {exchange_order_id} ({symbol})") from exc

    def balances(self) -> dict[str, float]:
        """Total (free + locked) balance per asset."""
        try:
            balance = self.client.fetch_balance()
        except ccxt.BaseError as exc:
            raise self._classify(exc, "balances") from exc
        return {asset: float(value or 0.0) for asset, value in (balance.get("total") or {}).items()}

    @staticmethod
    def _classify(exc: ccxt.BaseError, what: str) -> OrderError:
        kind = type(exc).__name__
        if _transient(exc):
            return OrderStatusUnknown(f"{what}: no definite answer ({kind}: {str(exc)[:200]})")
        return OrderRejected(f"{what}: refused by the exchange ({kind}: {str(exc)[:200]})")
