"""Trading state in PostgreSQL (schema ``trading``, migration 0002): what trade.py decided, sent and holds.

Tables: ``accounts`` (one per mode and run: what it trades, why it halted), ``decisions`` (per bar:
calls, target weights, the weights before, the limit scaling; ``open`` until its orders are settled),
``orders`` (deterministic client id, exchange id, status), ``fills``, ``snapshots`` (cash and base
quantities at a bar's close, plus the exchange's balances when trading on one) and ``equity``.

Crash safety comes from the order of writes, which trade.py follows: a decision and ALL its planned
orders are committed in one transaction before anything is sent; an order's outcome (status, fills)
is committed in one transaction when known. A kill at any point leaves either a decision with
``new``/``unknown`` orders (reconciled with the exchange by client id on restart) or a settled one.
Every insert is keyed (client id, trade id, bar) so replaying a step writes nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

FINAL_ORDER_STATES = ("filled", "rejected", "canceled", "not_sent")
PENDING_ORDER_STATES = ("new", "unknown")


class TradingStateError(RuntimeError):
    """The stored trading state does not fit what was asked (another run's account, a halted account)."""


@dataclass(frozen=True)
class Account:
    account: str
    mode: str
    run_id: str
    symbols: list[str]
    timeframe: str
    initial_cash: float
    halted_reason: str | None


@dataclass(frozen=True)
class Snapshot:
    """Holdings at the close of ``bar_open_time_ms``: cash, base quantities (the account's symbols order)."""

    bar_open_time_ms: int
    cash: float
    qty: np.ndarray
    prices: np.ndarray


@dataclass(frozen=True)
class DecisionRow:
    bar_open_time_ms: int
    run_id: str
    calls: np.ndarray
    target_weights: np.ndarray
    weights_before: np.ndarray
    limit_scale: float
    limit_reason: str | None
    status: str


@dataclass
class OrderRow:
    client_order_id: str
    bar_open_time_ms: int
    symbol: str
    side: str
    amount: float  # base units planned
    ref_price: float  # the price the plan assumed
    status: str = "new"
    exchange_order_id: str | None = None
    filled_qty: float = 0.0
    avg_price: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class FillRow:
    trade_id: str
    qty: float
    price: float
    fee: float
    fee_asset: str
    ts_ms: int
    slippage: float = 0.0


# ---------------------------------------------------------------------------------------- accounts
def open_account(
    engine: Engine,
    account: str,
    *,
    mode: str,
    run_id: str,
    symbols: Sequence[str],
    timeframe: str,
    initial_cash: float,
) -> Account:
    """The stored account, created on first use; refuses one that trades another run, mode or pairs."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO trading.accounts (account, mode, run_id, symbols, timeframe, initial_cash)"
                " VALUES (:account, :mode, :run_id, :symbols, :timeframe, :initial_cash)"
                " ON CONFLICT (account) DO NOTHING"
            ),
            {
                "account": account,
                "mode": mode,
                "run_id": run_id,
                "symbols": list(symbols),
                "timeframe": timeframe,
                "initial_cash": float(initial_cash),
            },
        )
        stored = get_account(conn, account)
    assert stored is not None
    wanted = {"mode": mode, "run_id": run_id, "symbols": list(symbols), "timeframe": timeframe}
    clashes = [
        f"{key} {getattr(stored, key)!r} (asked: {value!r})"
        for key, value in wanted.items()
        if getattr(stored, key) != value
    ]
    if clashes:
        raise TradingStateError(
            f"account {account!r} already exists with "
            + ", ".join(clashes)
            + "; pass another --account (or trade.account in the config) for this run"
        )
    return stored


def get_account(conn: Connection | Engine, account: str) -> Account | None:
    sql = text(
        "SELECT account, mode, run_id, symbols, timeframe, initial_cash, halted_reason"
        " FROM trading.accounts WHERE account = :account"
    )
    row = _run(conn, sql, {"account": account}).first()
    return (
        None if row is None else Account(row[0], row[1], row[2], list(row[3]), row[4], float(row[5]), row[6])
    )


def halt(engine: Engine, account: str, reason: str) -> None:
    """Stop the account from trading until `resume` (e.g. the drawdown stop tripped)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE trading.accounts SET halted_reason = :reason WHERE account = :account"),
            {"account": account, "reason": reason},
        )


