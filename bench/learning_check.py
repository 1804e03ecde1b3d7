"""Does training learn? Planted-signal market vs its oracle, and a no-signal control.

    python bench/learning_check.py [--budget-s 1200] [--control-budget-s 300] [--config PATH]
                                   [--set KEY=VALUE ...]

Two synthetic markets (4 pairs, 10 bps fees, `synthetic.py`): one whose planted feature has a
0.1 correlation with the next bar's return, and a control without a plant (correlation 0). For
each, Train.py trains within a wall-clock budget on the train split (best checkpoint by validation
log growth), then the deterministic policy plays the held-out test split once. The oracle knows
the plant; its threshold is tuned on the TRAINING bars (`synthetic.tune_oracle`), then it trades
the same held-out bars through the same `Portfolio` timing and costs. Cash has log growth 0.
Pass criteria (issue 7): agent >= 80% of the oracle's held-out log growth on the planted market;
on the control, no claimed edge over cash after costs (held-out log growth <= ~0).
A script, not a test: it takes ``budget + control budget`` plus start-up time.
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

import synthetic  # noqa: E402
import Train  # noqa: E402

# Long synthetic history: 3.5 years to train on, 3 months each to validate and test.
SPLITS = {
    "train": {"start": "2020-01-01", "end": "2023-07-01"},
    "validation": {"start": "2023-07-01", "end": "2023-10-01"},
    "test": {"start": "2023-10-01", "end": "2024-01-01"},
}
N_BARS = 35_064  # 1h bars from 2020-01-01 to 2024-01-01
CONFIG = ROOT / "configs" / "learning_check.yaml"


def market_config(signal_corr: float, budget_s: float, overrides: list[str], config: Path = CONFIG) -> dict:
    cfg = Train.load_config(
        config,
        [
            f"run.time_budget_s={budget_s}",
            "run.iterations=100000",
            "validation.metric=log_growth",
            *overrides,
        ],
    )
    cfg["data"]["source"] = {"kind": "synthetic", "n_pairs": 4, "n_bars": N_BARS, "signal_corr": signal_corr,
                             "seed": 7}  # fmt: skip
    cfg["data"]["splits"] = SPLITS
    cfg["env"]["portfolio"]["fee_rate"] = 0.001  # 10 bps, Binance's spot taker fee
    Train.validate_config(cfg)
    return cfg


def check_market(
    name: str,
    signal_corr: float,
    budget_s: float,
    overrides: list[str],
    run_prefix: str,
    config: Path = CONFIG,
) -> dict:
    cfg = market_config(signal_corr, budget_s, overrides, config)
    splits = Train.load_splits(cfg)
    portfolio = cfg["env"]["portfolio"]
    threshold, oracle_train = synthetic.tune_oracle(splits.train, portfolio)
    oracle_test = synthetic.log_growth(
        splits.test, synthetic.oracle_targets(splits.test, threshold), portfolio
    )
    print(
        f"[{name}] oracle threshold {threshold} (train log growth {oracle_train:.3f}); "
        f"held-out {oracle_test:.4f}"
    )

    paths = Train.RunPaths.make(f"{run_prefix}_{name}")
    result = Train.train(cfg, paths, splits=splits)
    _, _, policy = Train.load_run(paths.run_dir)
    record = Train.play_episode(Train.make_env(cfg, splits.test, mode="eval"), policy, seed=0)
    scores = Train.score_episode(record, splits.test.timeframe)
    final = json.loads((paths.run_dir / "metrics.json").read_text())
    return {
        "market": name,
        "signal_corr": signal_corr,
        "oracle_threshold": threshold,
        "oracle_log_growth": oracle_test,
        "agent_log_growth": scores["log_growth"],
        "agent_sharpe": scores["sharpe"],
        "ratio": scores["log_growth"] / oracle_test if oracle_test > 0 else float("nan"),
        "iterations": result.iterations,
        "best_iteration": result.best_iteration,
        "agent_steps": final["agent_steps"],
        "agent_steps_per_s": final["agent_steps"] / max(final["seconds_this_session"], 1e-9),
        "run_dir": str(paths.run_dir),
        "test_bars": splits.test.n_bars,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=1200.0, help="training budget, planted market")
    parser.add_argument("--control-budget-s", type=float, default=300.0, help="training budget, control")
    parser.add_argument("--skip-control", action="store_true")
    parser.add_argument("--config", type=Path, default=CONFIG, help="Train config laid over train.yaml")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Train config override"
    )
    args = parser.parse_args(argv)
    prefix = "learning_check_" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    rows = [check_market("planted", 0.1, args.budget_s, args.set, prefix, args.config)]
    if not args.skip_control:
        rows.append(check_market("control", 0.0, args.control_budget_s, args.set, prefix, args.config))
    print()
    print(
        f"{'market':<9}{'corr':>6}{'oracle':>10}{'agent':>10}{'agent/oracle':>14}"
        f"{'agent Sharpe':>14}{'iters':>7}{'agent steps':>13}{'steps/s':>9}"
    )
    for row in rows:
        print(
            f"{row['market']:<9}{row['signal_corr']:>6.2f}{row['oracle_log_growth']:>10.4f}"
            f"{row['agent_log_growth']:>10.4f}{row['ratio']:>14.0%}{row['agent_sharpe']:>14.2f}{row['iterations']:>7}"
            f"{row['agent_steps']:>13,}{row['agent_steps_per_s']:>9.0f}"
        )
    print("(log growth over the held-out test split; cash = 0)")
    out = Train.LOGS / f"{prefix}.json"
    out.write_text(json.dumps(rows, indent=2, default=float))
    print(f"saved {out}")
    return 0 if np.isfinite(rows[0]["agent_log_growth"]) else 1


if __name__ == "__main__":
    sys.exit(main())
