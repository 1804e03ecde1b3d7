"""The backtest tearsheet: one self-contained HTML report and the same numbers for metrics.json.

`write(out_dir, records, periods, close, title=, notes=, data_source=, benchmark=)` writes
``report.html`` (every figure a base64 PNG inside the page: no external file, font, script or
link, so it opens anywhere and can be mailed) and ``metrics.json``, and returns the JSON payload.
`performance.write_report` calls it for every backtest; anything holding
`performance.BacktestRecord`-like curves (a walk-forward's stitched curve) can call it too.
``records`` maps names to curves, the agent (``agent``) first.

What the report holds, and where each number lives in metrics.json:

- Header (``header``): data source and range, bars, timeframe, run id, the checkpoint's training
  iteration and validation score, git commit, hashes of the run's config file, of the run's
  training data (the manifest's) and of the backtested bars (sha256 over bar times and closes),
  fees and slippage in words. Read from ``notes`` and from the run folder ``notes["run"]``.
- Key metrics per curve (``<curve>``): metrics.METRIC_NAMES plus ``sharpe_ci_95`` (stationary
  bootstrap, significance.py: every curve resampled with the same bars in each of the 2,000
  draws, so intervals and paired differences come from one set; ``bootstrap`` records the mean
  block length) and ``probabilistic_sharpe`` (PSR against 0). Compounded annual
  figures (CAGR, Calmar, alpha) are null in metrics.json and "n/a (window < 90 days)" in the page
  when the window is shorter than `MIN_ANNUALIZE_DAYS`: compounding a week's return to a year
  gives the absurd figures the issue saw (CAGR 589,402%). Sharpe, Sortino and volatility are
  scaled by sqrt(periods), not compounded, and keep their (wide) intervals instead.
- Against each benchmark but cash (``relative.<benchmark>``): alpha, beta, correlation,
  information ratio, tracking error, excess return and the paired bootstrap interval of the
  Sharpe difference agent - benchmark; ``relative_to`` names the chosen one (default
  equal-weight rebalanced; buy_hold_first is the first pair's hold, BTC in the usual pair list).
- Calendar (``monthly_returns``, ``yearly_returns``): compounded per UTC month/year; the excess
  heatmap is (1 + agent) / (1 + benchmark) - 1 per month, the monthly step of the excess curve.
- Rolling Sharpe and volatility over a trailing window of ``rolling_window_days`` days (30, or a
  quarter of a window shorter than 90 days). Return distribution of daily returns.
- ``drawdowns``: each curve's five deepest episodes (peak, trough, recovery or "not recovered",
  depth, days under water), dated by the close of the bar.
- ``trading``: rebalances, mean turnover per rebalance, closed round trips and their win rate and
  mean holding time per pair (metrics.round_trips: `Position`'s trips), mean weights, and
  ``allocation_deviation`` (metrics.allocation_deviation): how far from its own average
  allocation the portfolio sits on an average bar; below `STATIC_DEVIATION` the page flags the
  allocation as static (an agent that learned a constant mix).
- ``specialists``: each pair's buy/hold/sell shares and hit rate (a call right when the next
  close-to-close move goes its way), and a figure of the daily (weekly beyond a year) share of
  buy and sell calls under the price, readable over a year of hourly bars.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import metrics
import significance
from settings import format_ms

DEFAULT_BENCHMARK = "equal_weight_rebalanced"
MIN_ANNUALIZE_DAYS = 90.0  # below this, compounded annual figures are not shown
STATIC_DEVIATION = 0.02  # allocation_deviation under this: flagged as a static allocation
ROLLING_DAYS = 30.0
TOP_DRAWDOWNS = 5
NOT_RECOVERED = "not recovered"
MS_PER_DAY = 86_400_000
ROOT = Path(__file__).resolve().parent


class Curve(Protocol):
    """What the tearsheet reads from a backtest path (performance.BacktestRecord has it)."""

    name: str
    symbols: list[str]
    open_time_ms: np.ndarray  # [T]
    equity: np.ndarray  # [T] value at each bar's close, the first being the initial capital
    weights_before: np.ndarray  # [T, N+1]
    weights_after: np.ndarray  # [T, N+1]
    fees: np.ndarray  # [T, N]
    pnl: np.ndarray  # [T, N]
    calls: np.ndarray | None  # [T, N] or None


# ------------------------------------------------------------------------------------- header
def _sha256_file(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def bars_hash(open_time_ms: np.ndarray, close: np.ndarray) -> str:
    """sha256 over the backtested bars' open times and closes (identifies the data of a report)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(open_time_ms, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(close, dtype=np.float64).tobytes())
    return digest.hexdigest()


