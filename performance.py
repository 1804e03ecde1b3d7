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

import argparse
import datetime as dt
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import console
import metrics
import tearsheet
from market_data import MarketData
from Portfolio import Portfolio
from settings import ConfigError, parse_time_ms

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


_PERCENT_METRICS = {"total_return", "cagr", "annual_volatility", "max_drawdown", "hit_rate", "exposure"}


def format_value(metric: str, value: float) -> str:
    """One metric for people: fractions as percentages, counts and ratios with 3 decimals."""
    if not math.isfinite(value):
        return console.MISSING if math.isnan(value) else ("inf" if value > 0 else "-inf")  # undefined
    if metric in _PERCENT_METRICS:
        return f"{100 * value:.2f}%"
    if metric == "max_drawdown_duration_bars":
        return f"{value:,.0f}"
    return f"{value:,.3f}"


def format_table(table: Mapping[str, Mapping[str, float]], title: str | None = None) -> str:
    """A plain-text table: one row per metric, one column per strategy, under ``title`` if given."""
    names = list(table)
    width = max(12, *(len(n) for n in names)) + 2
    lines = [title] if title else []
    lines.append("metric".ljust(28) + "".join(n.rjust(width) for n in names))
    for metric in metrics.METRIC_NAMES:
        cells = "".join(format_value(metric, table[n][metric]).rjust(width) for n in names)
        lines.append(metric.ljust(28) + cells)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- report
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
    data_source: str | None = None,
    benchmark: str = tearsheet.DEFAULT_BENCHMARK,
) -> dict[str, dict[str, float]]:
    """Write equity.csv, metrics.json and the self-contained report.html (tearsheet.py) into ``out_dir``.

    ``records`` maps names to paths, the agent (named ``agent``) first, then the benchmarks.
    ``close`` [T, N] is the price the specialists' calls are drawn and scored against; ``notes``
    (``run``: the run folder, ``range``, ``portfolio``: its settings) feed the report's header;
    ``data_source`` (market_data.describe_source of the bars played) heads the report and
    metrics.json; ``benchmark`` is the one the relative statistics are shown against. Returns the
    metrics.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_equity_csv(out / "equity.csv", records)
    tearsheet.write(out, records, periods, close, title=title, notes=notes, data_source=data_source,
                    benchmark=benchmark)
    return metrics_table(records, periods)


# ------------------------------------------------------------------------------------ backtest
class BacktestError(Exception):
    """The backtest cannot run as asked; the message says why and what to do."""


def parse_date_ms(value: str, flag: str) -> int:
    """'2021-04-01' or '2021-04-01T12:00' (UTC) as epoch milliseconds; BacktestError naming ``flag``."""
    try:
        return parse_time_ms(value, flag)
    except ConfigError as exc:
        raise BacktestError(str(exc)) from None


def check_manifest(manifest: Mapping[str, Any], market: MarketData) -> None:
    """Refuse data whose symbols, timeframe or features differ from what the run was trained on."""
    problems = []
    if list(manifest.get("symbols", [])) != list(market.symbols):
        problems.append(f"symbols {list(market.symbols)} != the run's {manifest.get('symbols')}")
    if manifest.get("timeframe") != market.timeframe:
        problems.append(f"timeframe {market.timeframe!r} != the run's {manifest.get('timeframe')!r}")
    names = manifest.get("feature_names")
    if names is not None and list(names) != list(market.feature_names):
        problems.append(f"features {list(market.feature_names)} != the run's {list(names)}")
    if problems:
        raise BacktestError(
            "the data does not match the run's manifest: " + "; ".join(problems)
            + ". Pass data with the run's pairs and timeframe (--data-dir, or the run's own source)."
        )


def check_split_data(
    manifest: Mapping[str, Any], split: str | None, market: MarketData, allow_change: bool = False
) -> list[str]:
    """Refuse bars of one of the run's splits that differ from what the manifest recorded at training
    (a re-ingest, a backfill, other CSV files), naming what changed; ``allow_change`` (the
    ``--allow-data-change`` flag) returns the changes instead. ``split=None`` (--start/--end): nothing
    to compare with."""
    import run_files

    changes = [] if split is None else run_files.compare_split(manifest, split, market)
    if changes and not allow_change:
        raise BacktestError(
            f"the {split} split's data differs from what the run recorded at training: "
            + "; ".join(changes)
            + ". Backtest the data the run saw (restore the source), or pass --allow-data-change to "
            "backtest the new data on purpose"
        )
    return changes


def load_market(
    cfg: Mapping[str, Any], manifest: Mapping[str, Any], data_dir: str | Path | None
) -> MarketData:
    """The run's own data source, or CSV candles from ``data_dir`` for the run's pairs and timeframe."""
    import market_data
    from settings import ConfigError

    if data_dir is None:
        source = dict(cfg["data"]["source"])
    else:
        if not Path(data_dir).is_dir():
            raise BacktestError(f"--data-dir {data_dir} is not a directory of CSV candles")
        source = {"kind": "csv", "path": str(data_dir), "symbols": list(manifest["symbols"]),
                  "timeframe": manifest["timeframe"]}
    try:
        return market_data.load(source)
    except (FileNotFoundError, ValueError, ConfigError) as exc:
        raise BacktestError(f"cannot load the run's pairs {manifest.get('symbols')} "
                            f"({manifest.get('timeframe')}) from {source}: {exc}") from exc


def select_range(
    cfg: Mapping[str, Any], market: MarketData, split: str | None, start: str | None, end: str | None
) -> tuple[MarketData, str]:
    """Bars of the chosen split (dates from the run's config) or of [start, end); refuse an empty range."""
    import Train

    if start is not None or end is not None:
        start_ms = None if start is None else parse_date_ms(start, "--start")
        end_ms = None if end is None else parse_date_ms(end, "--end")
        if start_ms is not None and end_ms is not None and start_ms >= end_ms:
            raise BacktestError(f"--start {start} must be before --end {end}")
        label = f"{start or 'start'} .. {end or 'end'}"
    else:
        split = split or "test"
        ranges = Train.split_ranges_ms(dict(cfg))
        if split not in ranges:
            raise BacktestError(f"--split {split!r} unknown; the run defines {sorted(ranges)}")
        start_ms, end_ms = ranges[split]
        label = f"{split} split"
    part = market.slice_time(start_ms, end_ms)
    if part.n_bars < 2:
        covers = (f"{_iso(market.open_time_ms[0])} .. {_iso(market.open_time_ms[-1])}"
                  if market.n_bars else "nothing")
        raise BacktestError(f"the {label} holds {part.n_bars} bars (need at least 2); "
                            f"the data covers {covers}")
    return part, label


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC).isoformat(timespec="minutes")


