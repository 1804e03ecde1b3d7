"""The env's settings: `ENV_DEFAULTS` (configs/env.yaml documents the same values) and `resolve_config`.

Its own module so that the run configuration (`run_config`), the decision core (`decision`) and the
env (`SequentialTradingEnv`, which re-exports both names) can read the env's settings without
importing one another.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import specialists as rules_mod
from Portfolio import PORTFOLIO_DEFAULTS
from settings import ConfigError, merge

# rolling: z-scores over the last normalization.window bars (the decision core's fixed history);
# none: the scale-free features as they are, clipped.
NORMALIZATION_METHODS = ("rolling", "none")

# The env's defaults; configs/env.yaml holds the same values with each key documented (a test
# checks that the two agree). Keyword arguments of `env`/`raw_env` override any subset.
ENV_DEFAULTS: dict[str, Any] = {
    "episode_length": 256,
    "window": 8,
    "features": None,
    "exclude_features": ["close", "warm"],
    "normalization": {"method": "rolling", "window": 720, "min_periods": 24, "clip": 5.0},
    "specialists": {"default": "learned", "pairs": {}},
    "rules": copy.deepcopy(rules_mod.RULE_DEFAULTS),
    "meta": {"logit_limit": 5.0, "max_pair_weight": 1.0, "min_cash_weight": 0.0, "rebalance_band": 0.0},
    "rewards": {
        "scale": 100.0,
        "meta": {"log_return": 1.0, "return": 0.0, "risk": 0.0, "cost": 0.0},
        "specialist": {"return": 0.0, "risk": 0.0, "cost": 0.0, "call": 1.0, "call_cost_bps": 0.0},
        "ruin_penalty": 0.0,
    },
    "ruin_fraction": 0.2,
    "portfolio": {**PORTFOLIO_DEFAULTS, "record_fills": False},
}


def resolve_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`ENV_DEFAULTS` with ``overrides`` laid over it; unknown keys and bad values raise ConfigError."""
    cfg = merge(copy.deepcopy(ENV_DEFAULTS), dict(overrides or {}), "env")
    cfg["rules"] = rules_mod.rule_params(cfg["rules"])
    if not (isinstance(cfg["episode_length"], int) and cfg["episode_length"] >= 1):
        raise ConfigError(f"env.episode_length must be a positive integer, got {cfg['episode_length']!r}")
    if not (isinstance(cfg["window"], int) and cfg["window"] >= 1):
        raise ConfigError(f"env.window must be a positive integer, got {cfg['window']!r}")
    norm = cfg["normalization"]
    if norm["method"] not in NORMALIZATION_METHODS:
        raise ConfigError(
            f"env.normalization.method must be one of {NORMALIZATION_METHODS}, got {norm['method']!r}"
        )
    if not (isinstance(norm["window"], int) and norm["window"] >= 2):
        raise ConfigError("env.normalization.window must be an integer >= 2")
    if not (isinstance(norm["min_periods"], int) and norm["min_periods"] >= 2):
        raise ConfigError("env.normalization.min_periods must be an integer >= 2")
    if not float(norm["clip"]) >= 1.0:
        raise ConfigError("env.normalization.clip must be >= 1 (weights and answers share the bounds)")
    meta = cfg["meta"]
    if not float(meta["logit_limit"]) > 0.0:
        raise ConfigError("env.meta.logit_limit must be positive")
    if not 0.0 < float(meta["max_pair_weight"]) <= 1.0:
        raise ConfigError("env.meta.max_pair_weight must be in (0, 1]")
    if not 0.0 <= float(meta["min_cash_weight"]) < 1.0:
        raise ConfigError("env.meta.min_cash_weight must be in [0, 1)")
    if not 0.0 <= float(meta["rebalance_band"]) < 1.0:
        raise ConfigError("env.meta.rebalance_band must be in [0, 1)")
    if not 0.0 <= float(cfg["ruin_fraction"]) < 1.0:
        raise ConfigError("env.ruin_fraction must be in [0, 1)")
    if set(cfg["specialists"]) - {"default", "pairs"}:
        raise ConfigError("env.specialists has the keys default and pairs")
    return cfg
