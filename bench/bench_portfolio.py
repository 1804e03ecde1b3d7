"""Rebalances per second of `Portfolio.rebalance` for 10 and 30 pairs (the environment's per-bar cost).

Synthetic random-walk prices and targets that move every bar (every pair trades every bar), in
five set-ups: fees only; fees plus fixed slippage (the environment's default shape); the same with
a zero cash target (every bar runs short of cash and takes the scaled-buys path); plus the volume
slippage model and exchange rules; and the last without the fill log.
Prints a table; the README quotes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from Portfolio import Portfolio  # noqa: E402

SETUPS: dict[str, dict[str, Any]] = {
    "fees only": {},
    "fees + 5 bps slippage": {"slippage_bps": 5.0},
    "fees + slippage, zero cash target": {"slippage_bps": 5.0, "zero_cash": True},
    "+ volume model + lot/min-notional": {
        "slippage_bps": 5.0,
        "impact_bps": 50.0,
        "lot_step": 1e-6,
        "min_notional": 5.0,
    },
    "volume model + rules, record_fills=False": {
        "slippage_bps": 5.0,
        "impact_bps": 50.0,
        "lot_step": 1e-6,
        "min_notional": 5.0,
        "record_fills": False,
    },
}


def make_inputs(n_pairs: int, n_bars: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prices [T, N], volumes [T, N] and targets [T, N + 1]: a softmax of AR(1) logits, the shape of
    a meta-agent's output, so every pair trades every bar."""
    rng = np.random.default_rng(seed)
    prices = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (n_bars, n_pairs)), axis=0))
    volumes = rng.uniform(1e3, 1e5, (n_bars, n_pairs))
    logits = np.empty((n_bars, n_pairs + 1))
    logits[0] = rng.normal(0.0, 0.7, n_pairs + 1)
    for t in range(1, n_bars):
        logits[t] = 0.9 * logits[t - 1] + rng.normal(0.0, 0.3, n_pairs + 1)
    targets = np.exp(logits - logits.max(axis=1, keepdims=True))
    targets /= targets.sum(axis=1, keepdims=True)
    return prices, volumes, targets


def bench(n_pairs: int, n_bars: int, options: dict[str, Any], repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` rebalances per CPU second over ``n_bars`` bars, and the share of bars whose
    buys were scaled down for lack of cash (the slower path)."""
    options = dict(options)
    prices, volumes, targets = make_inputs(n_pairs, n_bars)
    if options.pop("zero_cash", False):
        # Every bar then runs short of cash for the fees and takes the scaled-buys path.
        targets = targets.copy()
        targets[:, -1] = 0.0
        targets /= targets.sum(axis=1, keepdims=True)
    symbols = [f"P{i}/USDT" for i in range(n_pairs)]
    best = 0.0
    for _ in range(repeats):
        pf = Portfolio(symbols, 1_000_000.0, **options)
        # CPU time of this process: on a shared machine wall time mostly measures the neighbours.
        started = time.process_time()
        for t in range(n_bars):
            pf.rebalance(targets[t], prices[t], volumes[t], ts_ms=t)
        best = max(best, n_bars / (time.process_time() - started))
    shortfalls = 0
    pf = Portfolio(symbols, 1_000_000.0, **options)
    for t in range(n_bars):
        pf.rebalance(targets[t], prices[t], volumes[t], ts_ms=t)
        shortfalls += pf.last_buy_scale < 1.0
    return best, shortfalls / n_bars


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bars", type=int, default=20_000, help="rebalances per measurement")
    parser.add_argument("--pairs", type=int, nargs="+", default=[10, 30])
    args = parser.parse_args(argv)
    print("rebalances per CPU second (best of 3), synthetic prices, targets moving every bar")
    print(f"{'pairs':>5}  {'set-up':<42} {'rebalances/s':>12} {'us/rebalance':>12} {'shortfall bars':>14}")
    for n_pairs in args.pairs:
        for name, options in SETUPS.items():
            rate, shortfall = bench(n_pairs, args.bars, options)
            print(
                f"{n_pairs:>5}  {name:<42} {rate:>12,.0f} {1e6 / rate:>12.1f} {shortfall:>14.1%}", flush=True
            )


if __name__ == "__main__":
    main()