def play_agent(cfg: Mapping[str, Any], policy: Any, market: MarketData, seed: int = 0) -> BacktestRecord:
    """Play the run's deterministic policy once over ``market`` through the env (eval mode) and record it.

    The env's own `Portfolio` is what gets recorded, bar by bar, so the agent's curve is exactly the
    env's accounting. Specialists' calls (learned and rule-based) are read when the meta-agent acts.
    """
    import torch

    import Train

    env = Train.make_env(dict(cfg), market, mode="eval")
    # The networks are tiny: one intra-op thread is fastest, and extra threads spin against other
    # processes on a busy machine (measured: 4.5 ms instead of 25 us per linear layer on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env.reset(seed=seed)
        raw = env.unwrapped
        pf = raw.portfolio
        rec = Recorder("agent", market, pf)
        rec.calls = np.zeros((market.n_bars, market.n_pairs), dtype=np.int8)
        act = BatchedPolicy(policy, raw)
        rec.bar(raw.bar)
        steps_seen = pf.steps
        for agent in env.agent_iter():
            obs, _, terminated, truncated, _ = env.last()
            if terminated or truncated:
                env.step(None)
                continue
            if agent == "meta":
                rec.calls[raw.bar] = raw.calls  # every pair's answer this bar, rule specialists included
            env.step(act(agent, obs))
            if agent == "meta":
                rec.bar_from_portfolio(raw.bar, pf.steps != steps_seen)
                steps_seen = pf.steps
        return rec.record()
    finally:
        torch.set_num_threads(threads)
        env.close()


