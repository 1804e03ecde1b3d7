"""Portfolio: cash plus long-only positions in the quote currency, rebalanced to target weights.

Rebalance semantics (kept stable; the environment, backtests and tests rely on them):

- Targets are N+1 weights (pairs in ``symbols`` order, then cash), finite, non-negative and summing
  to 1 within ``weight_tol``. They apply to the portfolio value *before* the rebalance, at the
  reference prices passed in (e.g. the next bar's open): the order for pair i is
  ``target_qty_i - qty_i`` with ``target_qty_i = w_i * value / price_i``. A zero weight closes the
  position exactly. Cash is the residual: it ends near ``w_cash * value`` minus costs.
- Sells execute first, then buys. Fill prices move against the trader: buy at ``p * (1 + s)``,
  sell at ``p * (1 - s)`` with ``s = slippage_bps / 1e4 + impact_bps / 1e4 * (qty / volume) **
  impact_exponent`` (the second term is the volume model: it grows with the order's share of the
  bar's base volume; zero or missing volume means ``max_slippage_bps``), capped at
  ``max_slippage_bps``.
- Fees are ``fee_rate`` times each fill's notional (quantity times fill price), paid from cash.
- If cash after the sells cannot pay for every buy plus its fee, all buys scale down by one common
  factor so that cash never goes negative.
- Exchange rules, off unless given (ccxt market info via `trading_rules_from_markets`, or config):
  quantities are rounded down to ``lot_step``; orders below ``min_qty`` or with a notional (at the
  reference price) below ``min_notional`` are skipped. They apply again after shortfall scaling.
- Value is conserved except for costs: value after (at the reference prices) equals value before
  minus this rebalance's fees and slippage costs (slippage cost = ``|qty| * p * s``).
- Every rebalance is logged (dense per-pair rows; `fill_log()` gives one record per fill).

The per-bar path is plain numpy over the N pairs (no per-fill Python objects, no pandas).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from Position import Position, PositionBook, RoundTrip
from settings import ConfigError, merge

# Defaults of the ``portfolio`` config section (see `Portfolio.from_config`).
PORTFOLIO_DEFAULTS: dict[str, Any] = {
    "initial_cash": 10_000.0,
    "fee_rate": 0.001,  # Binance spot taker fee, 10 bps
    "slippage_bps": 0.0,
    "impact_bps": 0.0,
    "impact_exponent": 0.5,
    "max_slippage_bps": 1000.0,
    "weight_tol": 1e-6,
    # Exchange rules: null (off), one number for every pair, or a {symbol: number} mapping.
    "lot_step": None,
    "min_qty": None,
    "min_notional": None,
    "use_market_rules": False,  # take the rules from ccxt market info when markets are passed
    "record_fills": True,
}

FILL_DTYPE = np.dtype(
    [
        ("step", np.int64),  # rebalance counter since the last reset
        ("ts_ms", np.int64),  # time passed to rebalance (-1 when none)
        ("pair", np.int64),  # index into symbols
        ("side", np.int8),  # +1 buy, -1 sell
        ("qty", np.float64),  # base units, positive
        ("price", np.float64),  # fill price, slippage included
        ("notional", np.float64),  # qty * price
        ("fee", np.float64),
        ("slippage", np.float64),  # slippage cost in quote currency: qty * |price - reference price|
    ]
)

_CCXT_DECIMAL_PLACES = 2  # ccxt precisionMode constants (ccxt.base.decimal_to_precision)
_CCXT_TICK_SIZE = 4
_SHORTFALL_MARGIN = 1e-12  # scaled buys leave this fraction of cash unspent against rounding error
_SHORTFALL_TRIES = 4  # margins 1e-12, 1e-9, 1e-6, 1e-3: lot rounding's float overshoot fits in one


class Fills(NamedTuple):
    """The fills of one rebalance, one entry per pair (a pair with ``qty == 0`` did not trade).

    All arrays have length N. ``qty`` is signed (+ buy, - sell, base units); ``price`` is the fill
    price (the reference price where nothing traded); ``notional = |qty| * price``; ``fee`` and
    ``slippage`` are this rebalance's costs per pair in the quote currency.
    """

    qty: np.ndarray
    price: np.ndarray
    notional: np.ndarray
    fee: np.ndarray
    slippage: np.ndarray

    @property
    def traded(self) -> np.ndarray:
        """Boolean mask of the pairs that traded."""
        return self.qty != 0.0

    @property
    def cost(self) -> np.ndarray:
        """Fees plus slippage per pair."""
        return self.fee + self.slippage


class TradingRules(NamedTuple):
    """Per-pair exchange rules (0 means no rule for that pair)."""

    lot_step: np.ndarray
    min_qty: np.ndarray
    min_notional: np.ndarray


def trading_rules_from_markets(
    markets: Mapping[str, Mapping[str, Any]], symbols: Sequence[str], precision_mode: int = _CCXT_TICK_SIZE
) -> TradingRules:
    """Lot step, minimum quantity and minimum notional per symbol from ccxt ``exchange.markets``.

    Binance in ccxt uses TICK_SIZE precision, so ``precision.amount`` is the LOT_SIZE step size;
    ``limits.amount.min`` is minQty and ``limits.cost.min`` is the (MIN_)NOTIONAL filter.
    Missing values mean no rule.
    """
    steps, min_qty, min_notional = [], [], []
    for symbol in symbols:
        if symbol not in markets:
            raise KeyError(f"{symbol} not in the exchange's markets; load_markets() first or fix the symbol")
        market = markets[symbol]
        amount_precision = (market.get("precision") or {}).get("amount")
        if amount_precision is None:
            step = 0.0
        elif precision_mode == _CCXT_DECIMAL_PLACES:
            step = 10.0 ** -float(amount_precision)
        elif precision_mode == _CCXT_TICK_SIZE:
            step = float(amount_precision)
        else:
            raise ValueError(
                f"precision mode {precision_mode} is not supported (TICK_SIZE or DECIMAL_PLACES)"
            )
        limits = market.get("limits") or {}
        steps.append(step)
        min_qty.append(float((limits.get("amount") or {}).get("min") or 0.0))
        min_notional.append(float((limits.get("cost") or {}).get("min") or 0.0))
    return TradingRules(np.array(steps), np.array(min_qty), np.array(min_notional))


def trading_rules_from_exchange(exchange: Any, symbols: Sequence[str]) -> TradingRules:
    """`trading_rules_from_markets` for a ccxt exchange whose markets are loaded."""
    if not getattr(exchange, "markets", None):
        raise ValueError("the exchange has no markets: call exchange.load_markets() first")
    return trading_rules_from_markets(exchange.markets, symbols, exchange.precisionMode)


def _per_pair(
    value: float | Mapping[str, float] | Sequence[float] | np.ndarray | None,
    symbols: Sequence[str],
    name: str,
) -> np.ndarray:
    """One rule value per pair from None (0 everywhere), a scalar, a mapping or a sequence."""
    n = len(symbols)
    if value is None:
        out = np.zeros(n)
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(symbols))
        if unknown:
            raise ConfigError(f"{name} names unknown symbol(s) {unknown}; symbols are {list(symbols)}")
        out = np.array([float(value.get(s) or 0.0) for s in symbols])
    elif np.ndim(value) == 0:
        out = np.full(n, float(value))  # type: ignore[arg-type]
    else:
        out = np.asarray(value, dtype=np.float64)
        if out.shape != (n,):
            raise ValueError(f"{name} must have one value per symbol ({n}), got shape {out.shape}")
    if not (np.all(np.isfinite(out)) and np.all(out >= 0.0)):
        raise ValueError(f"{name} must be finite and non-negative, got {out}")
    return out


class Portfolio:
    """Cash and long-only positions of N pairs in the quote currency (see the module docstring).

    Cost accessors for the last rebalance: `last_fees`, `last_slippage` (per pair, quote currency),
    `last_cost` (their sum); the returned `Fills` carries the same arrays.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        initial_cash: float,
        fee_rate: float = 0.001,
        slippage_bps: float = 0.0,
        *,
        impact_bps: float = 0.0,
        impact_exponent: float = 0.5,
        max_slippage_bps: float = 1000.0,
        lot_step: float | Mapping[str, float] | Sequence[float] | None = None,
        min_qty: float | Mapping[str, float] | Sequence[float] | None = None,
        min_notional: float | Mapping[str, float] | Sequence[float] | None = None,
        weight_tol: float = 1e-6,
        record_fills: bool = True,
    ) -> None:
        self.symbols = list(symbols)
        if not self.symbols or len(set(self.symbols)) != len(self.symbols):
            raise ValueError(f"symbols must be non-empty and unique, got {self.symbols}")
        n = len(self.symbols)
        self.n_pairs = n
        for name, val in (
            ("initial_cash", initial_cash),
            ("fee_rate", fee_rate),
            ("slippage_bps", slippage_bps),
            ("impact_bps", impact_bps),
            ("max_slippage_bps", max_slippage_bps),
            ("weight_tol", weight_tol),
        ):
            if not (math.isfinite(val) and val >= 0.0):
                raise ValueError(f"{name} must be finite and non-negative, got {val}")
        if fee_rate >= 1.0:
            raise ValueError(f"fee_rate is a fraction (0.001 = 10 bps), got {fee_rate}")
        if max_slippage_bps >= 10_000.0:
            raise ValueError(
                f"max_slippage_bps must stay below 10000 (a sell at price 0), got {max_slippage_bps}"
            )
        if not (math.isfinite(impact_exponent) and impact_exponent > 0.0):
            raise ValueError(f"impact_exponent must be positive, got {impact_exponent}")
        self.initial_cash = float(initial_cash)
        self.fee_rate = float(fee_rate)
        self.slippage_bps = float(slippage_bps)
        self.impact_bps = float(impact_bps)
        self.impact_exponent = float(impact_exponent)
        self.max_slippage_bps = float(max_slippage_bps)
        self.weight_tol = float(weight_tol)
        self.record_fills = bool(record_fills)
        self._slip = min(self.slippage_bps, self.max_slippage_bps) / 1e4
        self._impact = self.impact_bps / 1e4
        self._max_slip = self.max_slippage_bps / 1e4
        # Scalars as 0-d arrays: numpy multiplies arrays by those faster than by Python floats.
        self._slip0 = np.array(self._slip)
        self._impact0 = np.array(self._impact)
        self._max_slip0 = np.array(self._max_slip)
        self._fee0 = np.array(self.fee_rate)
        self._sqrt_impact = self.impact_exponent == 0.5
        self._volume_floor = np.array(1e-12)
        self.lot_step = _per_pair(lot_step, self.symbols, "lot_step")
        self.min_qty = _per_pair(min_qty, self.symbols, "min_qty")
        self.min_notional = _per_pair(min_notional, self.symbols, "min_notional")
        self._has_step = self.lot_step > 0.0
        self._step_safe = np.where(self._has_step, self.lot_step, 1.0)
        self._any_step = bool(self._has_step.any())
        self._all_step = bool(self._has_step.all())
        self._any_min_qty = bool((self.min_qty > 0).any())
        self._any_min_notional = bool((self.min_notional > 0).any())
        self._rules_on = self._any_step or self._any_min_qty or self._any_min_notional
        self.reset()

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_config(
        cls,
        symbols: Sequence[str],
        config: Mapping[str, Any] | None = None,
        markets: Mapping[str, Mapping[str, Any]] | None = None,
        where: str = "portfolio",
    ) -> Portfolio:
        """Build from a ``portfolio`` config section (keys of `PORTFOLIO_DEFAULTS`; unknown keys fail).

        With ``use_market_rules: true`` and ccxt ``markets`` given, the exchange's lot step, minimum
        quantity and minimum notional replace the config's rule values.
        """
        cfg = merge(PORTFOLIO_DEFAULTS, dict(config or {}), where)
        rules: dict[str, Any] = {k: cfg[k] for k in ("lot_step", "min_qty", "min_notional")}
        if cfg["use_market_rules"]:
            if markets is None:
                raise ConfigError(f"{where}.use_market_rules is true but no ccxt markets were passed")
            rules = trading_rules_from_markets(markets, symbols)._asdict()
        return cls(
            symbols,
            float(cfg["initial_cash"]),
            fee_rate=float(cfg["fee_rate"]),
            slippage_bps=float(cfg["slippage_bps"]),
            impact_bps=float(cfg["impact_bps"]),
            impact_exponent=float(cfg["impact_exponent"]),
            max_slippage_bps=float(cfg["max_slippage_bps"]),
            weight_tol=float(cfg["weight_tol"]),
            record_fills=bool(cfg["record_fills"]),
            **rules,
        )

    def reset(self, initial_cash: float | None = None) -> None:
        """Back to all cash (``initial_cash`` or the constructor's), empty book and fill log."""
        if initial_cash is not None:
            if not (math.isfinite(initial_cash) and initial_cash >= 0.0):
                raise ValueError(f"initial_cash must be finite and non-negative, got {initial_cash}")
            self.initial_cash = float(initial_cash)
        n = self.n_pairs
        self.cash = self.initial_cash
        self.book = PositionBook(self.symbols)
        self.steps = 0
        self._zeros = np.zeros(n)
        self._zeros.flags.writeable = False  # shared by every slippage-free rebalance's results
        self._ones = np.ones(n)
        self.last_fees = self._zeros
        self.last_slippage = self._zeros
        self.last_buy_scale = 1.0  # < 1 when the last rebalance scaled its buys down for lack of cash
        self._log_n = 0
        self._log_cap = 0
        self._log_ts = np.empty(0, dtype=np.int64)
        self._log = np.empty((0, 4, n))  # per rebalance: qty, price, fee, slippage

    def start_from(self, cash: float, qty: Any, prices: Any, ts_ms: int | None = None) -> None:
        """Reset to given holdings: ``cash`` plus ``qty`` base units per pair (e.g. an exchange account).

        The positions are booked as bought at ``prices`` without costs (their entry price), and
        ``initial_cash`` becomes the holdings' value there, so PnL is counted from this point on.
        """
        held = np.asarray(qty, dtype=np.float64)
        if held.shape != (self.n_pairs,) or not (np.all(np.isfinite(held)) and np.all(held >= 0.0)):
            raise ValueError(f"qty must be {self.n_pairs} finite non-negative quantities, got {held}")
        p = self._prices(prices)
        if not (math.isfinite(cash) and cash >= 0.0):
            raise ValueError(f"cash must be finite and non-negative, got {cash}")
        self.reset(float(cash) + float(held @ p))
        self.book.apply(held, p, self._zeros, self._zeros, ts_ms)
        self.cash = float(cash)

    # ------------------------------------------------------------------ state
    @property
    def qty(self) -> np.ndarray:
        """Held base quantity per pair (the book's array: do not modify)."""
        return self.book.qty

    @property
    def total_fees(self) -> float:
        """Fees paid since the last reset (quote currency)."""
        return float(self.book.fees_paid.sum())

    @property
    def total_slippage(self) -> float:
        """Slippage costs paid since the last reset (quote currency)."""
        return float(self.book.slippage_paid.sum())

    @property
    def last_cost(self) -> np.ndarray:
        """Fees plus slippage per pair paid in the last rebalance (quote currency)."""
        return self.last_fees + self.last_slippage

    def _prices(self, prices: Any) -> np.ndarray:
        p = np.asarray(prices, dtype=np.float64)
        if p.shape != (self.n_pairs,):
            raise ValueError(f"prices must have shape ({self.n_pairs},), got {p.shape}")
        listed = p.tolist()
        if not (min(listed) > 0.0 and sum(listed) < math.inf):  # a nan sum fails the test too
            raise ValueError(f"prices must be finite and positive, got {p}")
        return p

    def value(self, prices: Any) -> float:
        """Cash plus positions marked at ``prices`` (one per pair)."""
        return self.cash + float(self.book.qty @ self._prices(prices))

    def weights(self, prices: Any) -> np.ndarray:
        """Weights of the pairs (``symbols`` order) then cash, at ``prices``; they sum to 1."""
        p = self._prices(prices)
        held = self.book.qty * p
        total = self.cash + held.sum()
        out = np.empty(self.n_pairs + 1)
        if total <= 0.0:  # ruined: nothing left anywhere; report it as all cash
            out[:-1] = 0.0
            out[-1] = 1.0
            return out
        out[:-1] = held / total
        out[-1] = self.cash / total
        return out

    def position(self, symbol: str | int) -> Position:
        """A live read-only `Position` view of one pair (by symbol or index); `reset` detaches it."""
        index = symbol if isinstance(symbol, int) else self.symbols.index(symbol)
        return Position(self.symbols[index], self.book, index)

    def positions(self) -> list[Position]:
        return [Position(s, self.book, i) for i, s in enumerate(self.symbols)]

    def round_trips(self) -> list[RoundTrip]:
        """Every pair's round trips (closed ones, then open ones), in ``symbols`` order."""
        return [trip for i in range(self.n_pairs) for trip in self.book.round_trips(i)]

    # ------------------------------------------------------------------ rebalance
    def _check_targets(self, target_weights: Any) -> np.ndarray:
        w = np.asarray(target_weights, dtype=np.float64)
        if w.shape != (self.n_pairs + 1,):
            raise ValueError(
                f"target weights must have shape ({self.n_pairs + 1},) = {self.n_pairs} pairs then cash, "
                f"got {w.shape}"
            )
        # Python's sum/min over a list beat numpy's reductions on a few dozen floats; a nan or inf
        # makes the sum non-finite, so the test fails for them too.
        listed = w.tolist()
        total = sum(listed)
        if min(listed) >= 0.0 and abs(total - 1.0) <= self.weight_tol:
            return w
        if not np.all(np.isfinite(w)):
            raise ValueError(f"target weights must be finite, got {w}")
        if w.min() < 0.0:
            bad = [self._label(i) for i in np.flatnonzero(w < 0.0)]
            raise ValueError(f"target weights must be non-negative (long-only, no leverage); negative: {bad}")
        raise ValueError(
            f"target weights must sum to 1 within {self.weight_tol} (pairs then cash), got {total!r}"
        )

    def _label(self, i: int) -> str:
        return self.symbols[i] if i < self.n_pairs else "cash"

    def _slippage(self, abs_qty: np.ndarray, volumes: np.ndarray | None) -> np.ndarray:
        """Slippage fraction per pair: fixed part plus the volume-participation part, capped."""
        # The volume floor turns zero volume into a huge participation (hence the cap) without the
        # cost of an errstate block; a nan volume gives nan, which fmin also maps to the cap.
        participation = abs_qty / np.maximum(volumes, self._volume_floor)
        if self._sqrt_impact:
            impact = np.sqrt(participation)
        else:
            impact = participation**self.impact_exponent
        return np.fmin(self._slip0 + self._impact0 * impact, self._max_slip0)

    def _apply_rules(self, dq: np.ndarray, price: np.ndarray) -> np.ndarray:
        """Round |dq| down to the lot step, never sell more than held, skip orders under the minimums."""
        abs_q = np.abs(dq)
        if self._any_step:
            # The epsilon keeps 2.9999999999 lots (float noise) at 3 lots; the clamp below keeps sells
            # within the holding when it rounds up.
            rounded = np.floor(abs_q / self._step_safe + 1e-9) * self._step_safe
            abs_q = rounded if self._all_step else np.where(self._has_step, rounded, abs_q)
        signed = np.maximum(np.copysign(abs_q, dq), -self.book.qty)
        if self._any_min_notional:
            signed *= abs_q * price >= self.min_notional  # notional at the reference price
        if self._any_min_qty:
            signed *= abs_q >= self.min_qty
        return signed

    def rebalance(
        self,
        target_weights: Any,
        prices: Any,
        volumes: Any = None,
        ts_ms: int | None = None,
    ) -> Fills:
        """Trade towards ``target_weights`` (N pairs then cash) at reference ``prices``; return the fills.

        ``volumes`` (base units per pair, e.g. the execution bar's volume) feeds the volume slippage
        model and is required when ``impact_bps > 0``. ``ts_ms`` stamps the fills and round trips.
        See the module docstring for the exact semantics.
        """
        w, p, vol = self._inputs(target_weights, prices, volumes)
        dq, fill_price, notional, fee, slippage_cost, new_cash, self.last_buy_scale = self._plan(w, p, vol)
        self.book.apply(dq, fill_price, fee, slippage_cost, ts_ms)
        self.cash = new_cash
        self.last_fees = fee
        self.last_slippage = slippage_cost
        if self.record_fills:
            self._record(dq, fill_price, fee, slippage_cost, ts_ms)
        self.steps += 1
        return Fills(dq, fill_price, notional, fee, slippage_cost)

    def plan_rebalance(self, target_weights: Any, prices: Any, volumes: Any = None) -> Fills:
        """The `Fills` that ``rebalance(target_weights, prices, volumes)`` would return, without trading.

        Same rules (sells first, buys scaled so cash never goes negative, lot step and minimums);
        live trading turns these quantities into exchange orders.
        """
        dq, fill_price, notional, fee, slippage_cost, _, _ = self._plan(
            *self._inputs(target_weights, prices, volumes)
        )
        return Fills(dq, fill_price, notional, fee, slippage_cost)

    def _inputs(
        self, target_weights: Any, prices: Any, volumes: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Checked targets, prices and (when the volume model is on) volumes as arrays."""
        w = self._check_targets(target_weights)
        p = self._prices(prices)
        if self._impact == 0.0:
            return w, p, None
        if volumes is None:
            raise ValueError("impact_bps > 0 needs the bar volumes: pass volumes=")
        vol = np.asarray(volumes, dtype=np.float64)
        if vol.shape != (self.n_pairs,):
            raise ValueError(f"volumes must have shape ({self.n_pairs},), got {vol.shape}")
        return w, p, vol

    def _plan(
        self, w: np.ndarray, p: np.ndarray, vol: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, float]:
        """The rebalance's orders and costs without booking them: (dq, fill price, notional, fee,
        slippage cost, cash after, buy scale). `rebalance` books them; `plan_rebalance` only shows them."""
        n = self.n_pairs
        cash = self.cash
        value = cash + float(self.book.qty.dot(p))

        # Order sizes exactly as vectorbt's target-percent orders compute them: (w * value) / price - qty.
        dq = w[:n] * value / p - self.book.qty
        if self._rules_on:
            dq = self._apply_rules(dq, p)
        fill_price, notional, fee, slippage_cost, new_cash = self._costs(dq, p, vol)
        scale = 1.0

        if new_cash < 0.0:
            # Shortfall: sells (positive flows) fund the buys; scale every buy by one factor. Costs
            # per unit never grow when an order shrinks, so the scaled buys fit into the cash.
            bought = np.maximum(dq, 0.0)
            needed = float(bought.dot(fill_price)) * (1.0 + self.fee_rate)  # buys' cash incl. fees
            available = cash + float((bought - dq).dot(fill_price)) * (1.0 - self.fee_rate)  # after sells
            wanted = dq
            margin = _SHORTFALL_MARGIN
            for _ in range(_SHORTFALL_TRIES):
                scale = max(available, 0.0) / needed * (1.0 - margin)
                dq = wanted + bought * (scale - 1.0)
                if self._rules_on:
                    dq = self._apply_rules(dq, p)
                fill_price, notional, fee, slippage_cost, new_cash = self._costs(dq, p, vol)
                if new_cash >= 0.0 or not self._rules_on:
                    break
                # Lot rounding overshot: at billions of lots, quantity / lot_step rounds up to the next
                # whole lot in floating point. Leave a larger share of the cash unspent and round again.
                margin *= 1e3
            if new_cash < 0.0:
                if new_cash < -1e-9 * max(value, 1.0):
                    raise RuntimeError(f"rebalance would leave cash at {new_cash}: accounting bug")
                new_cash = 0.0  # float noise of the scaled sum, far below a cent

        return dq, fill_price, notional, fee, slippage_cost, new_cash, scale

    def _costs(
        self, dq: np.ndarray, p: np.ndarray, vol: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """Fill prices, notionals, fees, slippage costs and the cash after trading ``dq`` at ``p``."""
        if vol is None and self._slip == 0.0:
            # Fast path without slippage: fills at the reference prices.
            fill_price = p.copy()  # never hand the caller's price array back inside Fills
            notional = np.abs(dq) * p
            slippage_cost = self._zeros
        else:
            side = np.sign(dq)
            abs_q = dq * side
            slip = self._slip0 if vol is None else self._slippage(abs_q, vol)
            price_move = p * (side * slip)  # signed: against the trader
            fill_price = p + price_move
            notional = abs_q * fill_price
            slippage_cost = dq * price_move  # = |dq| * p * slip
        fee = notional * self._fee0
        new_cash = self.cash - float(dq.dot(fill_price)) - float(fee.dot(self._ones))
        return fill_price, notional, fee, slippage_cost, new_cash

    # ------------------------------------------------------------------ fill log
    def _record(
        self, dq: np.ndarray, price: np.ndarray, fee: np.ndarray, slip: np.ndarray, ts_ms: int | None
    ) -> None:
        i = self._log_n
        if i == self._log_cap:  # grow geometrically: amortized O(1) per rebalance
            cap = max(256, 2 * self._log_cap)
            log = np.empty((cap, 4, self.n_pairs))
            log[:i] = self._log[:i]
            ts = np.empty(cap, dtype=np.int64)
            ts[:i] = self._log_ts[:i]
            self._log, self._log_ts, self._log_cap = log, ts, cap
        row = self._log[i]
        row[0] = dq
        row[1] = price
        row[2] = fee
        row[3] = slip
        self._log_ts[i] = -1 if ts_ms is None else ts_ms
        self._log_n = i + 1

    def fill_log(self) -> np.ndarray:
        """Every fill since the last reset as a structured array (`FILL_DTYPE`), in time then pair order."""
        if not self.record_fills:
            raise RuntimeError("fill recording is off (record_fills=False)")
        log = self._log[: self._log_n]
        step, pair = np.nonzero(log[:, 0, :])
        out = np.empty(len(step), dtype=FILL_DTYPE)
        qty = log[step, 0, pair]
        out["step"] = step
        out["ts_ms"] = self._log_ts[step]
        out["pair"] = pair
        out["side"] = np.sign(qty).astype(np.int8)
        out["qty"] = np.abs(qty)
        out["price"] = log[step, 1, pair]
        out["notional"] = out["qty"] * out["price"]
        out["fee"] = log[step, 2, pair]
        out["slippage"] = log[step, 3, pair]
        return out
