"""Predefined rule specialists: sell / hold / buy calls per pair from data up to each bar's close.

A rule maps a `MarketData` to calls [T, N] int8 in {-1 sell, 0 hold, +1 buy}; row t uses only
rows <= t (each rule is a causal function of the data, vectorized over the whole series at once, so
the env answers for a rule specialist with one array lookup per bar). The env selects a rule per pair
in its ``specialists`` config; a pair whose specialist is ``learned`` is an RL agent instead.

Rules and their parameters (the ``rules`` section of configs/env.yaml):

- ``rsi`` (mean reversion): buy when ``rsi_14 < lower``, sell when ``rsi_14 > upper``.
- ``bollinger`` (band reversion): buy when ``bb_pctb_20 < lower`` (close under the lower band),
  sell when ``bb_pctb_20 > upper`` (over the upper band).
- ``ma_trend`` (moving-average trend): buy when the simple moving average of the close over
  ``fast`` bars is above the one over ``slow`` bars, sell when below; hold until ``slow`` bars exist.
- ``signal``: buy when a feature (the synthetic market's planted ``signal``) exceeds ``threshold``,
  sell below ``-threshold``; a diagnostic rule that knows the plant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from market_arrays import MarketData
from settings import ConfigError, merge

LEARNED = "learned"

RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "rsi": {"lower": 30.0, "upper": 70.0},
    "bollinger": {"lower": 0.0, "upper": 1.0},
    "ma_trend": {"fast": 12, "slow": 48},
    "signal": {"threshold": 0.5, "feature": "signal"},
}


def _feature(data: MarketData, name: str, rule: str) -> np.ndarray:
    if name not in data.feature_names:
        raise ConfigError(
            f"rule specialist {rule!r} needs the feature {name!r}; the data has {data.feature_names}"
        )
    return data.features[:, :, data.feature_names.index(name)]


def _band_calls(x: np.ndarray, lower: float, upper: float, reverse: bool) -> np.ndarray:
    """+1 under ``lower`` and -1 over ``upper`` (mean reversion), or the opposite (``reverse``)."""
    calls = (x < lower).astype(np.int8) - (x > upper).astype(np.int8)  # NaN compares False: hold
    return -calls if reverse else calls


def rsi_reversion(data: MarketData, lower: float, upper: float) -> np.ndarray:
    return _band_calls(_feature(data, "rsi_14", "rsi"), lower, upper, reverse=False)


def bollinger_reversion(data: MarketData, lower: float, upper: float) -> np.ndarray:
    return _band_calls(_feature(data, "bb_pctb_20", "bollinger"), lower, upper, reverse=False)


def _sma(close: np.ndarray, window: int) -> np.ndarray:
    """Trailing simple moving average [T, N]; NaN until ``window`` bars exist.

    Each average adds its own ``window`` closes in order (not a difference of running sums), so bar
    t's value depends on bars t-window+1..t only, bit for bit, wherever the data slice starts (the
    decision core's history rule)."""
    out = np.full(close.shape, np.nan)
    steps = close.shape[0] - window + 1
    if steps > 0:
        total = close[:steps].copy()
        for k in range(1, window):
            total += close[k : k + steps]
        out[window - 1 :] = total / window
    return out


def ma_trend(data: MarketData, fast: int, slow: int) -> np.ndarray:
    fast, slow = int(fast), int(slow)
    if not 1 <= fast < slow:
        raise ConfigError(f"rule ma_trend needs 1 <= fast < slow, got fast={fast}, slow={slow}")
    fast_ma, slow_ma = _sma(data.close, fast), _sma(data.close, slow)
    return (fast_ma > slow_ma).astype(np.int8) - (fast_ma < slow_ma).astype(np.int8)


def signal_rule(data: MarketData, threshold: float, feature: str) -> np.ndarray:
    return _band_calls(_feature(data, feature, "signal"), -threshold, threshold, reverse=True)


RULES: dict[str, Callable[..., np.ndarray]] = {
    "rsi": rsi_reversion,
    "bollinger": bollinger_reversion,
    "ma_trend": ma_trend,
    "signal": signal_rule,
}


def rule_params(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """`RULE_DEFAULTS` with the config's ``rules`` section laid over it (unknown keys fail)."""
    return merge(RULE_DEFAULTS, dict(overrides or {}), "rules")


def compute_calls(rule: str, data: MarketData, params: Mapping[str, Any] | None = None) -> np.ndarray:
    """Calls [T, N] int8 in {-1, 0, +1} of ``rule`` over ``data`` (see the module docstring)."""
    if rule not in RULES:
        raise ConfigError(f"unknown rule specialist {rule!r}; choose one of {sorted(RULES)} or {LEARNED!r}")
    kwargs = merge(RULE_DEFAULTS[rule], dict(params or {}), f"rules.{rule}")
    return np.ascontiguousarray(RULES[rule](data, **kwargs), dtype=np.int8)