def git_commit(repo: Path = ROOT) -> str | None:
    """HEAD's commit of the repository holding this code, ``-dirty`` when tracked files changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout (an installed copy): say unknown rather than fail the report
    return head + ("-dirty" if dirty else "")


def describe_costs(portfolio_cfg: Mapping[str, Any] | str | None) -> str:
    """Fees, slippage and exchange rules of a ``portfolio`` config section, in words."""
    from Portfolio import PORTFOLIO_DEFAULTS

    cfg = dict(PORTFOLIO_DEFAULTS)
    if isinstance(portfolio_cfg, Mapping):
        cfg.update(portfolio_cfg)
    parts = [f"fee {1e4 * float(cfg['fee_rate']):g} bps of each fill's notional"]
    slip = float(cfg["slippage_bps"])
    parts.append(f"fixed slippage {slip:g} bps against the trader" if slip else "no fixed slippage")
    impact = float(cfg["impact_bps"])
    if impact:
        parts.append(
            f"volume impact {impact:g} bps x (quantity / bar volume)^{float(cfg['impact_exponent']):g}, "
            f"total slippage capped at {float(cfg['max_slippage_bps']):g} bps"
        )
    else:
        parts.append("no volume impact")
    rules = [k for k in ("lot_step", "min_qty", "min_notional") if cfg.get(k)]
    if cfg.get("use_market_rules"):
        parts.append("exchange lot/notional rules from ccxt markets")
    elif rules:
        parts.append("exchange rules: " + ", ".join(f"{k}={cfg[k]}" for k in rules))
    parts.append(f"orders at the next bar's open; initial cash {float(cfg['initial_cash']):,.0f} (quote)")
    return "; ".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def header(
    notes: Mapping[str, Any] | None,
    lead: Curve,
    periods: float,
    close: np.ndarray,
    data_source: str | None = None,
) -> dict[str, Any]:
    """The report's provenance: what data, which run and checkpoint, which code, which costs.

    ``data_source`` describes the bars played (market_data.describe_source); without it, the
    run's training source from its manifest."""
    notes = dict(notes or {})
    run = Path(str(notes["run"])) if notes.get("run") else None
    manifest = _read_json(run / "manifest.json") if run else {}
    trained = _read_json(run / "metrics.json") if run else {}
    times = np.asarray(lead.open_time_ms, dtype=np.int64)
    bar_ms = 365 * MS_PER_DAY / periods
    if data_source is None and manifest:
        import market_data

        data_source = manifest.get("data_source") or market_data.describe_source(manifest.get("source") or {})
    return {
        "title_notes": {k: str(v) for k, v in notes.items() if k not in ("run", "portfolio")},
        "data_source": data_source or "not recorded",
        "range": f"{format_ms(times[0])} .. {format_ms(times[-1] + bar_ms)} UTC",
        "first_open_time_ms": int(times[0]),
        "last_open_time_ms": int(times[-1]),
        "bars": int(times.size),
        "timeframe": manifest.get("timeframe") or f"{bar_ms / 3_600_000:g}h",
        "pairs": list(lead.symbols),
        "run_id": run.name if run else None,
        "run_dir": str(run) if run else None,
        "checkpoint_iteration": trained.get("best_iteration"),
        "iterations_trained": trained.get("iterations"),
        "validation_metric": trained.get("validation_metric"),
        "validation_score": trained.get("best_validation_score"),
        "git_commit": git_commit(),
        "config_sha256": _sha256_file(run / "config.yaml") if run else None,
        "train_data_sha256": manifest.get("train_hash"),
        "bars_sha256": bars_hash(times, close),
        "costs": describe_costs(notes.get("portfolio")),
    }


# -------------------------------------------------------------------------------- numbers
def _clean(value: Any) -> Any:
    """JSON-ready: NaN/inf -> None (JSON has neither), numpy scalars and arrays -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def window_days(n_returns: int, periods: float) -> float:
    """Length of a window of ``n_returns`` bars in days (365-day years)."""
    return n_returns * 365.0 / periods


def rolling_window_days(days: float) -> float:
    """The rolling statistics' window: `ROLLING_DAYS`, or a quarter of a window shorter than 90 days."""
    return ROLLING_DAYS if days >= MIN_ANNUALIZE_DAYS else max(days / 4.0, 1.0 / 24.0)


def chosen_benchmark(records: Mapping[str, Curve], wanted: str = DEFAULT_BENCHMARK) -> str | None:
    """``wanted`` when it is among the records, else the first non-cash benchmark, else None."""
    others = [n for n in records if n not in ("agent", "cash")]
    if wanted in records and wanted != "agent":
        return wanted
    return others[0] if others else None


def drawdown_rows(curve: Curve, periods: float, top: int = TOP_DRAWDOWNS) -> list[dict[str, Any]]:
    """The ``top`` deepest drawdowns of a curve with dates (closes of the bars) and lengths in days."""
    r = metrics.simple_returns(curve.equity)
    times = np.asarray(curve.open_time_ms, dtype=np.int64)
    bar_ms = 365 * MS_PER_DAY / periods

    def close_ms(position: int) -> int:
        return int(times[position] + bar_ms)

    rows = []
    for p in metrics.drawdown_periods(r, top):
        recovered = p["recovery"] is not None
        rows.append(
            {
                "start": format_ms(close_ms(p["peak"])),
                "trough": format_ms(close_ms(p["trough"])),
                "recovery": format_ms(close_ms(p["recovery"])) if recovered else NOT_RECOVERED,
                "start_ms": close_ms(p["peak"]),
                "trough_ms": close_ms(p["trough"]),
                "recovery_ms": close_ms(p["recovery"]) if recovered else None,
                "depth": p["depth"],
                "length_bars": p["length"],
                "length_days": window_days(p["length"], periods),
            }
        )
    return rows


