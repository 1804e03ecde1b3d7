"""Does training learn? Synthetic markets with a known edge vs their oracle, and a no-signal control.

    python bench/learning_check.py [--market planted|hierarchy|control ...] [--arm rules|learned ...]
                                   [--budget-s 1200] [--control-budget-s 300] [--market-seed 7]
                                   [--config PATH] [--set KEY=VALUE ...]

Markets (4 pairs, 10 bps fees, `synthetic.py`, generator seed ``--market-seed``):

- ``planted``: the planted feature has a 0.1 correlation with the next bar's return and sits in
  every pair's latest bar, so the meta-agent can find it alone;
- ``hierarchy``: the same edge, visible only through a window of the pair's last 8 bars
  (``signal_window: 7``): the latest bar carries ~nothing, a specialist's window does;
- ``control``: no plant (correlation 0).

Arms (the ablation, each one training run on the same market and budget):

- ``rules``: rule specialists (``ma_trend``) + learned meta-agent;
- ``learned``: learned specialists + learned meta-agent; the same run's specialists are also played
  with a FIXED meta-agent (`hierarchy.FollowCalls`: equal weight over the pairs called buy, else
  cash), which isolates what the specialists learned (their call reward does not depend on the meta).

For each, Train.py trains within the wall-clock budget on the train split (best checkpoint by
validation log growth), then the deterministic policy plays the held-out test split once. The oracle
knows the plant; its threshold is tuned on the TRAINING bars (`synthetic.tune_oracle`), then it trades
the same held-out bars through the same `Portfolio` timing and costs. Cash has log growth 0.
Pass criteria (issues 7, 19): agent >= 80% of the oracle's held-out log growth (hierarchy: with
learned specialists, while rule specialists stay far below); on the control, no claimed edge over
cash after costs (held-out log growth <= ~0). bars/s = agent-steps/s / (learned specialists + 1).
A script, not a test: it takes the sum of the budgets plus start-up and evaluation time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import backtest  # noqa: E402
import decision  # noqa: E402
import hierarchy  # noqa: E402
import synthetic  # noqa: E402
import Train  # noqa: E402
import training  # noqa: E402

# Long synthetic history: 3.5 years to train on, 3 months each to validate and test.
SPLITS = {
    "train": {"start": "2020-01-01", "end": "2023-07-01"},
    "validation": {"start": "2023-07-01", "end": "2023-10-01"},
    "test": {"start": "2023-10-01", "end": "2024-01-01"},
}
N_BARS = 35_064  # 1h bars from 2020-01-01 to 2024-01-01
CONFIG = ROOT / "configs" / "learning_check.yaml"
MARKET_SEED = 7
# Generator settings of each market (laid over synthetic.SYNTHETIC_DEFAULTS with 4 pairs, N_BARS).
MARKETS: dict[str, dict] = {
    "planted": {"signal_corr": 0.1},
    "hierarchy": {"signal_corr": 0.1, "signal_window": 7},  # 7 previous pulses: env window 8 sees them
    "control": {"signal_corr": 0.0},
}
# Who answers sell/hold/buy in each arm (env.specialists.default).
ARMS: dict[str, str] = {"rules": "ma_trend", "learned": "learned"}


def market_config(
    market: str,
    arm: str,
    budget_s: float,
    overrides: list[str],
    config: Path = CONFIG,
    market_seed: int = MARKET_SEED,
) -> dict:
    """The Train config of one (market, arm) check: ``config`` and ``overrides`` over train.yaml,
    then the market, its splits, 10 bps fees, the arm's specialists and the budget."""
    cfg = Train.load_config(
        config,
        [
            f"run.time_budget_s={budget_s}",
            "run.iterations=100000",
            "validation.metric=log_growth",
            f"env.specialists.default={ARMS[arm]}",
            *overrides,
        ],
    )
    cfg["data"]["source"] = {"kind": "synthetic", "n_pairs": 4, "n_bars": N_BARS, "seed": market_seed,
                             **MARKETS[market]}  # fmt: skip
    cfg["data"]["splits"] = SPLITS
    cfg["env"]["portfolio"]["fee_rate"] = 0.001  # 10 bps, Binance's spot taker fee
    Train.validate_config(cfg)
    return cfg