def resume(engine: Engine, account: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE trading.accounts SET halted_reason = NULL WHERE account = :account"),
            {"account": account},
        )


# --------------------------------------------------------------------------------------- decisions
def insert_decision(
    conn: Connection,
    account: str,
    bar_open_time_ms: int,
    *,
    run_id: str,
    calls: np.ndarray,
    target_weights: np.ndarray,
    weights_before: np.ndarray,
    limit_scale: float = 1.0,
    limit_reason: str | None = None,
    status: str = "open",
) -> bool:
    """Store a decision; False (and nothing written) when the bar already has one."""
    result = conn.execute(
        text(
            "INSERT INTO trading.decisions (account, bar_open_time_ms, run_id, calls, target_weights,"
            " weights_before, limit_scale, limit_reason, status) VALUES (:account, :bar, :run_id, :calls,"
            " :target, :before, :scale, :reason, :status) ON CONFLICT DO NOTHING"
        ),
        {
            "account": account,
            "bar": int(bar_open_time_ms),
            "run_id": run_id,
            "calls": [int(c) for c in np.asarray(calls).tolist()],
            "target": np.asarray(target_weights, dtype=float).tolist(),
            "before": np.asarray(weights_before, dtype=float).tolist(),
            "scale": float(limit_scale),
            "reason": limit_reason,
            "status": status,
        },
    )
    return result.rowcount == 1


def set_decision_status(conn: Connection, account: str, bar_open_time_ms: int, status: str) -> None:
    conn.execute(
        text(
            "UPDATE trading.decisions SET status = :status"
            " WHERE account = :account AND bar_open_time_ms = :bar"
        ),
        {"account": account, "bar": int(bar_open_time_ms), "status": status},
    )


def decisions(
    conn: Connection | Engine, account: str, status: str | None = None, bar_open_time_ms: int | None = None
) -> list[DecisionRow]:
    """The account's decisions (all, those with ``status``, or the one of a bar), oldest first."""
    sql = (
        "SELECT bar_open_time_ms, run_id, calls, target_weights, weights_before, limit_scale, limit_reason,"
        " status FROM trading.decisions WHERE account = :account"
        + (" AND status = :status" if status else "")
        + (" AND bar_open_time_ms = :bar" if bar_open_time_ms is not None else "")
        + " ORDER BY bar_open_time_ms"
    )
    params = {"account": account, "status": status, "bar": bar_open_time_ms}
    rows = _run(conn, text(sql), params).all()
    return [
        DecisionRow(
            int(r[0]),
            r[1],
            np.array(r[2], dtype=np.int8),
            np.array(r[3], dtype=float),
            np.array(r[4], dtype=float),
            float(r[5]),
            r[6],
            r[7],
        )
        for r in rows
    ]


def get_decision(conn: Connection | Engine, account: str, bar_open_time_ms: int) -> DecisionRow | None:
    found = decisions(conn, account, bar_open_time_ms=int(bar_open_time_ms))
    return found[0] if found else None


# ------------------------------------------------------------------------------------------ orders
def insert_order(conn: Connection, account: str, order: OrderRow) -> None:
    conn.execute(
        text(
            "INSERT INTO trading.orders (client_order_id, account, bar_open_time_ms, symbol, side, amount,"
            " ref_price, status, exchange_order_id, filled_qty, avg_price, error)"
            " VALUES (:cid, :account, :bar, :symbol, :side, :amount, :ref_price, :status, :xid, :filled,"
            " :avg, :error)"
            " ON CONFLICT (client_order_id) DO NOTHING"
        ),
        {
            "cid": order.client_order_id,
            "account": account,
            "bar": int(order.bar_open_time_ms),
            "symbol": order.symbol,
            "side": order.side,
            "amount": float(order.amount),
            "ref_price": float(order.ref_price),
            "status": order.status,
            "xid": order.exchange_order_id,
            "filled": float(order.filled_qty),
            "avg": order.avg_price,
            "error": order.error,
        },
    )


