"""The one episode loop: a policy (or a target schedule) traded through `Portfolio`, bar by bar.

Timing (the env's): a decision taken after the close of bar t executes at the OPEN of bar t+1
through `Portfolio.rebalance` (fees, slippage, exchange rules), unless the turnover
0.5*sum|target - current| is at most ``env.meta.rebalance_band``; the portfolio is marked at the
CLOSE of bar t+1, whose weights the next decision sees. `execute` and `close_weights` are that step,
shared by the env (`SequentialTradingEnv`, which adds rewards), `decision.play_policy` (validation,
backtests, walk-forward folds, paper replays: the policy's episode loop, beside the policy) and
`simulate_targets` (benchmarks, the synthetic oracle). `BacktestRecord` / `Recorder` record a path
bar by bar; `score_equity` gives the validation metrics of an equity curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import metrics
from market_arrays import MarketData
from Portfolio import Portfolio


@dataclass
class BacktestRecord:
    """One strategy's path over T bars (N pairs; the last weight column is cash).

    Row t describes bar t: the rebalance executed at its open (if any), then the mark at its close.
    """

    name: str
    symbols: list[str]
    open_time_ms: np.ndarray  # [T]
    equity: np.ndarray  # [T] portfolio value at each bar's close (quote currency)
    weights_before: np.ndarray  # [T, N+1] weights at the open, before the rebalance
    weights_after: np.ndarray  # [T, N+1] weights right after the rebalance (held through the bar)
    fees: np.ndarray  # [T, N] fees paid per pair (quote currency)
    pnl: np.ndarray  # [T, N] per-pair PnL over the bar, net of its fees and slippage (quote currency)
    calls: np.ndarray | None = None  # [T, N] specialists' answers at bar t's close: -1 sell, 0 hold, +1 buy
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self, periods: float) -> dict[str, float]:
        """Every metric of `metrics.METRIC_NAMES` for this path."""
        return metrics.compute_all(self.equity, periods, self.weights_before, self.weights_after, self.fees)


def make_portfolio(symbols: Sequence[str], portfolio_cfg: Mapping[str, Any] | None) -> Portfolio:
    """A `Portfolio` from a ``portfolio`` config section (the run's), fills recorded off for speed."""
    cfg = dict(portfolio_cfg or {})
    cfg["record_fills"] = False  # the backtest keeps its own per-bar record
    return Portfolio.from_config(symbols, cfg)


class Recorder:
    """Builds a `BacktestRecord` from a `Portfolio` that someone else trades, one call per bar.

    Call `bar(t, fills)` once per bar t after that bar's rebalance at the open (``fills=None`` when
    nothing traded). The loop only copies the holdings; weights, equity and per-pair PnL are derived
    in `record` with array operations, which keeps a year of hourly bars cheap.
    """

    def __init__(self, name: str, market: MarketData, portfolio: Portfolio) -> None:
        steps, n = market.n_bars, market.n_pairs
        self.name, self.market, self.portfolio = name, market, portfolio
        self.initial_value = float(portfolio.value(market.open[0]))
        self.initial_cash = float(portfolio.cash)
        self.initial_qty = portfolio.qty.copy()
        self.qty = np.zeros((steps, n))  # holdings after bar t's rebalance
        self.cash = np.zeros(steps)
        self.fees = np.zeros((steps, n))
        self.slippage = np.zeros((steps, n))  # slippage cost per pair (quote), already in the fill prices
        self.calls: np.ndarray | None = None
        self._n = 0

    def bar(self, t: int, fills: Any = None) -> None:
        """Record bar t's holdings after its rebalance; ``fills`` is the `Fills` it returned, if any."""
        self.qty[t] = self.portfolio.qty
        self.cash[t] = self.portfolio.cash
        if fills is not None:
            self.fees[t] = fills.fee
            self.slippage[t] = fills.slippage
        self._n = t + 1

    def bar_from_portfolio(self, t: int, traded: bool) -> None:
        """Record bar t when only the portfolio is at hand (an env traded it): ``traded`` says whether
        it rebalanced during this bar, so that its last rebalance's costs belong to bar t."""
        if traded:
            self.fees[t] = self.portfolio.last_fees
            self.slippage[t] = self.portfolio.last_slippage
        self.qty[t] = self.portfolio.qty
        self.cash[t] = self.portfolio.cash
        self._n = t + 1

    def record(self) -> BacktestRecord:
        """The recorded bars as a `BacktestRecord`."""
        n = self._n
        m = self.market
        qty, cash, fees = self.qty[:n], self.cash[:n], self.fees[:n]
        open_, close = m.open[:n], m.close[:n]
        qty_prev = np.vstack((self.initial_qty[None, :], qty[:-1]))
        # Quote paid into each pair at the open (sells negative): fills are the open -+ slippage, so
        # qty * fill price = dq * open + slippage cost on either side.
        flow = (qty - qty_prev) * open_ + self.slippage[:n]
        cash_prev = np.concatenate(([self.initial_cash], cash[:-1]))

        def weights(q: np.ndarray, c: np.ndarray, p: np.ndarray) -> np.ndarray:
            held = q * p
            total = c + held.sum(axis=1)
            w = np.column_stack((held, c))
            safe = np.where(total > 0.0, total, 1.0)[:, None]
            # A ruined portfolio (nothing left) counts as all cash, as Portfolio.weights says.
            return np.where(total[:, None] > 0.0, w / safe, np.eye(q.shape[1] + 1)[-1])

        held_close = qty * close
        held_prev_close = np.vstack((self.initial_qty[None, :] * m.open[0], held_close[:-1]))
        return BacktestRecord(
            name=self.name,
            symbols=list(m.symbols),
            open_time_ms=np.asarray(m.open_time_ms[:n]),
            equity=cash + held_close.sum(axis=1),
            weights_before=weights(qty_prev, cash_prev, open_),
            weights_after=weights(qty, cash, open_),
            fees=fees.copy(),
            # The change of a position's value minus what was paid into it; cash itself earns nothing.
            pnl=held_close - held_prev_close - flow - fees,
            calls=None if self.calls is None else self.calls[:n].copy(),
        )


def simulate_targets(
    name: str,
    market: MarketData,
    targets: np.ndarray,
    portfolio_cfg: Mapping[str, Any] | None = None,
) -> BacktestRecord:
    """Trade a precomputed target-weight schedule through `Portfolio` with the env's timing.

    ``targets[t]`` ([T, N+1], pairs then cash) is decided after bar t's close and executed at bar
    t+1's open; a row of NaN means "no rebalance" (hold whatever drifted). The last row is unused.
    """
    steps, n = market.n_bars, market.n_pairs
    targets = np.asarray(targets, dtype=np.float64)
    if targets.shape != (steps, n + 1):
        raise ValueError(f"targets must be [T, N+1] = {(steps, n + 1)}, got {targets.shape}")
    pf = make_portfolio(market.symbols, portfolio_cfg)
    rec = Recorder(name, market, pf)
    act = ~np.isnan(targets).any(axis=1)
    need_volume = pf.impact_bps > 0.0
    open_, volume, times, act = market.open, market.volume, market.open_time_ms.tolist(), act.tolist()
    for t in range(steps):
        fills = None
        if t > 0 and act[t - 1]:
            fills = pf.rebalance(targets[t - 1], open_[t], volumes=volume[t] if need_volume else None,
                                 ts_ms=times[t])
        rec.bar(t, fills)
    return rec.record()


def execute(
    pf: Portfolio,
    target: np.ndarray,
    open_prices: np.ndarray,
    volumes: np.ndarray | None,
    ts_ms: int,
    band: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """Rebalance ``pf`` to ``target`` (pairs then cash) at ``open_prices`` unless the turnover is at
    most ``band``. Returns (turnover, fees [N], costs [N] = fees + slippage); zeros when skipped."""
    n = open_prices.shape[0]
    qty0 = pf.qty
    cash0 = pf.cash
    value_open = cash0 + float(qty0.dot(open_prices))
    if value_open > 0.0:
        turnover = 0.5 * (
            float(np.abs(target[:n] - qty0 * open_prices / value_open).sum())
            + abs(target[n] - cash0 / value_open)
        )
    else:
        turnover = 0.0
    if turnover > band:
        pf.rebalance(target, open_prices, volumes, ts_ms)
        fees = pf.last_fees
        return turnover, fees, (fees + pf.last_slippage if pf._slip or pf._impact else fees)
    no_cost = np.zeros(n)
    return 0.0, no_cost, no_cost


def close_weights(qty: np.ndarray, cash: float, close: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, weights [N+1], pairs then cash) of holdings marked at ``close``; all cash when ruined."""
    n = qty.shape[0]
    held = qty * close
    value = cash + float(held.sum())
    if value <= 0.0:
        return value, np.eye(n + 1)[-1]
    weights = np.empty(n + 1)
    weights[:n] = held
    weights[n] = cash
    weights *= 1.0 / value
    return value, weights


def score_equity(equity: np.ndarray, timeframe: str) -> dict[str, float]:
    """Validation metrics of an equity curve (metrics.py conventions) plus ``log_growth``."""
    periods = metrics.periods_per_year(timeframe)
    returns = metrics.simple_returns(equity)
    out = {
        "total_return": metrics.total_return(returns),
        "cagr": metrics.cagr(returns, periods),
        "sharpe": metrics.sharpe(returns, periods),
        "sortino": metrics.sortino(returns, periods),
        "calmar": metrics.calmar(returns, periods),
        "max_drawdown": metrics.max_drawdown(returns),
        "log_growth": float(np.log(equity[-1] / equity[0])),
        "bars": float(len(returns)),
    }
    return {key: float(value) for key, value in out.items()}


def finite_score(value: float) -> float:
    """Scores must order: nan (e.g. Sharpe of a flat curve) ranks as the worst."""
    return value if math.isfinite(value) else -math.inf
