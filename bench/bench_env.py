"""Speed of SequentialTradingEnv: bars/s and agent-steps/s with random actions, beside bare loops.

10 pairs x 10,000 synthetic 1h bars (eval mode: one episode over every bar), every pair a learned
specialist (11 agent steps per bar), random actions drawn beforehand. Rows:

- ``env (raw AEC)``: the unwrapped env through the AEC API, ``last()`` (the observation) + ``step()``
  for every agent;
- ``env (env(), wrapped)``: the same through PettingZoo's order-enforcing wrapper (what RLlib gets);
- ``Portfolio loop``: only `Portfolio.rebalance` at each open plus the mark at the close;
- ``bare numpy loop``: the same accounting (softmax targets, orders at the open, fees, cash, mark,
  per-pair reward vectors) written inline in numpy, no objects.

Times are CPU seconds of this process (``time.process_time``), best of ``--repeats``: the machine is
shared, and wall time would measure the neighbours. Prints a table; the README quotes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import SequentialTradingEnv as S  # noqa: E402
import synthetic  # noqa: E402
from Portfolio import Portfolio  # noqa: E402


def random_actions(n_bars: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    calls = rng.integers(0, 3, (n_bars, n_pairs))
    logits = rng.normal(0.0, 1.0, (n_bars, n_pairs + 1)).astype(np.float32)
    return calls, logits


def run_env(env, calls: np.ndarray, logits: np.ndarray) -> tuple[int, int, float]:
    """(bars, agent steps, seconds) of one eval episode through the AEC API."""
    raw = env.unwrapped
    env.reset(seed=0)
    pair_of = raw._pair_of
    steps = 0
    tick = time.process_time()
    for agent in env.agent_iter():
        obs, reward, terminated, truncated, info = env.last()
        if terminated or truncated:
            env.step(None)
            continue
        bar = raw.bar
        env.step(logits[bar] if agent == "meta" else calls[bar, pair_of[agent]])
        steps += 1
    return raw.bar - raw.start_bar, steps, time.process_time() - tick


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(np.clip(x, -5.0, 5.0) - np.clip(x, -5.0, 5.0).max())
    return e / e.sum()


def run_portfolio(open_: np.ndarray, close: np.ndarray, logits: np.ndarray) -> tuple[int, int, float]:
    pf = Portfolio([f"P{i}" for i in range(open_.shape[1])], 10_000.0, fee_rate=0.001, record_fills=False)
    tick = time.process_time()
    for t in range(open_.shape[0] - 1):
        pf.rebalance(softmax(logits[t].astype(np.float64)), open_[t + 1])
        pf.value(close[t + 1])
    return open_.shape[0] - 1, 0, time.process_time() - tick


def run_bare(
    open_: np.ndarray, close: np.ndarray, calls: np.ndarray, logits: np.ndarray
) -> tuple[int, int, float]:
    """The env's accounting inline: targets, orders at the open, fees, cash, mark, reward vectors."""
    n = open_.shape[1]
    fee_rate = 0.001
    qty, cash, value = np.zeros(n), 10_000.0, 10_000.0
    vectors = np.empty((n, 4))
    tick = time.process_time()
    for t in range(open_.shape[0] - 1):
        target = softmax(logits[t].astype(np.float64))
        o, c, c0 = open_[t + 1], close[t + 1], close[t]
        value_open = cash + float(qty @ o)
        dq = target[:n] * value_open / o - qty
        notional = np.abs(dq) * o
        fee = notional * fee_rate
        new_cash = cash - float(dq @ o) - float(fee.sum())
        if new_cash < 0.0:  # scale buys down, as Portfolio does
            bought = np.maximum(dq, 0.0)
            scale = (cash + float((bought - dq) @ o) * (1 - fee_rate)) / (float(bought @ o) * (1 + fee_rate))
            dq = dq + bought * (scale * (1 - 1e-12) - 1.0)
            fee = np.abs(dq) * o * fee_rate
            new_cash = cash - float(dq @ o) - float(fee.sum())
        qty0, qty = qty, qty + dq
        cash = new_cash
        value1 = cash + float(qty @ c)
        ret = (qty0 * (o - c0) + qty * (c - o)) / value
        vectors[:, 0] = ret
        vectors[:, 1] = -ret * ret
        vectors[:, 2] = -fee / value
        vectors[:, 3] = (calls[t] - 1) * np.log(c / o)
        value = value1
    return open_.shape[0] - 1, 0, time.process_time() - tick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--bars", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    data = synthetic.generate(n_pairs=args.pairs, n_bars=args.bars, seed=1)
    tick = time.process_time()
    raw = S.raw_env(data=data, mode="eval", ruin_fraction=0.0)
    build_s = time.process_time() - tick
    wrapped = S.env(data=data, mode="eval", ruin_fraction=0.0)
    calls, logits = random_actions(args.bars, args.pairs)
    print(
        f"SequentialTradingEnv: {args.pairs} pairs x {args.bars:,} bars, random actions, "
        f"{len(raw.possible_agents)} agents/bar (env built in {build_s:.2f} s)",
        flush=True,
    )
    rows = []
    for name, fn in (
        ("env (raw AEC)", lambda: run_env(raw, calls, logits)),
        ("env (env(), wrapped)", lambda: run_env(wrapped, calls, logits)),
        ("Portfolio loop", lambda: run_portfolio(data.open, data.close, logits)),
        ("bare numpy loop", lambda: run_bare(data.open, data.close, calls, logits)),
    ):
        best = None
        for _ in range(args.repeats):
            bars, steps, seconds = fn()
            best = (bars, steps, seconds) if best is None or seconds < best[2] else best
        rows.append((name, *best))
        print(f"  {name}: {best[0] / best[2]:,.0f} bars/s", flush=True)
    bare = rows[-1][1] / rows[-1][3]
    print()
    print(f"{'loop':<24} {'bars/s':>10} {'agent-steps/s':>14} {'us/bar':>8} {'x bare':>7}")
    for name, bars, steps, seconds in rows:
        rate = bars / seconds
        agent = f"{steps / seconds:,.0f}" if steps else "-"
        print(f"{name:<24} {rate:>10,.0f} {agent:>14} {1e6 / rate:>8.1f} {bare / rate:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
