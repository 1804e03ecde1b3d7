"""Backtest a trained run, compare it with benchmarks on the same bars and costs, and report.

    python performance.py --run saved_models/NAME [--split test | --start DATE --end DATE]
                          [--data-dir DIR] [--out DIR]

Timing convention (the env's): a decision taken after the close of bar t executes at the OPEN of
bar t+1 through `Portfolio.rebalance` (same fee, slippage and exchange rules); equity is marked at
each bar's CLOSE. Bar 0 holds the initial cash untouched (nothing has been decided yet), so every
curve starts at the initial capital and the drawdown is measured from it.

The agent is the run's `decision.Policy` (`decision.load_policy`, no Ray) played by the one episode
loop, `decision.play_policy`. Its observations need `decision.history_bars` bars up to each decision:
that many bars before the range's first bar are loaded from the same source as warm-up, and the agent
trades from the first bar of the range only; a range too close to the start of the data is refused
with the number of missing bars. The benchmarks trade the same bars.

Outputs in ``--out`` (default ``logs/NAME/backtest/``): ``metrics.json``, ``equity.csv``,
``report.html`` with PNG figures beside it, and a console table (see `write_report`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import console
import decision
import metrics
import tearsheet
from backtest import BacktestRecord, Recorder, make_portfolio, simulate_targets  # noqa: F401
from decision import play_policy
from market_arrays import MarketData
from settings import PROJECT_ROOT, ConfigError, format_ms, parse_time_ms

BENCHMARKS = ("buy_hold_first", "equal_weight_hold", "equal_weight_rebalanced", "cash")


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
    cfg: Mapping[str, Any],
    market: MarketData,
    split: str | None,
    start: str | None,
    end: str | None,
    history_bars: int = 1,
) -> tuple[MarketData, int, str]:
    """Bars of the chosen split (dates from the run's config) or of [start, end), with the
    ``history_bars - 1`` bars before them as warm-up: (slice, index of the first traded bar, label).
    Refuses an empty range and a range without enough history before it (naming what is missing)."""
    if start is not None or end is not None:
        start_ms = None if start is None else parse_date_ms(start, "--start")
        end_ms = None if end is None else parse_date_ms(end, "--end")
        if start_ms is not None and end_ms is not None and start_ms >= end_ms:
            raise BacktestError(f"--start {start} must be before --end {end}")
        label = f"{start or 'start'} .. {end or 'end'}"
    else:
        split = split or "test"
        splits = cfg["data"]["splits"]
        if split not in splits:
            raise BacktestError(f"--split {split!r} unknown; the run defines {sorted(splits)}")
        start_ms = parse_date_ms(str(splits[split]["start"]), f"data.splits.{split}.start")
        end_ms = parse_date_ms(str(splits[split]["end"]), f"data.splits.{split}.end")
        label = f"{split} split"
    try:
        part, first_bar = decision.warm_range(market, start_ms, end_ms, history_bars, f"the {label}")
    except ConfigError as exc:
        raise BacktestError(str(exc)) from None
    if part.n_bars - first_bar < 2:
        covers = f"{format_ms(market.open_time_ms[0])} .. {format_ms(market.open_time_ms[-1])}"
        raise BacktestError(f"the {label} holds {part.n_bars - first_bar} bars (need at least 2); "
                            f"the data covers {covers}")
    return part, first_bar, label


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
    first_bar: int | None = None,
    allow_data_change: bool = False,
) -> BacktestResult:
    """Backtest the saved run at ``run_dir`` and write its report; see the module docstring.

    The run's policy decides with the decision core from `decision.history_bars` of warm-up loaded
    before the range (from the same source); it trades from the range's first bar only. ``market``
    bypasses data loading and range selection: it trades from its bar ``first_bar`` (default
    ``history_bars - 1``, the first warm one). Raises `BacktestError` for a missing or corrupt run, a
    manifest mismatch, an empty range or missing history.
    """
    import time

    timings: dict[str, tuple[float, float]] = {}
    tick = (time.perf_counter(), time.process_time())
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BacktestError(f"--run {run_dir} does not exist; runs live in saved_models/<run_id>/")
    try:
        cfg, manifest = decision.load_run_files(run_dir)
        policy = decision.load_policy(run_dir)
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
        market, first_bar, label = select_range(cfg, full, split, start, end, policy.history_bars)
        # The manifest hashed the split itself: compare the traded bars, not the warm-up before them.
        data_changes = check_split_data(
            manifest, None if (start or end) else (split or "test"),
            market.slice_bars(first_bar, market.n_bars), allow_data_change,
        )
    else:
        check_manifest(manifest, market)
        first_bar = policy.history_bars - 1 if first_bar is None else first_bar
        label = "given bars"
        data_changes = []
    timings["load data"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])

    tick = (time.perf_counter(), time.process_time())
    try:
        agent = play_policy(policy, market, first_bar)
    except ConfigError as exc:
        raise BacktestError(str(exc)) from None
    timings["agent (decisions + accounting)"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])
    played = market.slice_bars(first_bar, first_bar + len(agent.equity))  # ruin ends the episode early

    tick = (time.perf_counter(), time.process_time())
    records = {"agent": agent, **run_benchmarks(played, portfolio_config(cfg))}
    timings["benchmarks"] = (time.perf_counter() - tick[0], time.process_time() - tick[1])

    tick = (time.perf_counter(), time.process_time())
    out = Path(out_dir) if out_dir is not None else PROJECT_ROOT / "logs" / run_dir.name / "backtest"
    periods = metrics.periods_per_year(market.timeframe)
    notes = {"run": str(run_dir), "range": label, "portfolio": portfolio_config(cfg) or "env defaults",
             "warm-up": f"{first_bar} bars before the first traded bar (history_bars {policy.history_bars})"}
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
          f"{format_ms(agent.open_time_ms[0])} .. {format_ms(agent.open_time_ms[-1])} UTC")
    print(format_table(result.table))
    print(f"report: {result.out_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
