"""Position accounting: quantity, average entry price, realized/unrealized PnL, fees and round trips.

There is one implementation of the accounting, `PositionBook`, which keeps N assets in numpy arrays
so that `Portfolio.rebalance` updates every pair with a handful of vector operations per bar.
`Position` is a one-asset view on a book: standalone (`Position("BTC/USDT")`, with its own
one-asset book) for hand-worked use, or a live read-only view on a `Portfolio`'s book.

Conventions (quote currency, e.g. USDT):
- Fill prices include slippage, so slippage lands in the PnL; fees are tracked separately and
  never enter the average entry price. ``net PnL = realized + unrealized - fees``.
- The average entry price is the quantity-weighted mean buy fill price of the units held; sells do
  not change it and realize ``qty * (sell price - average entry)``.
- A round trip opens when the quantity leaves zero and closes when it returns to exactly zero.
  Partial closes realize PnL inside the open round trip. Long-only: selling more than is held is
  an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Cumulative counters snapshotted when a round trip opens; a trip's figures are the differences.
_BOUGHT_QTY, _BOUGHT_VALUE, _SOLD_QTY, _SOLD_VALUE, _FEES, _REALIZED, _SLIPPAGE = range(7)
_N_COUNTERS = 7
_TINY_QTY = 1e-300


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """One round trip of an asset: from a flat position back to flat (or still open)."""

    symbol: str
    open_time_ms: int | None  # time of the opening fill (None when fills carried no time)
    close_time_ms: int | None  # time of the closing fill; None while open
    qty: float  # base quantity bought during the trip (all of it sold when closed)
    entry_price: float  # quantity-weighted mean buy fill price over the trip
    exit_price: float  # quantity-weighted mean sell fill price (nan when nothing sold yet)
    realized_pnl: float  # sum over sells of qty * (sell price - average entry), fees excluded
    fees: float  # fees paid on the trip's fills
    slippage: float  # slippage cost paid on the trip's fills (already inside the fill prices)
    is_closed: bool

    @property
    def pnl(self) -> float:
        """Realized PnL net of fees (for a closed trip: sell value - buy value - fees)."""
        return self.realized_pnl - self.fees

    @property
    def holding_ms(self) -> int | None:
        """Time from the opening to the closing fill; None while open or without times."""
        if self.close_time_ms is None or self.open_time_ms is None:
            return None
        return self.close_time_ms - self.open_time_ms


class PositionBook:
    """Positions of N assets in parallel arrays (the vectorized accounting used per bar).

    Public arrays (length N, quote currency unless noted): ``qty`` (base units), ``avg_entry``
    (meaningless where qty is 0; `avg_entry_price` gives nan there), and the cumulative
    ``realized_pnl``, ``fees_paid``, ``slippage_paid``, ``bought_qty``, ``bought_value``,
    ``sold_qty``, ``sold_value``. Treat them as read-only: only `apply` keeps them consistent.
    """

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = list(symbols)
        n = len(self.symbols)
        self.qty = np.zeros(n)
        self.avg_entry = np.zeros(n)
        # Cumulative counters, one row each (see the _BOUGHT_QTY... row names), updated with a
        # single in-place add per fill from the scratch rows below.
        self.counters = np.zeros((_N_COUNTERS, n))
        self._scratch = np.zeros((_N_COUNTERS, n))
        self._rows = tuple(self._scratch)  # persistent row views: no view creation per fill
        self._zero = np.zeros(n)
        self._tiny = np.full(n, _TINY_QTY)
        self._flat = np.ones(n, dtype=bool)  # qty == 0 after the last apply (round-trip events)
        self._flat_key = self._flat.tobytes()
        self._trip_base = np.zeros((_N_COUNTERS, n))  # counters at the opening of each open trip
        self._trip_open_ms: list[int | None] = [None] * n
        self.closed_trips: list[list[RoundTrip]] = [[] for _ in range(n)]

    def __getstate__(self) -> dict:
        # The row views would unpickle (and deepcopy) as independent arrays: rebuild them instead.
        state = dict(self.__dict__)
        del state["_rows"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rows = tuple(self._scratch)

    # Read-only views of the cumulative counters (quote currency unless noted).
    @property
    def bought_qty(self) -> np.ndarray:
        return self.counters[_BOUGHT_QTY]

    @property
    def bought_value(self) -> np.ndarray:
        return self.counters[_BOUGHT_VALUE]

    @property
    def sold_qty(self) -> np.ndarray:
        return self.counters[_SOLD_QTY]

    @property
    def sold_value(self) -> np.ndarray:
        return self.counters[_SOLD_VALUE]

    @property
    def fees_paid(self) -> np.ndarray:
        return self.counters[_FEES]

    @property
    def realized_pnl(self) -> np.ndarray:
        """Sum over sells of qty * (sell fill price - average entry), gross of fees."""
        return self.counters[_REALIZED]

    @property
    def slippage_paid(self) -> np.ndarray:
        return self.counters[_SLIPPAGE]

    def __len__(self) -> int:
        return len(self.symbols)

    def apply(
        self,
        qty_delta: np.ndarray,
        fill_price: np.ndarray,
        fee: np.ndarray,
        slippage_cost: np.ndarray,
        ts_ms: int | None = None,
    ) -> None:
        """Book one fill per asset: ``qty_delta`` > 0 buys, < 0 sells, 0 leaves the asset alone.

        ``fill_price`` must be finite and positive for every asset (pass the reference price where
        nothing trades); ``fee`` and ``slippage_cost`` are this fill's costs in the quote currency.
        The caller guarantees ``qty + qty_delta >= 0`` (the Portfolio does by construction).
        """
        # This runs every bar for every pair: a few whole-array operations, no per-asset Python.
        bought, bought_value, sold, sold_value, fees, realized, slippage = self._rows
        np.maximum(qty_delta, self._zero, out=bought)
        np.subtract(bought, qty_delta, out=sold)  # exactly max(-qty_delta, 0)
        np.multiply(bought, fill_price, out=bought_value)
        np.multiply(sold, fill_price, out=sold_value)
        fees[:] = fee
        slippage[:] = slippage_cost
        diff = fill_price - self.avg_entry
        np.multiply(sold, diff, out=realized)
        self.counters += self._scratch
        qty1 = self.qty + qty_delta
        # avg + b * (price - avg) / (q + b) is the quantity-weighted mean after a buy; sells (b = 0)
        # leave it bit-exact, and the floor on the denominator only matters for 0 / 0 (flat, no buy).
        self.avg_entry = self.avg_entry + bought * diff / np.maximum(qty1, self._tiny)
        flat = qty1 == self._zero
        flat_key = flat.tobytes()  # comparing bytes is much cheaper than (a != b).any()
        if flat_key != self._flat_key:
            # Rare path: a position opened (flat -> held) or closed (held -> flat) on this fill.
            self._round_trip_events(flat, ts_ms)
            self._flat = flat
            self._flat_key = flat_key
        self.qty = qty1

    def _round_trip_events(self, flat: np.ndarray, ts_ms: int | None) -> None:
        for i in np.flatnonzero(flat != self._flat):
            if flat[i]:  # closed on this fill
                self.closed_trips[i].append(self._trip(int(i), ts_ms, closed=True))
                self._trip_open_ms[i] = None
                self.avg_entry[i] = 0.0  # so the next trip's first buy sets it to its price exactly
            else:  # opened on this fill: the base is the counters before it (scratch = this fill)
                self._trip_base[:, i] = self.counters[:, i] - self._scratch[:, i]
                self._trip_open_ms[i] = ts_ms

    def _trip(self, i: int, ts_ms: int | None, closed: bool) -> RoundTrip:
        d = self.counters[:, i] - self._trip_base[:, i]
        return RoundTrip(
            symbol=self.symbols[i],
            open_time_ms=self._trip_open_ms[i],
            close_time_ms=ts_ms if closed else None,
            qty=float(d[_BOUGHT_QTY]),
            entry_price=float(d[_BOUGHT_VALUE] / d[_BOUGHT_QTY]) if d[_BOUGHT_QTY] > 0 else math.nan,
            exit_price=float(d[_SOLD_VALUE] / d[_SOLD_QTY]) if d[_SOLD_QTY] > 0 else math.nan,
            realized_pnl=float(d[_REALIZED]),
            fees=float(d[_FEES]),
            slippage=float(d[_SLIPPAGE]),
            is_closed=closed,
        )

    def open_trip(self, i: int) -> RoundTrip | None:
        """The round trip currently open for asset ``i`` (None when flat)."""
        return None if self._flat[i] else self._trip(i, None, closed=False)

    def round_trips(self, i: int) -> list[RoundTrip]:
        """Closed round trips of asset ``i`` followed by the open one, if any."""
        current = self.open_trip(i)
        return list(self.closed_trips[i]) + ([current] if current is not None else [])

    def avg_entry_price(self) -> np.ndarray:
        """Average entry price per asset (nan where flat)."""
        return np.where(self.qty > 0.0, self.avg_entry, np.nan)

    def unrealized_pnl(self, prices: np.ndarray) -> np.ndarray:
        """Per-asset ``qty * (price - average entry)``."""
        return self.qty * (np.asarray(prices, dtype=np.float64) - self.avg_entry)


class Position:
    """One asset's position: standalone (its own book) or a read-only view on a Portfolio's book."""

    __slots__ = ("_book", "_i", "_standalone")

    def __init__(self, symbol: str, book: PositionBook | None = None, index: int | None = None) -> None:
        if book is None:
            self._book = PositionBook([symbol])
            self._i = 0
            self._standalone = True
        else:
            self._book = book
            self._i = book.symbols.index(symbol) if index is None else index
            self._standalone = False
            if book.symbols[self._i] != symbol:
                raise ValueError(f"book index {self._i} holds {book.symbols[self._i]}, not {symbol}")

    # --- trading (standalone positions only; a Portfolio's positions trade through rebalance) ---
    def buy(
        self, qty: float, price: float, fee: float = 0.0, ts_ms: int | None = None, slippage_cost: float = 0.0
    ) -> None:
        """Buy ``qty`` base units at fill price ``price`` paying ``fee`` (quote currency)."""
        self._fill(qty, price, fee, ts_ms, slippage_cost)

    def sell(
        self, qty: float, price: float, fee: float = 0.0, ts_ms: int | None = None, slippage_cost: float = 0.0
    ) -> None:
        """Sell ``qty`` base units (at most the held quantity: long-only) at fill price ``price``."""
        if qty > self.qty:
            raise ValueError(f"cannot sell {qty} {self.symbol}: only {self.qty} held (long-only)")
        self._fill(-qty, price, fee, ts_ms, slippage_cost)

    def _fill(
        self, signed_qty: float, price: float, fee: float, ts_ms: int | None, slippage_cost: float
    ) -> None:
        if not self._standalone:
            raise RuntimeError("this position belongs to a Portfolio: trade through Portfolio.rebalance")
        if not (math.isfinite(price) and price > 0.0):
            raise ValueError(f"fill price must be finite and positive, got {price}")
        if not (math.isfinite(signed_qty) and signed_qty != 0.0):
            raise ValueError(f"fill quantity must be finite and non-zero, got {abs(signed_qty)}")
        if not (math.isfinite(fee) and fee >= 0.0 and math.isfinite(slippage_cost) and slippage_cost >= 0.0):
            raise ValueError("fee and slippage_cost must be finite and non-negative")
        self._book.apply(
            np.array([signed_qty]), np.array([price]), np.array([fee]), np.array([slippage_cost]), ts_ms
        )

    # --- state ---
    @property
    def symbol(self) -> str:
        return self._book.symbols[self._i]

    @property
    def qty(self) -> float:
        return float(self._book.qty[self._i])

    @property
    def avg_entry_price(self) -> float:
        """Quantity-weighted mean buy fill price of the units held (nan when flat)."""
        return float(self._book.avg_entry[self._i]) if self.qty > 0.0 else math.nan

    @property
    def realized_pnl(self) -> float:
        """PnL realized by sells, gross of fees."""
        return float(self._book.realized_pnl[self._i])

    @property
    def fees_paid(self) -> float:
        return float(self._book.fees_paid[self._i])

    @property
    def slippage_paid(self) -> float:
        """Slippage cost paid so far (already inside the fill prices, hence inside the PnL)."""
        return float(self._book.slippage_paid[self._i])

    @property
    def is_open(self) -> bool:
        return self.qty > 0.0

    @property
    def round_trips(self) -> list[RoundTrip]:
        """Closed round trips, then the open one if the position is held."""
        return self._book.round_trips(self._i)

    @property
    def closed_round_trips(self) -> list[RoundTrip]:
        return list(self._book.closed_trips[self._i])

    def market_value(self, price: float) -> float:
        return self.qty * price

    def unrealized_pnl(self, price: float) -> float:
        """``qty * (price - average entry)``; 0 when flat."""
        return self.qty * (price - float(self._book.avg_entry[self._i])) if self.qty > 0.0 else 0.0

    def total_pnl(self, price: float) -> float:
        """Realized + unrealized - fees: the position's whole contribution to equity."""
        return self.realized_pnl + self.unrealized_pnl(price) - self.fees_paid

    def __repr__(self) -> str:
        return (
            f"Position({self.symbol!r}, qty={self.qty:.10g}, avg_entry_price={self.avg_entry_price:.10g}, "
            f"realized_pnl={self.realized_pnl:.10g}, fees_paid={self.fees_paid:.10g})"
        )
