"""Backtest a trained run, compare it with benchmarks on the same bars and costs, and report.

    python performance.py --run saved_models/NAME [--split test | --start DATE --end DATE]
                          [--data-dir DIR] [--out DIR]

Timing convention (the env's): a decision taken after the close of bar t executes at the OPEN of
bar t+1 through `Portfolio.rebalance` (same fee, slippage and exchange rules); equity is marked at
each bar's CLOSE. Bar 0 holds the initial cash untouched (nothing has been decided yet), so every
curve starts at the initial capital and the drawdown is measured from it.

Outputs in ``--out`` (default ``logs/NAME/backtest/``): ``metrics.json``, ``equity.csv``,
``report.html`` with PNG figures beside it, and a console table (see `write_report`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import metrics
from market_data import MarketData
from Portfolio import Portfolio

BENCHMARKS = ("buy_hold_first", "equal_weight_hold", "equal_weight_rebalanced", "cash")


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
    """Builds a `BacktestRecord` bar by bar from a `Portfolio` that someone else trades.

    Call `bar(t, fills)` once per bar after that bar's rebalance (``fills=None`` when nothing was
    rebalanced), with the portfolio as it stands; the weights before are taken from the previous
    bar's holdings marked at this bar's open.
    """

    def __init__(self, name: str, market: MarketData, portfolio: Portfolio) -> None:
        steps, n = market.n_bars, market.n_pairs
        self.name, self.market, self.portfolio = name, market, portfolio
        self.equity = np.empty(steps)
        self.w_before = np.empty((steps, n + 1))
        self.w_after = np.empty((steps, n + 1))
        self.fees = np.zeros((steps, n))
        self.pnl = np.zeros((steps, n))
        self.calls: np.ndarray | None = None
        self._prev_held = np.zeros(n)  # quote value of each position at the previous close
        self._n = 0

    def before(self, t: int) -> None:
        """Snapshot the weights at bar t's open, before any rebalance (call it first in each bar)."""
        self.w_before[t] = self.portfolio.weights(self.market.open[t])

    def after(self, t: int, fees: np.ndarray | None = None, trade_flow: np.ndarray | None = None) -> None:
        """Record bar t after its rebalance: weights held, fees, per-pair PnL and the close mark.

        ``trade_flow`` is the quote spent per pair (qty * fill price, sells negative), ``fees`` the
        fees per pair; both None when nothing traded.
        """
        pf, close = self.portfolio, self.market.close[t]
        self.w_after[t] = pf.weights(self.market.open[t])
        held = pf.qty * close
        self.equity[t] = pf.cash + float(held.sum())
        flow = 0.0 if trade_flow is None else trade_flow
        fee = 0.0 if fees is None else fees
        if fees is not None:
            self.fees[t] = fees
        # The change of a position's value minus what was paid into it: cash itself earns nothing.
        self.pnl[t] = held - self._prev_held - flow - fee
        self._prev_held = held
        self._n = t + 1

    def record(self) -> BacktestRecord:
        n = self._n
        return BacktestRecord(
            name=self.name,
            symbols=list(self.market.symbols),
            open_time_ms=np.asarray(self.market.open_time_ms[:n]),
            equity=self.equity[:n].copy(),
            weights_before=self.w_before[:n].copy(),
            weights_after=self.w_after[:n].copy(),
            fees=self.fees[:n].copy(),
            pnl=self.pnl[:n].copy(),
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
    for t in range(steps):
        rec.before(t)
        if t > 0 and act[t - 1]:
            fills = pf.rebalance(
                targets[t - 1],
                market.open[t],
                volumes=market.volume[t] if need_volume else None,
                ts_ms=int(market.open_time_ms[t]),
            )
            rec.after(t, fills.fee, fills.qty * fills.price)
        else:
            rec.after(t)
    return rec.record()


def benchmark_targets(name: str, n_bars: int, n_pairs: int) -> np.ndarray:
    """The [T, N+1] target schedule of one benchmark (NaN rows: hold)."""
    targets = np.full((n_bars, n_pairs + 1), np.nan)
    equal = np.concatenate((np.full(n_pairs, 1.0 / n_pairs), [0.0]))
    if name == "buy_hold_first":
        targets[0] = np.eye(n_pairs + 1)[0]
    elif name == "equal_weight_hold":
        targets[0] = equal
    elif name == "equal_weight_rebalanced":
        targets[:] = equal
    elif name == "cash":
        pass  # never trades
    else:
        raise ValueError(f"unknown benchmark {name!r}; known: {BENCHMARKS}")
    return targets


def run_benchmarks(
    market: MarketData, portfolio_cfg: Mapping[str, Any] | None = None, names: Sequence[str] = BENCHMARKS
) -> dict[str, BacktestRecord]:
    """Every benchmark on ``market`` with the given portfolio (fees, slippage, rules) settings."""
    steps, n = market.n_bars, market.n_pairs
    return {name: simulate_targets(name, market, benchmark_targets(name, steps, n), portfolio_cfg)
            for name in names}


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN/Infinity; null means "undefined for this path" (see metrics.py).
    return float(value) if math.isfinite(value) else None


def metrics_table(records: Mapping[str, BacktestRecord], periods: float) -> dict[str, dict[str, float]]:
    """{record name: {metric: value}} for every record."""
    return {name: rec.metrics(periods) for name, rec in records.items()}


def format_table(table: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per strategy."""
    names = list(table)
    width = max(12, *(len(n) for n in names)) + 2
    pct = {"total_return", "cagr", "annual_volatility", "max_drawdown", "hit_rate", "exposure"}
    lines = ["metric".ljust(28) + "".join(n.rjust(width) for n in names)]
    for metric in metrics.METRIC_NAMES:
        cells = []
        for n in names:
            v = table[n][metric]
            if not math.isfinite(v):
                cells.append(("nan" if math.isnan(v) else "inf").rjust(width))
            elif metric in pct:
                cells.append(f"{100 * v:.2f}%".rjust(width))
            else:
                cells.append(f"{v:,.3f}".rjust(width))
        lines.append(metric.ljust(28) + "".join(cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - filled in below
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