def check_market(
    market: str,
    arm: str,
    budget_s: float,
    overrides: list[str],
    run_prefix: str,
    config: Path = CONFIG,
    market_seed: int = MARKET_SEED,
) -> list[dict]:
    """Train one arm on one market within ``budget_s`` and score it on the held-out split: one row
    per meta-agent played (the learned one; with learned specialists also the fixed one)."""
    cfg = market_config(market, arm, budget_s, overrides, config, market_seed)
    splits = training.load_splits(cfg)
    portfolio = cfg["env"]["portfolio"]
    threshold, oracle_train = synthetic.tune_oracle(splits.train, portfolio)
    oracle_test = synthetic.log_growth(
        splits.test, synthetic.oracle_targets(splits.test, threshold), portfolio
    )
    print(
        f"[{market}/{arm}] oracle threshold {threshold} (train log growth {oracle_train:.3f}); "
        f"held-out {oracle_test:.4f}",
        flush=True,
    )

    paths = Train.RunPaths.make(f"{run_prefix}_{market}_{arm}")
    result = Train.train(cfg, paths, splits=splits)
    policy = decision.load_policy(paths.run_dir)
    final = json.loads((paths.run_dir / "metrics.json").read_text())
    agents_per_bar = len(policy.learned_pairs) + 1  # learned specialists + the meta-agent
    steps_per_s = final["agent_steps"] / max(final["seconds_this_session"], 1e-9)
    common = {
        "market": market,
        "market_seed": market_seed,
        "run_seed": cfg["run"]["seed"],
        "specialists": ARMS[arm],
        "oracle_threshold": threshold,
        "oracle_log_growth": oracle_test,
        "budget_s": budget_s,
        "iterations": result.iterations,
        "best_iteration": result.best_iteration,
        "best_validation_log_growth": result.best_score,
        "agent_steps": final["agent_steps"],
        "agent_steps_per_s": steps_per_s,
        "bars_per_s": steps_per_s / agents_per_bar,
        "run_dir": str(paths.run_dir),
        "test_bars": splits.test.n_bars,
    }
    metas = {"learned": policy}
    if arm == "learned":
        metas["fixed"] = hierarchy.FollowCalls(
            policy, len(splits.test.symbols), float(cfg["env"]["meta"]["logit_limit"])
        )
    rows = []
    test_market, first_bar = splits.warm("test", policy.history_bars)  # warm, as every backtest
    for meta_name, played in metas.items():
        record = decision.play_policy(played, test_market, first_bar)
        scores = backtest.score_equity(record.equity, splits.test.timeframe)
        use = hierarchy.record_call_stats(record, test_market, first_bar)
        rows.append(
            {
                **common,
                "meta": meta_name,
                "agent_log_growth": scores["log_growth"],
                "agent_sharpe": scores["sharpe"],
                "ratio": scores["log_growth"] / oracle_test if oracle_test > 0 else float("nan"),
                "hit_rate": use["hit_rate"],
                "weight_on_buys": use["weight_on_buys"],
                "buy_call_share": use["buy_call_share"],
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'market':<10}{'seed':>5}{'specialists':>12}{'meta':>8}{'oracle':>9}{'agent':>9}{'/oracle':>9}"
        f"{'Sharpe':>8}{'hit':>6}{'on buys':>9}{'iters':>7}{'agent steps':>13}{'steps/s':>9}{'bars/s':>8}"
    )
    for row in rows:
        hits = [h for h in row["hit_rate"].values() if np.isfinite(h)]
        print(
            f"{row['market']:<10}{row['market_seed']:>5}{row['specialists']:>12}{row['meta']:>8}"
            f"{row['oracle_log_growth']:>9.3f}{row['agent_log_growth']:>9.3f}{row['ratio']:>9.0%}"
            f"{row['agent_sharpe']:>8.2f}{(np.mean(hits) if hits else float('nan')):>6.1%}"
            f"{row['weight_on_buys']:>9.1%}{row['iterations']:>7}{row['agent_steps']:>13,}"
            f"{row['agent_steps_per_s']:>9.0f}{row['bars_per_s']:>8.0f}"
        )
    print(
        "(log growth over the held-out test split; cash = 0. hit: the specialists' mean share of right "
        "buy/sell calls; on buys: the meta's pair weight on pairs called buy)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--market", action="append", choices=sorted(MARKETS), help="repeatable; default: planted and control"
    )
    parser.add_argument("--arm", action="append", choices=sorted(ARMS), help="repeatable; default: rules")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="budget per arm, edge markets")
    parser.add_argument("--control-budget-s", type=float, default=300.0, help="training budget, control")
    parser.add_argument("--market-seed", type=int, default=MARKET_SEED, help="the synthetic generator's seed")
    parser.add_argument("--config", type=Path, default=CONFIG, help="Train config laid over train.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Train config override"
    )
    args = parser.parse_args(argv)
    prefix = "learning_check_" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out = Train.LOGS / f"{prefix}.json"
    rows: list[dict] = []
    for market in args.market or ["planted", "control"]:
        budget = args.control_budget_s if market == "control" else args.budget_s
        for arm in args.arm or ["rules"]:
            rows += check_market(market, arm, budget, args.set, prefix, args.config, args.market_seed)
            out.write_text(json.dumps(rows, indent=2, default=float))  # partial results survive a kill
    print()
    print_table(rows)
    print(f"saved {out}")
    return 0 if all(np.isfinite(row["agent_log_growth"]) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