def trading_stats(curve: Curve, periods: float) -> dict[str, Any]:
    """Rebalances, turnover per rebalance, round trips (win rate, holding time), how static."""
    n_rebalances = metrics.rebalance_count(curve.weights_before, curve.weights_after)
    total_turnover = metrics.turnover(curve.weights_before, curve.weights_after)
    trips = metrics.round_trips(curve.weights_after, curve.pnl)
    closed = [t for t in trips if t["close"] is not None]
    bar_hours = 365 * 24 / periods
    holding: dict[str, float | None] = {}
    for i, symbol in enumerate(curve.symbols):
        lengths = [t["close"] - t["open"] for t in closed if t["pair"] == i]
        holding[symbol] = bar_hours * float(np.mean(lengths)) if lengths else None
    deviation = metrics.allocation_deviation(curve.weights_after)
    labels = [*curve.symbols, "cash"]
    return {
        "rebalances": n_rebalances,
        "mean_turnover_per_rebalance": total_turnover / n_rebalances if n_rebalances else math.nan,
        "round_trips_closed": len(closed),
        "round_trips_open": len(trips) - len(closed),
        "round_trip_win_rate": float(np.mean([t["pnl"] > 0 for t in closed])) if closed else math.nan,
        "mean_holding_hours": holding,
        "allocation_deviation": deviation,
        "static_allocation": deviation < STATIC_DEVIATION,
        "mean_weights": dict(zip(labels, np.mean(curve.weights_after, axis=0).tolist(), strict=True)),
    }


def specialist_stats(curve: Curve, close: np.ndarray) -> dict[str, dict[str, float]]:
    """Per pair: shares of buy/hold/sell calls and the hit rate of the buy and sell calls."""
    if curve.calls is None:
        return {}
    calls = np.asarray(curve.calls)
    hits = metrics.call_hit_rate(calls, close[: len(calls)])
    out = {}
    for i, symbol in enumerate(curve.symbols):
        c = calls[:, i]
        out[symbol] = {
            "buy_share": float(np.mean(c > 0)),
            "hold_share": float(np.mean(c == 0)),
            "sell_share": float(np.mean(c < 0)),
            "hit_rate": float(hits[i]),
            "calls_scored": int(np.count_nonzero((c[:-1] != 0) & (np.diff(close[: len(c), i]) != 0))),
        }
    return out


def compute(
    records: Mapping[str, Curve],
    periods: float,
    close: np.ndarray,
    *,
    notes: Mapping[str, Any] | None = None,
    data_source: str | None = None,
    benchmark: str = DEFAULT_BENCHMARK,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number of the report (see the module docstring), NaN kept (`write` turns it to null)."""
    if not records:
        raise ValueError("records is empty: pass the agent's and the benchmarks' BacktestRecords")
    names = list(records)
    lead = records[names[0]]
    returns = {n: metrics.simple_returns(records[n].equity) for n in names}
    days = window_days(len(returns[names[0]]), periods)
    annualize = days >= MIN_ANNUALIZE_DAYS
    payload: dict[str, Any] = {
        "periods_per_year": periods,
        "data_source": data_source,
        "header": header(notes, lead, periods, close, data_source),
        "window_days": days,
        "annualized": "shown" if annualize else f"n/a (window < {MIN_ANNUALIZE_DAYS:g} days)",
    }
    # One bootstrap for every curve: the same resampled bars in each draw, so each curve's interval
    # and each paired difference agent - benchmark come from the same draws.
    matrix = np.column_stack([returns[n] for n in names])
    enough = matrix.shape[0] >= 3
    block = significance.mean_block_length(*matrix.T) if enough else 1
    draws = significance.bootstrap_sharpes(matrix, periods, n_boot, block, seed) if enough else None
    payload["bootstrap"] = {
        "method": "stationary (Politis-Romano), percentile interval",
        "level": 0.95,
        "n_boot": n_boot,
        "mean_block_bars": block,
        "seed": seed,
    }
    nan_pair = [math.nan, math.nan]
    for k, n in enumerate(names):
        rec = records[n]
        row: dict[str, Any] = metrics.compute_all(
            rec.equity, periods, rec.weights_before, rec.weights_after, rec.fees
        )
        if not annualize:
            row["cagr"] = row["calmar"] = math.nan
        row["sharpe_ci_95"] = list(significance.percentile_interval(draws[:, k])) if enough else nan_pair
        row["probabilistic_sharpe"] = (
            significance.probabilistic_sharpe_ratio(returns[n]) if enough else math.nan
        )
        payload[n] = row

    base = chosen_benchmark(records, benchmark)
    payload["relative_to"] = base
    relative: dict[str, Any] = {}
    agent = returns[names[0]]
    for k, n in enumerate(names):
        if k == 0 or n == "cash":
            continue  # cash has no risk to be relative to: beta and correlation are undefined
        b = returns[n]
        relative[n] = {
            "alpha": metrics.alpha(agent, b, periods) if annualize else math.nan,
            "beta": metrics.beta(agent, b),
            "correlation": metrics.correlation(agent, b),
            "information_ratio": metrics.information_ratio(agent, b, periods),
            "tracking_error": metrics.tracking_error(agent, b, periods),
            "excess_return": float(metrics.relative_wealth(agent, b)[-1]),
            "sharpe_diff_ci_95": (
                list(significance.percentile_interval(draws[:, 0] - draws[:, k])) if enough else nan_pair
            ),
        }
    payload["relative"] = relative

    calendar: dict[str, dict[str, dict[str, float]]] = {"M": {}, "Y": {}}
    for n in names:
        for unit in calendar:
            starts, values = metrics.period_returns(returns[n], records[n].open_time_ms[1:], unit)
            calendar[unit][n] = dict(zip((str(s) for s in starts), values.tolist(), strict=True))
    payload["monthly_returns"], payload["yearly_returns"] = calendar["M"], calendar["Y"]
    payload["rolling_window_days"] = rolling_window_days(days)
    payload["drawdowns"] = {n: drawdown_rows(records[n], periods) for n in names}
    payload["trading"] = {n: trading_stats(records[n], periods) for n in names}
    payload["specialists"] = specialist_stats(lead, close)
    return payload


# -------------------------------------------------------------------------------- figures
def _png(fig: Any, *, right_in: float = 0.25, dates: bool = True) -> str:
    """A matplotlib figure as a base64 PNG data URI (then closed).

    Margins are fixed in inches (room for the labels, for rotated dates below, ``right_in`` for a
    legend or second axis on the right) rather than found with ``bbox_inches="tight"``, which draws
    every figure twice (measured: a third of the report's CPU)."""
    import matplotlib.pyplot as plt

    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.85 / width,
        right=1.0 - right_in / width,
        top=1.0 - 0.4 / height,
        bottom=(0.8 if dates else 0.45) / height,
        hspace=0.45,
    )
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _dates(open_time_ms: np.ndarray) -> np.ndarray:
    return np.asarray(open_time_ms, dtype="datetime64[ms]")


MAX_POINTS = 1500  # points drawn per line: a figure is ~900 px wide, more only costs drawing time


def _sampled(n: int) -> np.ndarray:
    """Indices of at most ~`MAX_POINTS` of ``n`` bars, evenly spread, the first and last included."""
    step = max(1, math.ceil(n / MAX_POINTS))
    return np.unique(np.append(np.arange(0, n, step), n - 1)) if n else np.arange(0)


def _style(ax: Any, ylabel: str, title: str) -> None:
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)


