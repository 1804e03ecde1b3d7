"""Backtest speed: one year of hourly bars for 10 pairs.

    python bench/bench_backtest.py [--data-dir ../shared/data/binance_spot_1h_2017_2022] [--run DIR]
                                   [--report DIR]

Prints a table with, in the same run:
- accounting alone: the equal-weight portfolio rebalanced every bar through `Portfolio` with the
  backtest's recorder (`performance.simulate_targets`), warm, beside vectorbt 1.2's equivalent
  fixed-weight simulation (`Portfolio.from_orders`, target percent, fees, shared cash, sells
  first), warm, and a plain numpy loop of the same rule;
- the whole backtest as `performance.py` runs it: loading the run, policy inference through the
  env, the four benchmarks, and the tearsheet (metrics, bootstrap intervals, every figure, the
  self-contained report.html; kept in ``--report DIR`` when given). It uses ``--run`` (a run over
  these 10 pairs) when given, otherwise it first trains a one-iteration run on configs/smoke.yaml
  over them (not timed: inference costs the same whatever the weights).
Aims (issue 8): whole backtest under 15 s; accounting within 4x of vectorbt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import performance as perf  # noqa: E402
from market_data import MarketData  # noqa: E402

PAIRS = ["BTC/USDT", "ETH/USDT", "BNB/USDT", "ADA/USDT", "XRP/USDT", "LTC/USDT", "LINK/USDT", "DOT/USDT",
         "DOGE/USDT", "TRX/USDT"]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "binance_spot_1h_2017_2022"
FEE = 0.001
CASH = 10_000.0


def random_walk(n_bars: int = 8760, n_pairs: int = 10, seed: int = 0) -> MarketData:
    """Stand-in candles when the shared CSV data is missing."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (n_bars, n_pairs)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.003, (n_bars, n_pairs)))
    return MarketData(
        symbols=PAIRS[:n_pairs], timeframe="1h",
        open_time_ms=1_609_459_200_000 + 3_600_000 * np.arange(n_bars, dtype=np.int64),
        open=open_, high=np.maximum(open_, close), low=np.minimum(open_, close), close=close,
        volume=np.full((n_bars, n_pairs), 1e6), features=close[:, :, None].copy(), feature_names=["close"],
    )


def load_year(data_dir: Path | None) -> MarketData:
    """2021 hourly candles of the 10 pairs from CSV (via market_data.from_csv_dir), else a random walk."""
    if data_dir is not None and data_dir.exists():
        try:
            from market_data import from_csv_dir  # the ENV helper's loader (indicators included)
        except ImportError:
            from_csv_dir = None
        if from_csv_dir is not None:
            market = from_csv_dir(data_dir, PAIRS, "1h")
            start = int(np.datetime64("2021-01-01", "ms").astype(np.int64))
            end = int(np.datetime64("2022-01-01", "ms").astype(np.int64))
            return market.slice_time(start, end)
    print("(shared CSV data or market_data.from_csv_dir unavailable: using a random walk)")
    return random_walk()