def update_order(
    conn: Connection,
    client_order_id: str,
    status: str,
    *,
    exchange_order_id: str | None = None,
    filled_qty: float | None = None,
    avg_price: float | None = None,
    error: str | None = None,
) -> None:
    conn.execute(
        text(
            "UPDATE trading.orders SET status = :status, updated_at = now(),"
            " exchange_order_id = coalesce(:xid, exchange_order_id),"
            " filled_qty = coalesce(:filled, filled_qty),"
            " avg_price = coalesce(:avg, avg_price), error = coalesce(:error, error)"
            " WHERE client_order_id = :cid"
        ),
        {
            "cid": client_order_id,
            "status": status,
            "xid": exchange_order_id,
            "filled": filled_qty,
            "avg": avg_price,
            "error": error,
        },
    )


def orders(
    conn: Connection | Engine,
    account: str,
    bar_open_time_ms: int | None = None,
    statuses: Iterable[str] | None = None,
) -> list[OrderRow]:
    """The account's orders (of one bar, with given statuses), sells before buys, in insertion order."""
    sql = (
        "SELECT client_order_id, bar_open_time_ms, symbol, side, amount, ref_price, status,"
        " exchange_order_id, filled_qty, avg_price, error FROM trading.orders WHERE account = :account"
        + (" AND bar_open_time_ms = :bar" if bar_open_time_ms is not None else "")
        + (" AND status = ANY(:statuses)" if statuses is not None else "")
        + " ORDER BY bar_open_time_ms, side = 'buy', created_at, client_order_id"
    )
    params = {
        "account": account,
        "bar": bar_open_time_ms,
        "statuses": list(statuses) if statuses is not None else None,
    }
    return [
        OrderRow(
            r[0],
            int(r[1]),
            r[2],
            r[3],
            float(r[4]),
            float(r[5]),
            r[6],
            r[7],
            float(r[8]),
            None if r[9] is None else float(r[9]),
            r[10],
        )
        for r in _run(conn, text(sql), params).all()
    ]


def insert_fills(conn: Connection, account: str, order: OrderRow, fills: Iterable[FillRow]) -> int:
    """Store an order's fills (a fill already stored is skipped); returns how many were new."""
    new = 0
    for fill in fills:
        result = conn.execute(
            text(
                "INSERT INTO trading.fills (client_order_id, trade_id, account, symbol, side, qty, price,"
                " fee, fee_asset, slippage, ts_ms) VALUES (:cid, :tid, :account, :symbol, :side, :qty,"
                " :price, :fee, :fee_asset, :slippage, :ts) ON CONFLICT DO NOTHING"
            ),
            {
                "cid": order.client_order_id,
                "tid": fill.trade_id,
                "account": account,
                "symbol": order.symbol,
                "side": order.side,
                "qty": fill.qty,
                "price": fill.price,
                "fee": fill.fee,
                "fee_asset": fill.fee_asset,
                "slippage": fill.slippage,
                "ts": int(fill.ts_ms),
            },
        )
        new += result.rowcount
    return new


def fills(conn: Connection | Engine, account: str) -> list[dict[str, Any]]:
    """Every fill of the account with its order's bar, in time, then sells-first order."""
    sql = text(
        "SELECT o.bar_open_time_ms, f.client_order_id, f.trade_id, f.symbol, f.side, f.qty, f.price, f.fee,"
        " f.fee_asset, f.slippage, f.ts_ms FROM trading.fills f JOIN trading.orders o USING (client_order_id)"
        " WHERE f.account = :account ORDER BY f.ts_ms, f.side = 'buy', f.symbol, f.trade_id"
    )
    result = _run(conn, sql, {"account": account})
    return [dict(zip(result.keys(), row, strict=True)) for row in result.all()]


