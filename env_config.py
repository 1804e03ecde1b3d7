"""The env's settings: `ENV_DEFAULTS` (configs/env.yaml documents the same values), their bounds
`ENV_SCHEMA`, and `resolve_config`.

Its own module so that the run configuration (`run_config`), the decision core (`decision`) and the
env (`SequentialTradingEnv`, which re-exports both names) can read the env's settings without
importing one another.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import specialists as rules_mod
from config_rules import (
    Rule,
    boolean,
    check_schema,
    integer,
    mapping,
    names,
    number,
    one_of,
    per_pair,
    text,
)
from Portfolio import PORTFOLIO_DEFAULTS
from settings import merge

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


def _specialist_kinds() -> tuple[str, ...]:
    return ("learned", *sorted(rules_mod.RULES))


_RULE_CHOICE = Rule(
    "'learned' or a rule specialist's name (specialists.RULES)",
    lambda v: isinstance(v, str) and v in _specialist_kinds(),
)

# One rule per key of ENV_DEFAULTS (= configs/env.yaml), prefixed ``env.``: the bounds of every env setting,
# in one place (run_config checks a run's env section with them, resolve_config every env built).
ENV_SCHEMA: dict[str, Rule] = {
    "env.episode_length": integer(1),
    "env.window": integer(1),
    "env.features": names(null="every data feature but exclude_features"),
    "env.exclude_features": names(),
    "env.normalization.method": one_of(*NORMALIZATION_METHODS),
    "env.normalization.window": integer(2),
    "env.normalization.min_periods": integer(2),
    "env.normalization.clip": number(1),
    "env.specialists.default": _RULE_CHOICE,
    "env.specialists.pairs": mapping(_RULE_CHOICE),
    "env.rules.rsi.lower": number(0, 100),
    "env.rules.rsi.upper": number(0, 100),
    "env.rules.bollinger.lower": number(),
    "env.rules.bollinger.upper": number(),
    "env.rules.ma_trend.fast": integer(1),
    "env.rules.ma_trend.slow": integer(2),
    "env.rules.signal.threshold": number(0),
    "env.rules.signal.feature": text(),
    "env.meta.logit_limit": number(0, low_open=True),
    "env.meta.max_pair_weight": number(0, 1, low_open=True),
    "env.meta.min_cash_weight": number(0, 1, high_open=True),
    "env.meta.rebalance_band": number(0, 1, high_open=True),
    "env.rewards.scale": number(0, low_open=True),
    "env.rewards.meta.log_return": number(),
    "env.rewards.meta.return": number(),
    "env.rewards.meta.risk": number(),
    "env.rewards.meta.cost": number(),
    "env.rewards.specialist.return": number(),
    "env.rewards.specialist.risk": number(),
    "env.rewards.specialist.cost": number(),
    "env.rewards.specialist.call": number(),
    "env.rewards.specialist.call_cost_bps": number(0.0),
    "env.rewards.ruin_penalty": number(0),
    "env.ruin_fraction": number(0, 1, high_open=True),
    "env.portfolio.initial_cash": number(0, low_open=True),
    "env.portfolio.fee_rate": number(0, 1, high_open=True),
    "env.portfolio.slippage_bps": number(0, 10_000, high_open=True),
    "env.portfolio.impact_bps": number(0),
    "env.portfolio.impact_exponent": number(0, low_open=True),
    "env.portfolio.max_slippage_bps": number(0, 10_000, high_open=True),
    "env.portfolio.weight_tol": number(0, 0.01),
    "env.portfolio.lot_step": per_pair(),
    "env.portfolio.min_qty": per_pair(),
    "env.portfolio.min_notional": per_pair(),
    "env.portfolio.use_market_rules": boolean(),
    "env.portfolio.record_fills": boolean(),
}



def resolve_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`ENV_DEFAULTS` with ``overrides`` laid over it; unknown keys and bad values (`ENV_SCHEMA`, the
    rule specialists' own parameter checks) raise ConfigError."""
    cfg = merge(copy.deepcopy(ENV_DEFAULTS), dict(overrides or {}), "env")
    cfg["rules"] = rules_mod.rule_params(cfg["rules"])
    check_schema({"env": cfg}, ENV_SCHEMA)
    return cfg