def best_of(fn, repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` warm calls (one warm-up call first)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_loop(market: MarketData) -> np.ndarray:
    """The same equal-weight rule in a bare loop: the floor for any per-bar accounting."""
    o, c = market.open, market.close
    n = market.n_pairs
    w = np.full(n, 1.0 / n)
    cash, q = CASH, np.zeros(n)
    equity = np.empty(market.n_bars)
    equity[0] = CASH
    for t in range(1, market.n_bars):
        p = o[t]
        value = cash + q @ p
        dq = w * value / p - q
        cost = dq @ p + FEE * (np.abs(dq) @ p)
        if cost > cash:
            sell = dq < 0
            available = cash - (dq[sell] @ p[sell]) * (1 - FEE)
            dq[~sell] *= available / ((dq[~sell] @ p[~sell]) * (1 + FEE)) * (1 - 1e-12)
            cost = dq @ p + FEE * (np.abs(dq) @ p)
        cash -= cost
        q = q + dq
        equity[t] = cash + q @ c[t]
    return equity


def vectorbt_sim(market: MarketData) -> np.ndarray:
    """vectorbt's fixed-weight simulation with the same timing: orders at bar t+1's open, marks at closes."""
    import pandas as pd
    import vectorbt as vbt

    index = pd.DatetimeIndex(np.asarray(market.open_time_ms, dtype="datetime64[ms]"))
    size = np.full(market.close.shape, 1.0 / market.n_pairs)
    size[0] = np.nan  # bar 0: nothing decided yet
    pf = vbt.Portfolio.from_orders(
        close=pd.DataFrame(market.close, index=index), price=pd.DataFrame(market.open, index=index),
        size=size, size_type="targetpercent", fees=FEE, group_by=True, cash_sharing=True, call_seq="auto",
        init_cash=CASH, freq="1h",
    )
    return pf.value().to_numpy()


def bench_accounting(market: MarketData) -> list[tuple[str, float, str]]:
    targets = perf.benchmark_targets("equal_weight_rebalanced", market.n_bars, market.n_pairs)
    cfg = {"initial_cash": CASH, "fee_rate": FEE}
    ours = perf.simulate_targets("ewr", market, targets, cfg).equity
    ref = numpy_loop(market)
    vbt_equity = vectorbt_sim(market)
    t_ours = best_of(lambda: perf.simulate_targets("ewr", market, targets, cfg))
    t_vbt = best_of(lambda: vectorbt_sim(market))
    t_np = best_of(lambda: numpy_loop(market))
    return [
        ("accounting: Portfolio + recorder", t_ours,
         f"final {ours[-1]:,.2f}; {t_ours / t_vbt:.1f}x vectorbt"),
        ("accounting: vectorbt from_orders (warm)", t_vbt,
         f"final {vbt_equity[-1]:,.2f} (buys fill in order, last one partial)"),
        ("accounting: bare numpy loop", t_np,
         f"final {ref[-1]:,.2f}; max |diff| to ours {np.max(np.abs(ref - ours)):.2e}"),
    ]


def train_bench_run(data_dir: Path, workdir: Path) -> Path:
    """A one-iteration run over the 10 pairs (2020-09..2020-12 train), for timing inference only."""
    import json
    import os
    import subprocess

    source = {"kind": "csv", "path": str(data_dir), "symbols": PAIRS, "timeframe": "1h",
              "start": "2020-09-01", "end": "2022-01-01"}
    splits = {"train": {"start": "2020-09-01", "end": "2020-12-01"},
              "validation": {"start": "2020-12-01", "end": "2021-01-01"},
              "test": {"start": "2021-01-01", "end": "2022-01-01"}}
    cmd = [sys.executable, str(ROOT / "Train.py"), "--config", "configs/smoke.yaml", "--run-id", "bench",
           "--set", "run.iterations=1", "--set", f"data.source={json.dumps(source)}",
           "--set", f"data.splits={json.dumps(splits)}",
           "--saved-models", str(workdir / "saved"), "--logs", str(workdir / "logs")]  # fmt: skip
    print("training a one-iteration run over the 10 pairs for the inference timing (untimed)", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"training the bench run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return workdir / "saved" / "bench"


def bench_full(market: MarketData, run_dir: Path, report: Path | None = None) -> list[tuple[str, float, str]]:
    """The whole backtest (load run, policy through the env, benchmarks, metrics, report) on ``market``;
    the report goes to ``report`` when given (else a temporary folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        t0, c0 = time.perf_counter(), time.process_time()
        result = perf.backtest(run_dir, report or scratch, market=market)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    # The CPU seconds show what the wall time would be on an idle machine (the backtest is one thread).
    rows = [("full backtest (total)", total, f"CPU {cpu:.1f} s; load run, inference through env, benchmarks, "
             "metrics, tearsheet")]
    rows += [(f"  {phase}", wall, f"CPU {cpu:.2f} s") for phase, (wall, cpu) in result.timings.items()]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--run", type=Path, default=None, help="saved_models/<run_id> to backtest")
    parser.add_argument("--report", type=Path, default=None, help="keep the backtest's report in this folder")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    market = load_year(args.data_dir)
    load_s = time.perf_counter() - t0
    print(f"{market.n_bars} bars x {market.n_pairs} pairs ({market.timeframe})")
    rows = [("load CSV candles + indicators (not in total)", load_s, "")] + bench_accounting(market)
    with tempfile.TemporaryDirectory() as work:
        if args.run is not None:
            rows += bench_full(market, args.run, args.report)
        elif market.meta.get("source") == "csv":
            rows += bench_full(market, train_bench_run(args.data_dir, Path(work)), args.report)
        else:
            rows.append(("full backtest", float("nan"), "skipped: needs --run or the shared CSV data"))
    print(f"{'phase':44s}{'seconds':>10s}  notes")
    for name, seconds, note in rows:
        print(f"{name:44s}{seconds:10.3f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