def traded_notional_since(conn: Connection | Engine, account: str, since_ms: int) -> float:
    """Quote value of everything the account bought or sold from ``since_ms`` on (the turnover limit)."""
    sql = text(
        "SELECT coalesce(sum(qty * price), 0) FROM trading.fills WHERE account = :account AND ts_ms >= :since"
    )
    return float(_run(conn, sql, {"account": account, "since": int(since_ms)}).scalar_one())


# ------------------------------------------------------------------------------- snapshots, equity
def write_snapshot(
    conn: Connection,
    account: str,
    bar_open_time_ms: int,
    cash: float,
    qty: np.ndarray,
    prices: np.ndarray,
    balances: dict[str, float] | None = None,
) -> None:
    conn.execute(
        text(
            "INSERT INTO trading.snapshots (account, bar_open_time_ms, cash, qty, prices, balances)"
            " VALUES (:account, :bar, :cash, :qty, :prices, :balances)"
            " ON CONFLICT (account, bar_open_time_ms)"
            " DO UPDATE SET cash = excluded.cash, qty = excluded.qty, prices = excluded.prices,"
            " balances = excluded.balances, created_at = now()"
        ),
        {
            "account": account,
            "bar": int(bar_open_time_ms),
            "cash": float(cash),
            "qty": np.asarray(qty, dtype=float).tolist(),
            "prices": np.asarray(prices, dtype=float).tolist(),
            "balances": None if balances is None else json.dumps(balances),
        },
    )


def snapshots(conn: Connection | Engine, account: str, latest_only: bool = False) -> list[Snapshot]:
    """The account's holdings per marked bar, oldest first (or only the latest)."""
    sql = text(
        "SELECT bar_open_time_ms, cash, qty, prices FROM trading.snapshots WHERE account = :account"
        + (" ORDER BY bar_open_time_ms DESC LIMIT 1" if latest_only else " ORDER BY bar_open_time_ms")
    )
    rows = _run(conn, sql, {"account": account}).all()
    return [
        Snapshot(int(r[0]), float(r[1]), np.array(r[2], dtype=float), np.array(r[3], dtype=float))
        for r in rows
    ]


def latest_snapshot(conn: Connection | Engine, account: str) -> Snapshot | None:
    found = snapshots(conn, account, latest_only=True)
    return found[0] if found else None


def write_equity(
    conn: Connection, account: str, bar_open_time_ms: int, equity: float, weights: np.ndarray, fees: float
) -> None:
    conn.execute(
        text(
            "INSERT INTO trading.equity (account, bar_open_time_ms, equity, weights, fees)"
            " VALUES (:account, :bar, :equity, :weights, :fees) ON CONFLICT (account, bar_open_time_ms)"
            " DO UPDATE SET equity = excluded.equity, weights = excluded.weights, fees = excluded.fees"
        ),
        {
            "account": account,
            "bar": int(bar_open_time_ms),
            "equity": float(equity),
            "weights": np.asarray(weights, dtype=float).tolist(),
            "fees": float(fees),
        },
    )


def equity_curve(conn: Connection | Engine, account: str) -> tuple[np.ndarray, np.ndarray]:
    """(bar open times [T] int64, equity at each bar's close [T]) of the account, oldest first."""
    sql = text(
        "SELECT bar_open_time_ms, equity FROM trading.equity WHERE account = :account"
        " ORDER BY bar_open_time_ms"
    )
    rows = _run(conn, sql, {"account": account}).all()
    return (np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=float))


def _run(conn: Connection | Engine, sql: Any, params: dict[str, Any]) -> Any:
    """Execute on a connection, or (reads) on a short-lived one of an engine, rows buffered."""
    if isinstance(conn, Engine):
        with conn.connect() as own:
            return own.execute(sql, params).freeze()()
    return conn.execute(sql, params)
