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

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
        self.flow = np.zeros((steps, n))  # quote paid into each pair at bar t's open (sells negative)
        self.calls: np.ndarray | None = None
        self._n = 0

    def bar(self, t: int, fills: Any = None) -> None:
        """Record bar t's holdings after its rebalance; ``fills`` is the `Fills` it returned, if any."""
        self.qty[t] = self.portfolio.qty
        self.cash[t] = self.portfolio.cash
        if fills is not None:
            self.fees[t] = fills.fee
            self.flow[t] = fills.qty * fills.price
        self._n = t + 1

    def record(self) -> BacktestRecord:
        """The recorded bars as a `BacktestRecord`."""
        n = self._n
        m = self.market
        qty, cash, fees, flow = self.qty[:n], self.cash[:n], self.fees[:n], self.flow[:n]
        open_, close = m.open[:n], m.close[:n]
        qty_prev = np.vstack((self.initial_qty[None, :], qty[:-1]))
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
    open_, volume, times = market.open, market.volume, market.open_time_ms.tolist()
    for t in range(steps):
        fills = None
        if t > 0 and act[t - 1]:
            fills = pf.rebalance(targets[t - 1], open_[t], volumes=volume[t] if need_volume else None,
                                 ts_ms=times[t])
        rec.bar(t, fills)
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


# ---------------------------------------------------------------------------------------- report
def _dates(open_time_ms: np.ndarray) -> np.ndarray:
    return np.asarray(open_time_ms, dtype="datetime64[ms]")


def _plot_equity(path: Path, records: Mapping[str, BacktestRecord]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5))
    for name, rec in records.items():
        ax.plot(_dates(rec.open_time_ms), rec.equity, lw=1.6 if name == "agent" else 1.0, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("portfolio value (quote, log scale)")
    ax.set_title("Equity: agent vs benchmarks (same bars, fees and execution)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _plot_drawdowns(path: Path, records: Mapping[str, BacktestRecord]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.5))
    for name, rec in records.items():
        dd = np.concatenate(([0.0], metrics.drawdown_series(metrics.simple_returns(rec.equity))))
        ax.plot(_dates(rec.open_time_ms), 100 * dd, lw=1.4 if name == "agent" else 0.9, label=name)
    ax.set_ylabel("drawdown from peak (%)")
    ax.set_title("Drawdowns (peak includes the initial capital)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _plot_allocation(path: Path, rec: BacktestRecord) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.5))
    labels = [s.split("/")[0] for s in rec.symbols] + ["cash"]
    ax.stackplot(_dates(rec.open_time_ms), rec.weights_after.T, labels=labels, linewidth=0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_title(f"Allocation of {rec.name} after each rebalance (cash included)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _plot_contribution(path: Path, rec: BacktestRecord) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.5))
    cum = np.cumsum(rec.pnl, axis=0)
    for i, symbol in enumerate(rec.symbols):
        ax.plot(_dates(rec.open_time_ms), cum[:, i], lw=1.0, label=f"{symbol} ({cum[-1, i]:+,.0f})")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel("cumulative PnL (quote)")
    ax.set_title(f"Per-pair contribution of {rec.name}, net of fees and slippage")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def _plot_calls(path: Path, rec: BacktestRecord, close: np.ndarray, max_pairs: int = 10) -> None:
    import matplotlib.pyplot as plt

    assert rec.calls is not None
    n = min(len(rec.symbols), max_pairs)
    fig, axes = plt.subplots(n, 1, figsize=(11, 1.9 * n + 0.6), sharex=True, squeeze=False)
    dates = _dates(rec.open_time_ms)
    for i in range(n):
        ax = axes[i, 0]
        ax.plot(dates, close[:, i], color="0.35", lw=0.8)
        for value, marker, color, label in ((1, "^", "tab:green", "buy"), (-1, "v", "tab:red", "sell")):
            hit = rec.calls[:, i] == value
            ax.scatter(dates[hit], close[hit, i], marker=marker, color=color, s=9, label=label, zorder=3)
        ax.set_ylabel(rec.symbols[i].split("/")[0])
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_title("Specialists' calls at each close against the price (hold not drawn)")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def write_equity_csv(path: Path, records: Mapping[str, BacktestRecord]) -> None:
    """``open_time_ms`` then one column of portfolio values per record (the agent first)."""
    names = list(records)
    times = next(iter(records.values())).open_time_ms
    with path.open("w") as handle:
        handle.write(",".join(["open_time_ms", *names]) + "\n")
        columns = np.column_stack([records[n].equity for n in names])
        for ts, row in zip(times.tolist(), columns.tolist(), strict=True):
            handle.write(f"{ts}," + ",".join(repr(v) for v in row) + "\n")


def write_report(
    out_dir: str | Path,
    records: Mapping[str, BacktestRecord],
    periods: float,
    close: np.ndarray,
    title: str = "Backtest",
    notes: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, float]]:
    """Write metrics.json, equity.csv, the PNG figures and report.html into ``out_dir``.

    ``records`` maps names to paths, the agent (named ``agent``) first, then the benchmarks.
    ``close`` [T, N] is the price the specialists' calls are drawn against. Returns the metrics.
    """
    import html

    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics_table(records, periods)
    payload: dict[str, Any] = {"periods_per_year": periods}
    payload.update({name: {k: _finite_or_none(v) for k, v in row.items()} for name, row in table.items()})
    (out / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
    write_equity_csv(out / "equity.csv", records)

    lead = next(iter(records.values()))
    figures = [("equity.png", "Equity (log scale)"), ("drawdowns.png", "Drawdowns")]
    _plot_equity(out / "equity.png", records)
    _plot_drawdowns(out / "drawdowns.png", records)
    _plot_allocation(out / "allocation.png", lead)
    figures.append(("allocation.png", "Allocation"))
    _plot_contribution(out / "contribution.png", lead)
    figures.append(("contribution.png", "Per-pair contribution"))
    if lead.calls is not None:
        _plot_calls(out / "calls.png", lead, close)
        figures.append(("calls.png", "Specialists' calls"))

    rows = []
    names = list(table)
    for metric in metrics.METRIC_NAMES:
        cells = "".join(f"<td>{table[n][metric]:.4g}</td>" for n in names)
        rows.append(f"<tr><th>{metric}</th>{cells}</tr>")
    start, end = (str(d) for d in _dates(lead.open_time_ms[[0, -1]]))
    notes_html = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in (notes or {}).items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(lead.equity)} bars from {start} to {end} UTC, {len(lead.symbols)} pairs
({html.escape(", ".join(lead.symbols))}); {periods:g} periods per year.</p>
<ul>{notes_html}</ul>
<table><tr><th>metric</th>{"".join(f"<th>{html.escape(n)}</th>" for n in names)}</tr>{"".join(rows)}</table>
<p>Conventions: simple per-bar returns of the equity curve; Sharpe = mean/std(ddof=1)&middot;&radic;periods;
Sortino with the downside deviation over all bars; max drawdown from the initial capital; Calmar = CAGR/|max
drawdown|; turnover = &frac12;&Sigma;|&Delta;w| over pairs and cash, summed over bars; exposure = mean
weight outside cash; hit rate = share of positive bars among bars that moved.</p>
{"".join(f'<h2>{cap}</h2><img src="{png}" alt="{cap}">' for png, cap in figures)}
</body></html>
"""
    (out / "report.html").write_text(page)
    return table


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - filled in below
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