class BatchedPolicy:
    """The run's deterministic policy, answering every learned specialist of a bar in one forward pass.

    A specialist's observation depends only on its pair's features and weight, not on the other
    specialists' answers in the same bar, so all of them can be computed at the bar's first turn.
    Each turn still checks that the observation it is handed equals the one the batch used, and
    falls back to a single call if not: the batch is a speed-up, never a change of behaviour.
    The meta-agent's fast path is likewise checked against the policy's own answer on the first
    bar and only used when they agree exactly. (Measured: half the CPU of calling the policy.)
    """

    def __init__(self, policy: Any, raw_env: Any) -> None:
        self.policy = policy
        self.raw = raw_env
        self.specialists = [a for a in raw_env.possible_agents if a != "meta"]
        self._bar = -1
        self._obs: dict[str, np.ndarray] = {}
        self._actions: dict[str, int] = {}
        # The fast paths need the run's RLModules (Train.RunPolicy); any other callable is used as is.
        self.batched = hasattr(policy, "modules") and hasattr(policy, "normalize_actions")
        self.meta_fast: bool | None = None

    def _batch(self) -> None:
        import torch
        from ray.rllib.core import Columns

        module = self.policy.modules["specialist"]
        self._obs = {a: self.raw.observe(a) for a in self.specialists}
        batch = torch.as_tensor(np.stack([self._obs[a] for a in self.specialists]))
        with torch.no_grad():
            # The module is already in eval mode (load_run); the public forward_inference would
            # re-walk the module tree to set it on every call, which costs as much as the forward.
            out = module._forward_inference({Columns.OBS: batch})
        # Deterministic action of a Categorical over sell/hold/buy: the most likely one (what
        # RLlib's to_deterministic() gives, without building distribution objects every bar).
        actions = out[Columns.ACTION_DIST_INPUTS].argmax(dim=-1).numpy()
        self._actions = dict(zip(self.specialists, actions.astype(int).tolist(), strict=True))
        self._bar = self.raw.bar

    def _meta(self, obs: np.ndarray) -> Any:
        """The meta-agent's deterministic action: the Gaussian's mean, post-processed like the policy's."""
        import torch
        from ray.rllib.core import Columns
        from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

        module = self.policy.modules["meta"]
        with torch.no_grad():
            out = module._forward_inference({Columns.OBS: torch.as_tensor(obs[None])})
        inputs = out[Columns.ACTION_DIST_INPUTS][0].numpy()
        mean = inputs[: inputs.shape[0] // 2]  # diagonal Gaussian inputs: means, then log-stds
        space = module.action_space
        return unsquash_action(mean, space) if self.policy.normalize_actions else clip_action(mean, space)

    def __call__(self, agent: str, obs: np.ndarray) -> Any:
        if not self.batched:
            return self.policy(agent, obs)
        if agent == "meta":
            if self.meta_fast is None:  # first bar: use the fast path only if it agrees exactly
                reference = np.asarray(self.policy(agent, obs))
                self.meta_fast = bool(np.array_equal(np.asarray(self._meta(obs)), reference))
                return reference
            return self._meta(obs) if self.meta_fast else self.policy(agent, obs)
        if self._bar != self.raw.bar:
            self._batch()
        if not np.array_equal(self._obs[agent], obs):
            return self.policy(agent, obs)
        return self._actions[agent]


def portfolio_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The run's ``portfolio`` settings (fees, slippage, rules) that the env trades with."""
    return dict((cfg.get("env") or {}).get("portfolio") or {})


@dataclass
class BacktestResult:
    """What `backtest` produced: the records (agent first), their metrics, and where they went."""

    records: dict[str, BacktestRecord]
    table: dict[str, dict[str, float]]
    out_dir: Path
    label: str
    timings: dict[str, tuple[float, float]]  # phase -> (wall seconds, CPU seconds of this process)
    data_source: str = ""  # market_data.describe_source of the bars played


def data_source_of(cfg: Mapping[str, Any], manifest: Mapping[str, Any], data_dir: str | Path | None) -> str:
    """What the backtest plays: the ``--data-dir`` folder, else the data the run was trained on."""
    import market_data

    if data_dir is not None:
        return market_data.describe_source({"kind": "csv", "path": str(data_dir)})
    return manifest.get("data_source") or market_data.describe_source(cfg["data"]["source"])


def backtest(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    split: str | None = None,
    start: str | None = None,
    end: str | None = None,
    data_dir: str | Path | None = None,
    market: MarketData | None = None,
    allow_data_change: bool = False,
) -> BacktestResult:
    """Backtest the saved run at ``run_dir`` and write its report; see the module docstring.

    ``market`` (already the bars to play) bypasses data loading and range selection. Raises
    `BacktestError` for a missing or corrupt run, a manifest mismatch or an empty range.
    """
    import time

    import Train

    timings: dict[str, tuple[float, float]] = {}
    tick = (time.perf_counter(), time.process_time())
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BacktestError(f"--run {run_dir} does not exist; runs live in saved_models/<run_id>/")
    try:
        cfg, manifest, policy = Train.load_run(run_dir)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise BacktestError(f"cannot load the run: {exc}") from exc
    except KeyError as exc:  # a config.yaml from another version of Train.py
        raise BacktestError(f"cannot load the run: its config.yaml lacks the key {exc}; "
                            "it was saved by an incompatible version of Train.py") from exc
    timings["load run"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])

    tick = (time.perf_counter(), time.process_time())
    if market is None:
        full = load_market(cfg, manifest, data_dir)
        check_manifest(manifest, full)
        market, label = select_range(cfg, full, split, start, end)
        data_changes = check_split_data(
            manifest, None if (start or end) else (split or "test"), market, allow_data_change
        )
    else:
        check_manifest(manifest, market)
        label = "given bars"
        data_changes = []
    timings["load data"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])

    tick = (time.perf_counter(), time.process_time())
    agent = play_agent(cfg, policy, market, seed=int(cfg.get("run", {}).get("seed", 0)))
    timings["agent through env"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])
    played = market.slice_bars(0, len(agent.equity))  # ruin ends the episode early

    tick = (time.perf_counter(), time.process_time())
    records = {"agent": agent, **run_benchmarks(played, portfolio_config(cfg))}
    timings["benchmarks"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])

    tick = (time.perf_counter(), time.process_time())
    out = Path(out_dir) if out_dir is not None else Train.LOGS / run_dir.name / "backtest"
    periods = metrics.periods_per_year(market.timeframe)
    notes = {"run": str(run_dir), "range": label, "portfolio": portfolio_config(cfg) or "env defaults"}
    if data_changes:
        notes["data changed since training (--allow-data-change)"] = "; ".join(data_changes)
    data_source = data_source_of(cfg, manifest, data_dir)
    title = f"Backtest of {run_dir.name} on {data_source}"
    table = write_report(out, records, periods, played.close, title=title, notes=notes,
                         data_source=data_source)
    timings["metrics and report"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])
    return BacktestResult(records, table, out, label, timings, data_source)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Backtest a trained run against benchmarks; write a report.")
    parser.add_argument("--run", required=True, help="saved run directory, e.g. saved_models/NAME")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--split", choices=("train", "validation", "test"), default=None,
                      help="date split from the run's config (default: test)")
    when.add_argument("--start", default=None, help="first bar's open time (UTC date), instead of --split")
    parser.add_argument("--end", default=None, help="end of the range, exclusive (UTC date); with --start")
    parser.add_argument("--data-dir", default=None, help="folder of CSV candles (../shared/data format) "
                        "instead of the run's own data source")
    parser.add_argument("--out", default=None, help="output folder (default: logs/NAME/backtest/)")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="backtest a split whose data differs from what the run recorded at training")
    args = parser.parse_args(argv)
    if args.end is not None and args.split is not None:
        parser.error("--end goes with --start, not with --split")
    try:
        result = backtest(args.run, args.out, split=args.split, start=args.start, end=args.end,
                          data_dir=args.data_dir, allow_data_change=args.allow_data_change)
    except BacktestError as exc:
        print(f"performance.py: refused: {exc}", file=sys.stderr)
        return 2
    agent = result.records["agent"]
    print(f"{Path(args.run).name} on {result.data_source}, {result.label}: {len(agent.equity)} bars, "
          f"{_iso(agent.open_time_ms[0])} .. {_iso(agent.open_time_ms[-1])} UTC")
    print(format_table(result.table))
    print(f"report: {result.out_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