def _line_width(name: str) -> float:
    return 1.6 if name == "agent" else 0.9


def fig_equity(records: Mapping[str, Curve]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    for name, rec in records.items():
        at = _sampled(len(rec.equity))
        ax.plot(_dates(rec.open_time_ms)[at], np.asarray(rec.equity)[at], lw=_line_width(name), label=name)
    ax.set_yscale("log")
    _style(ax, "value (quote, log scale)", "Equity: agent vs benchmarks (same bars, fees and execution)")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def fig_excess(records: Mapping[str, Curve], base: str | None) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    agent = metrics.simple_returns(next(iter(records.values())).equity)
    dates = _dates(next(iter(records.values())).open_time_ms)
    for name, rec in list(records.items())[1:]:
        if name == "cash":
            continue
        excess = metrics.relative_wealth(agent, metrics.simple_returns(rec.equity))
        at = _sampled(len(excess))
        ax.plot(dates[at], 100 * excess[at], lw=1.6 if name == base else 0.9, label=f"vs {name}")
    ax.axhline(0.0, color="black", lw=0.6)
    _style(ax, "excess return (%)", "Excess-return curve: agent wealth / benchmark wealth - 1")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def fig_underwater(records: Mapping[str, Curve], base: str | None, rows: Sequence[Mapping[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    for name in [n for n in records if n in ("agent", base)] or list(records)[:1]:
        rec = records[name]
        dd = np.concatenate(([0.0], metrics.drawdown_series(metrics.simple_returns(rec.equity))))
        at = _sampled(len(dd))
        dates, depth = _dates(rec.open_time_ms)[at], 100 * np.minimum.reduceat(dd, at)  # steps keep troughs
        if name == "agent":
            ax.fill_between(dates, depth, 0.0, alpha=0.4, label=name, step="post", color="tab:blue")
        else:
            ax.plot(dates, depth, lw=0.9, label=name, drawstyle="steps-post", color="tab:orange")
    for k, row in enumerate(rows):  # the worst episodes' troughs, numbered as in the table
        when = np.datetime64(int(row["trough_ms"]), "ms")
        ax.annotate(str(k + 1), (when, 100 * row["depth"]), fontsize=8, ha="center", va="top")
    _style(
        ax,
        "drawdown (%)",
        "Underwater: drawdown from the running peak (the initial capital included); "
        "numbers mark the worst episodes' troughs",
    )
    ax.legend(loc="lower left", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def fig_heatmap(table: Mapping[str, float], title: str) -> str:
    """Months (columns) by years (rows), each cell a compounded monthly return in %."""
    import matplotlib.pyplot as plt

    years = sorted({int(k[:4]) for k in table})
    grid = np.full((len(years), 12), np.nan)
    for key, value in table.items():
        grid[years.index(int(key[:4])), int(key[5:7]) - 1] = 100 * value
    fig, ax = plt.subplots(figsize=(11, 0.45 * len(years) + 1.2))
    finite = grid[np.isfinite(grid)]
    bound = max(float(np.max(np.abs(finite))) if finite.size else 1.0, 1e-9)
    ax.imshow(grid, cmap="RdYlGn", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(
        range(12), ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    )
    ax.set_yticks(range(len(years)), [str(y) for y in years])
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            dark = abs(value) > 0.7 * bound  # the colour map's ends are dark: white text there
            ax.text(
                j, i, f"{value:.1f}", ha="center", va="center", fontsize=8, color="white" if dark else "black"
            )
    ax.set_title(title, fontsize=10)
    return _png(fig, dates=False)


def fig_yearly(yearly: Mapping[str, Mapping[str, float]]) -> str:
    import matplotlib.pyplot as plt

    names = [n for n in yearly if n != "cash"]
    years = sorted({y for n in names for y in yearly[n]})
    fig, ax = plt.subplots(figsize=(11, 3.2))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        values = [100 * yearly[name].get(y, math.nan) for y in years]
        ax.bar(np.arange(len(years)) + k * width, values, width, label=name)
    ax.set_xticks(np.arange(len(years)) + 0.4 - width / 2, years)
    ax.axhline(0.0, color="black", lw=0.6)
    _style(
        ax, "return (%)", "Calendar-year returns (UTC; partial years hold only the bars inside the window)"
    )
    ax.legend(loc="best", fontsize=8)
    return _png(fig, dates=False)


def fig_rolling(records: Mapping[str, Curve], base: str | None, periods: float, days: float) -> str:
    import matplotlib.pyplot as plt

    window = max(2, round(days * periods / 365.0))
    fig, axes = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    for name in [n for n in records if n in ("agent", base)]:
        rec = records[name]
        r = metrics.simple_returns(rec.equity)
        at = _sampled(len(r))
        dates = _dates(rec.open_time_ms[1:])[at]
        axes[0].plot(dates, metrics.rolling_sharpe(r, window, periods)[at], lw=_line_width(name), label=name)
        axes[1].plot(
            dates, 100 * metrics.rolling_volatility(r, window, periods)[at], lw=_line_width(name), label=name
        )
    axes[0].axhline(0.0, color="black", lw=0.6)
    _style(axes[0], "Sharpe (annualized)", f"Rolling Sharpe ratio over a trailing {days:g}-day window")
    _style(axes[1], "volatility (%, annualized)", f"Rolling volatility over a trailing {days:g}-day window")
    axes[0].legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def daily_returns(curve: Curve) -> np.ndarray:
    """Compounded returns per UTC day of a curve."""
    return metrics.period_returns(metrics.simple_returns(curve.equity), curve.open_time_ms[1:], "D")[1]


def fig_distribution(records: Mapping[str, Curve], base: str | None) -> str:
    import matplotlib.pyplot as plt
    from scipy import stats

    fig, ax = plt.subplots(figsize=(11, 3.2))
    shown = [n for n in records if n in ("agent", base)]
    data = {n: 100 * daily_returns(records[n]) for n in shown}
    pooled = np.concatenate(list(data.values()))
    bins = np.linspace(pooled.min(), pooled.max(), 50) if pooled.size and np.ptp(pooled) > 0 else 10
    for name, values in data.items():
        label = name
        if values.size >= 3 and np.std(values) > 0:
            label += f" (skew {stats.skew(values):.2f}, excess kurtosis {stats.kurtosis(values):.2f})"
        ax.hist(values, bins=bins, alpha=0.5, label=label, histtype="stepfilled")
    _style(ax, "days", "Distribution of daily returns (%)")
    ax.legend(loc="best", fontsize=8)
    return _png(fig, dates=False)


def fig_allocation(curve: Curve) -> str:
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    labels = [s.split("/")[0] for s in curve.symbols] + ["cash"]
    w = np.asarray(curve.weights_after)
    at = _sampled(len(w))
    # Each drawn step is the mean allocation over its bars (a sample of single bars could alias).
    mean_w = np.add.reduceat(w, at, axis=0) / np.diff(np.append(at, len(w)))[:, None]
    dates = _dates(curve.open_time_ms)[at]
    ax.stackplot(dates, mean_w.T, labels=labels, linewidth=0, step="post")
    ax.set_ylim(0, 1)
    _style(ax, "weight", f"Allocation of {curve.name} after each rebalance (cash included)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax2.plot(dates, 100 * (1.0 - mean_w[:, -1]), lw=0.9, color="tab:blue", drawstyle="steps-post")
    ax2.set_ylim(-2, 102)
    _style(ax2, "exposure (%)", "Exposure: share outside cash")
    fig.autofmt_xdate()
    return _png(fig, right_in=1.3)


def fig_contribution(curve: Curve) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    cum = np.cumsum(curve.pnl, axis=0)
    at = _sampled(len(cum))
    for i, symbol in enumerate(curve.symbols):
        ax.plot(_dates(curve.open_time_ms)[at], cum[at, i], lw=1.0, label=f"{symbol} ({cum[-1, i]:+,.0f})")
    ax.axhline(0.0, color="black", lw=0.6)
    _style(ax, "cumulative PnL (quote)", f"Per-pair contribution of {curve.name}, net of fees and slippage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.autofmt_xdate()
    return _png(fig, right_in=2.0)


def fig_trading(curve: Curve) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 3.2))
    at = _sampled(len(curve.open_time_ms))
    dates = _dates(curve.open_time_ms)[at]
    per_bar = 0.5 * np.abs(np.asarray(curve.weights_after) - np.asarray(curve.weights_before)).sum(axis=1)
    ax.plot(dates, np.cumsum(per_bar)[at], color="tab:blue", lw=1.2, label="cumulative turnover")
    _style(ax, "turnover (x portfolio)", f"Cumulative turnover and fees of {curve.name}")
    fees = ax.twinx()
    fees.plot(
        dates,
        np.cumsum(np.asarray(curve.fees).sum(axis=1))[at],
        color="tab:red",
        lw=1.2,
        label="cumulative fees",
    )
    fees.set_ylabel("fees (quote)")
    lines = ax.get_lines() + fees.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="upper left", fontsize=8)
    fig.autofmt_xdate()
    return _png(fig, right_in=0.9)


def call_shares(
    calls: np.ndarray, open_time_ms: np.ndarray, unit: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(period starts, share of buy calls [P, N], share of sell calls [P, N]) per calendar ``unit``."""
    keys = _dates(open_time_ms).astype(f"datetime64[{unit}]")
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    counts = np.diff(np.append(starts, len(keys)))[:, None]
    buy = np.add.reduceat((calls > 0).astype(np.float64), starts, axis=0) / counts
    sell = np.add.reduceat((calls < 0).astype(np.float64), starts, axis=0) / counts
    return keys[starts], buy, sell


def fig_calls(
    curve: Curve, close: np.ndarray, hits: Mapping[str, Mapping[str, float]], max_pairs: int = 10
) -> str:
    """One band per pair: the price (min..max of the window) in its upper part, and under it the share
    of buy calls (green, up) and of sell calls (red, down) per day (per week beyond a year), so the
    calls stay readable over a year of hourly bars. One axis for all pairs keeps it cheap to draw."""
    import matplotlib.pyplot as plt

    assert curve.calls is not None
    n = min(len(curve.symbols), max_pairs)
    span_days = (curve.open_time_ms[-1] - curve.open_time_ms[0]) / MS_PER_DAY
    unit, word = ("D", "day") if span_days <= 366 else ("W", "week")
    starts, buy, sell = call_shares(np.asarray(curve.calls), curve.open_time_ms, unit)
    edges = np.append(starts, starts[-1] + 1).astype("datetime64[ms]")  # step edges: each period's span
    dates = _dates(curve.open_time_ms)
    at = _sampled(len(dates))
    fig, ax = plt.subplots(figsize=(11, 0.95 * n + 0.9))
    ticks, labels = [], []
    for i in range(n):
        base = n - 1 - i  # band [base, base + 1): the first pair on top
        mid, height = base + 0.2, 0.17  # the calls' zero line and the height of a 100% share
        price = close[: len(dates), i]
        low, high = float(np.min(price)), float(np.max(price))
        ax.plot(
            dates[at], base + 0.55 + 0.42 * (price[at] - low) / ((high - low) or 1.0), color="0.25", lw=0.8
        )
        ax.fill_between(
            edges, mid, mid + height * np.append(buy[:, i], buy[-1, i]), step="post", color="tab:green", lw=0
        )
        ax.fill_between(
            edges, mid - height * np.append(sell[:, i], sell[-1, i]), mid, step="post", color="tab:red", lw=0
        )
        ax.axhline(mid, color="black", lw=0.3)
        ax.axhline(base, color="0.6", lw=0.6)
        symbol = curve.symbols[i]
        hit = hits.get(symbol, {}).get("hit_rate", math.nan)
        scored = f"hit rate {100 * hit:.1f}%" if math.isfinite(hit) else "no buy/sell call scored"
        ax.text(
            dates[0], base + 0.46, f" {symbol} {low:,.4g} .. {high:,.4g}; {scored}", fontsize=7, va="center"
        )
        ticks.append(base + 0.5)
        labels.append(symbol.split("/")[0])
    ax.set_ylim(0.0, n)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_title(
        f"Specialists' calls: price (upper part of each band, scaled min..max);\nunder it the share of "
        f"buy (green, up) and sell (red, down) calls per {word}",
        fontsize=10,
    )
    fig.autofmt_xdate()
    return _png(fig)


def figures(
    records: Mapping[str, Curve], periods: float, close: np.ndarray, payload: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(id, caption, PNG data URI) of every figure, in page order."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    # The same look whatever the caller set globally (a plotting library's theme, a notebook style).
    with plt.style.context("default"):
        return _figures(records, periods, close, payload)


def _figures(
    records: Mapping[str, Curve], periods: float, close: np.ndarray, payload: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    names = list(records)
    lead = records[names[0]]
    base = payload["relative_to"]
    monthly = payload["monthly_returns"]
    out = [("equity", "Equity (log scale)", fig_equity(records))]
    if base is not None:
        out.append(("excess", f"Excess return over the benchmarks ({base} bold)", fig_excess(records, base)))
        excess_m = {
            k: (1 + v) / (1 + monthly[base][k]) - 1
            for k, v in monthly[names[0]].items()
            if k in monthly[base]
        }
        title = f"Monthly excess return over {base}: (1 + agent) / (1 + benchmark) - 1 (%)"
        out.append(("monthly_excess", f"Monthly excess over {base} (%)", fig_heatmap(excess_m, title)))
    title = f"Monthly returns of {names[0]} (%)"
    out.append(("monthly", "Monthly returns of the agent (%)", fig_heatmap(monthly[names[0]], title)))
    out.append(("yearly", "Yearly returns beside the benchmarks", fig_yearly(payload["yearly_returns"])))
    days = payload["rolling_window_days"]
    rolling = fig_rolling(records, base, periods, days)
    out.append(("rolling", f"Rolling Sharpe ratio and volatility ({days:g}-day window)", rolling))
    out.append(("distribution", "Distribution of daily returns", fig_distribution(records, base)))
    underwater = fig_underwater(records, base, payload["drawdowns"][names[0]])
    out.append(("underwater", "Underwater curve (numbers: the table's episodes)", underwater))
    out.append(("allocation", "Allocation and exposure", fig_allocation(lead)))
    out.append(("contribution", "Per-pair contribution", fig_contribution(lead)))
    out.append(("trading", "Turnover and fees over time", fig_trading(lead)))
    if lead.calls is not None:
        out.append(("calls", "Specialists' calls", fig_calls(lead, close, payload["specialists"])))
    return out


# ----------------------------------------------------------------------------------- page
_PERCENT = {
    "total_return",
    "cagr",
    "annual_volatility",
    "max_drawdown",
    "hit_rate",
    "exposure",
    "alpha",
    "tracking_error",
    "excess_return",
    "probabilistic_sharpe",
    "round_trip_win_rate",
    "allocation_deviation",
}
_ANNUALIZED = {"cagr", "calmar", "alpha"}
_KEY_ROWS = (
    ("total_return", "Total return"),
    ("cagr", "CAGR"),
    ("annual_volatility", "Volatility (annualized)"),
    ("sharpe", "Sharpe ratio [95% interval]"),
    ("probabilistic_sharpe", "Probabilistic Sharpe (P[SR > 0])"),
    ("sortino", "Sortino ratio"),
    ("calmar", "Calmar ratio"),
    ("max_drawdown", "Max drawdown"),
    ("max_drawdown_duration_bars", "Longest drawdown (bars)"),
    ("turnover", "Turnover (x portfolio)"),
    ("fees_paid", "Fees paid (quote)"),
    ("hit_rate", "Positive bars"),
    ("exposure", "Exposure (mean)"),
)
_RELATIVE_ROWS = (
    ("alpha", "Alpha (annualized)"),
    ("beta", "Beta"),
    ("correlation", "Correlation"),
    ("information_ratio", "Information ratio"),
    ("tracking_error", "Tracking error (annualized)"),
    ("excess_return", "Excess return (geometric)"),
    ("sharpe_diff_ci_95", "Sharpe difference, 95% interval"),
)


def fmt(key: str, value: Any, na: str = "n/a") -> str:
    """One number for people: percentages for fractions, 3 decimals for ratios, separators for counts."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        if isinstance(value, float) and math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return na
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(key, v, na) for v in value) + "]"
    if key in _PERCENT:
        return f"{100 * value:.2f}%"
    if key in ("max_drawdown_duration_bars", "rebalances", "round_trips_closed", "round_trips_open", "bars"):
        return f"{value:,.0f}"
    if key == "fees_paid":
        return f"{value:,.2f}"
    return f"{value:,.3f}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{cells}</tr>{body}</table>'


def _bench_label(name: str, pairs: Sequence[str]) -> str:
    """A benchmark's column title; buy_hold_first names its pair (BTC/USDT hold in the usual list)."""
    return f"vs {name} ({pairs[0]} hold)" if name == "buy_hold_first" and pairs else f"vs {name}"


def render(
    payload: Mapping[str, Any], figs: Sequence[tuple[str, str, str]], names: Sequence[str], title: str
) -> str:
    """The HTML page: header, tables and the embedded figures."""
    e = html.escape
    h = payload["header"]
    annualize = payload["annualized"] == "shown"
    na_annual = f"n/a (window &lt; {MIN_ANNUALIZE_DAYS:g} days)"

    head_rows = [
        ("Data", e(h["data_source"])),
        ("Range", f"{e(h['range'])} ({payload['window_days']:.1f} days)"),
        (
            "Bars",
            f"{h['bars']:,} bars of {e(str(h['timeframe']))}, {len(h['pairs'])} pairs: "
            + e(", ".join(h["pairs"])),
        ),
        ("Run", e(str(h["run_id"] or "not recorded"))),
        (
            "Checkpoint",
            e(
                f"iteration {h['checkpoint_iteration']} of {h['iterations_trained']}, validation "
                f"{h['validation_metric']} {fmt('score', h['validation_score'])}"
                if h["checkpoint_iteration"] is not None
                else "not recorded"
            ),
        ),
        ("Git commit", e(str(h["git_commit"] or "unknown"))),
        (
            "Hashes (sha256)",
            e(
                f"config {str(h['config_sha256'] or 'n/a')[:16]}, training data "
                f"{str(h['train_data_sha256'] or 'n/a')[:16]}, backtested bars {h['bars_sha256'][:16]}"
            ),
        ),
        ("Costs", e(h["costs"])),
        *((e(k), e(v)) for k, v in h["title_notes"].items()),
    ]
    header_html = "".join(f"<tr><th>{k}</th><td class='l'>{v}</td></tr>" for k, v in head_rows)

    key_rows = []
    for key, label in _KEY_ROWS:
        cells = [e(label)]
        for n in names:
            value = payload[n][key]
            if key in _ANNUALIZED and not annualize:
                cells.append(na_annual)
            elif key == "sharpe":
                cells.append(f"{fmt(key, value)} {fmt(key, payload[n]['sharpe_ci_95'])}")
            else:
                cells.append(fmt(key, value))
        key_rows.append(cells)

    relative = payload["relative"]
    base = payload["relative_to"]
    rel_names = list(relative)
    rel_rows = []
    for key, label in _RELATIVE_ROWS:
        cells = [e(label)]
        for n in rel_names:
            cells.append(na_annual if key in _ANNUALIZED and not annualize else fmt(key, relative[n][key]))
        rel_rows.append(cells)

    dd_rows = [
        [
            str(k + 1),
            e(r["start"]),
            e(r["trough"]),
            e(r["recovery"]),
            fmt("max_drawdown", r["depth"]),
            f"{r['length_days']:,.1f} d ({r['length_bars']:,} bars)",
        ]
        for k, r in enumerate(payload["drawdowns"][names[0]])
    ]

    trade_keys = (
        ("rebalances", "Rebalances"),
        ("mean_turnover_per_rebalance", "Mean turnover per rebalance"),
        ("round_trips_closed", "Round trips closed"),
        ("round_trip_win_rate", "Round-trip win rate"),
        ("allocation_deviation", "How static: mean |w - mean w| (0 = constant mix)"),
    )
    trade_rows = [
        [e(label)] + [fmt(key, payload["trading"][n][key]) for n in names] for key, label in trade_keys
    ]
    lead = payload["trading"][names[0]]
    static_note = ""
    if lead["static_allocation"]:
        static_note = (
            f"<p class='warn'>Static allocation: {e(names[0])} sits on average only "
            f"{100 * lead['allocation_deviation']:.2f}% away from its mean weights "
            f"({e(', '.join(f'{k} {100 * v:.1f}%' for k, v in lead['mean_weights'].items()))}); "
            f"it behaves like a fixed mix, not a timing strategy.</p>"
        )
    spec = payload["specialists"]
    pair_head = ["pair", "mean weight", "mean holding (closed trips)"]
    if spec:
        pair_head += ["call hit rate", "calls scored", "buy", "hold", "sell"]
    pair_rows = []
    for symbol, hours in lead["mean_holding_hours"].items():
        row = [
            e(symbol),
            fmt("hit_rate", lead["mean_weights"][symbol]),
            "n/a" if hours is None else f"{hours:,.1f} h",
        ]
        if symbol in spec:
            v = spec[symbol]
            row += [
                fmt("hit_rate", v["hit_rate"]),
                f"{v['calls_scored']:,}",
                fmt("hit_rate", v["buy_share"]),
                fmt("hit_rate", v["hold_share"]),
                fmt("hit_rate", v["sell_share"]),
            ]
        pair_rows.append(row)

    by_id = {fid: (cap, uri) for fid, cap, uri in figs}

    def fig(*ids: str) -> str:
        """The figures ``ids`` that exist, each under its caption."""
        return "".join(
            f'<h3>{e(by_id[i][0])}</h3><img data-figure="{i}" alt="{e(by_id[i][0])}" src="{by_id[i][1]}">'
            for i in ids
            if i in by_id
        )

    sections = [
        f"<h1>{e(title)}</h1>",
        f"<table class='hdr'>{header_html}</table>",
        "<h2>Key metrics</h2>",
        _table(["metric", *names], key_rows),
        "<p class='note'>Sharpe intervals: stationary bootstrap (Politis-Romano; mean block length "
        f"{payload['bootstrap']['mean_block_bars']} bars, chosen by Politis-White; "
        f"{payload['bootstrap']['n_boot']:,} draws, every curve resampled with the same bars), "
        "95% percentile interval. Probabilistic Sharpe: Bailey and L&oacute;pez de Prado, "
        "with the returns' skewness and kurtosis. Compounded annual figures are shown only for windows of "
        f"{MIN_ANNUALIZE_DAYS:g} days or more.</p>",
        fig("equity"),
    ]
    if rel_names:
        sections += [
            f"<h2>Against the benchmarks (chosen: {e(str(base))})</h2>",
            _table(
                [
                    "statistic",
                    *[_bench_label(n, h["pairs"]) + (" (chosen)" if n == base else "") for n in rel_names],
                ],
                rel_rows,
            ),
            "<p class='note'>Sharpe difference = agent - benchmark, paired stationary bootstrap "
            "(the same resampled bars for both curves). An interval containing 0 means no "
            "demonstrated edge.</p>",
            fig("excess", "monthly_excess"),
        ]
    sections += [
        "<h2>Returns over time</h2>",
        fig("monthly", "yearly", "rolling", "distribution"),
        f"<h2>Five worst drawdowns of {e(names[0])}</h2>",
        _table(["#", "start (peak)", "trough", "recovery", "depth", "under water"], dd_rows)
        if dd_rows
        else "<p>No drawdown.</p>",
        fig("underwater"),
        "<h2>Trading</h2>",
        static_note,
        _table(["statistic", *names], trade_rows),
        f"<h3>Per pair ({e(names[0])})</h3>",
        _table(pair_head, pair_rows),
        "<p class='note'>A specialist's buy (sell) call at a bar's close is right when the next close "
        "is higher (lower); holds and unchanged prices are not scored.</p>"
        if spec
        else "",
        fig("allocation", "contribution", "trading", "calls"),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td.l{text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block}"
        ".note{font-size:0.85em;color:#555}.warn{background:#fff3cd;padding:0.5em;border:1px solid #e0c36a}"
    )
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def write(
    out_dir: str | Path,
    records: Mapping[str, Curve],
    periods: float,
    close: np.ndarray,
    *,
    title: str = "Backtest",
    notes: Mapping[str, Any] | None = None,
    data_source: str | None = None,
    benchmark: str = DEFAULT_BENCHMARK,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Write ``report.html`` and ``metrics.json`` into ``out_dir``; return the JSON payload."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    close = np.asarray(close, dtype=np.float64)
    payload = compute(
        records, periods, close, notes=notes, data_source=data_source, benchmark=benchmark, n_boot=n_boot
    )
    page = render(payload, figures(records, periods, close, payload), list(records), title)
    cleaned = _clean(payload)
    (out / "metrics.json").write_text(json.dumps(cleaned, indent=2) + "\n")
    (out / "report.html").write_text(page)
    return cleaned
