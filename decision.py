"""The decision core: one path from candles to a decision, shared by training, backtests and live trading.

Given the history of a market up to the close of bar t and the current portfolio weights, the core
produces the decision the trained policy makes at bar t: every specialist's call (-1 sell, 0 hold,
+1 buy) and the meta-agent's target weights (pairs, then cash). The env (`SequentialTradingEnv`)
computes its observations here; validation, backtests and walk-forward folds play `play_policy`
(the one episode loop, with `backtest`'s execution step) and a live loop calls `Policy.decide` on the
latest closed candles. Importable without Ray, RLlib or the training code: numpy, plus torch for the
networks (imported when a policy is built); reading a run's files verifies them (`run_files`).

Observation pipeline (each step's rule sits beside its definition below):

1. features: the data's indicator columns chosen by ``env.features`` / ``exclude_features``, made
   scale free (`transform_features`: price levels relative to the close, sizes as a share of it);
2. causal normalization (`normalize_causal`): a z-score of bar t against the last
   ``normalization.window`` bars (bar t included), clipped to ``normalization.clip``;
3. observations (`ObservationLayout`): a specialist sees its pair's last ``window`` rows of 2. and its
   pair's weight; the meta-agent sees every pair's row t, this bar's calls and the weights.

History requirement: `history_bars(env_cfg)` = normalization window + observation window - 1 (or the
longest rule specialist's look-back, if longer). The observation of bar t is a function of bars
t-history_bars+1..t ONLY: never of where a data slice starts. The rolling sums behind the z-scores are
computed in blocks anchored to absolute time (see `rolling_sums`), so the whole-array path that the
env and backtests use gives bit-identical results to the per-bar path of `Policy.decide`
(tests/test_decision.py checks both). Rows of a slice with fewer than ``history_bars`` bars before
them are only partially warm: they use the bars the slice has (``min_periods`` of them at least, else
0). Training may start episodes there when a split is short; decisions and backtests never do
(`require_history` refuses, naming how many bars are missing).

A trained run is loaded with `load_policy(run_dir)` straight from its checkpoint files with torch (no
Ray); the networks are rebuilt from the saved weights and give RLlib's own deterministic actions
(argmax of the specialist's logits; the mean of the meta-agent's Gaussian, clipped or un-squashed to
the action bounds exactly as RLlib's env runner does).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import backtest
import specialists as rules_mod
from env_config import NORMALIZATION_METHODS
from market_arrays import MarketData
from settings import ConfigError

# ----------------------------------------------------------------------------------------------
# Features and their scaling rules
# ----------------------------------------------------------------------------------------------

# Price levels: observed relative to the close (x / close - 1), so that they are scale free.
RELATIVE_LEVEL = ("bb_middle_20", "bb_upper_20", "bb_lower_20")
# Price-sized quantities: observed as a share of the close (x / close).
RELATIVE_SIZE = ("atr_14", "macd", "macd_signal", "macd_hist")
# The close itself: its logarithm (excluded by default; a level says little across years).
LOG_LEVEL = ("close",)
# Everything else (returns, RSI, %b, band width, volatility, volume z-score, ...) is used as it is.

def feature_names(data_feature_names: Sequence[str], env_cfg: Mapping[str, Any]) -> list[str]:
    """The observed features: ``env.features``, or every data feature but ``env.exclude_features``."""
    names = (
        list(env_cfg["features"])
        if env_cfg["features"] is not None
        else [f for f in data_feature_names if f not in set(env_cfg["exclude_features"])]
    )
    missing = [f for f in names if f not in data_feature_names]
    if missing or not names:
        raise ConfigError(
            f"env.features {missing or names} not in the data's features {list(data_feature_names)}"
        )
    return names


def transform_features(data: MarketData, names: Sequence[str]) -> np.ndarray:
    """The chosen features [T, N, F] float64 made scale free (see the constants above). Row t uses
    row t of the data only."""
    close = data.close
    out = np.empty((data.n_bars, data.n_pairs, len(names)))
    for f, name in enumerate(names):
        x = data.features[:, :, data.feature_names.index(name)]
        if name in RELATIVE_LEVEL:
            out[:, :, f] = x / close - 1.0
        elif name in RELATIVE_SIZE:
            out[:, :, f] = x / close
        elif name in LOG_LEVEL:
            out[:, :, f] = np.log(x)
        else:
            out[:, :, f] = x
    return out


def _timeframe_ms(timeframe: str) -> int:
    from binance.symbols import timeframe_ms  # lazy: the binance package imports ccxt

    return timeframe_ms(timeframe)


def rolling_sums(x: np.ndarray, open_time_ms: np.ndarray, window: int, bar_ms: int) -> np.ndarray:
    """Sums of ``x`` [T, ...] over the last ``window`` rows (rows max(0, t-window+1)..t), exactly
    reproducible from any slice that holds those rows.

    A running cumulative sum would make row t depend on every row since the slice started (its
    rounding errors do). Instead rows are grouped in blocks of ``window * bar_ms`` of absolute time
    (so a block holds at most ``window`` rows), and a window's sum is built from pieces that depend
    on its own rows only, always added in the same order: the tail of the block it starts in (summed
    from that block's end backwards), the totals of any whole blocks in between (only after gaps in
    the data), then the head of the block it ends in (summed from that block's start).
    """
    steps = x.shape[0]
    out = np.empty_like(x)
    if steps == 0:
        return out
    block_id = np.asarray(open_time_ms, dtype=np.int64) // (window * bar_ms)
    starts = np.flatnonzero(np.concatenate(([True], block_id[1:] != block_id[:-1])))
    ends = np.append(starts[1:], steps)
    head = np.empty_like(x)  # head[r] = x[block start] + ... + x[r]
    tail = np.empty_like(x)  # tail[r] = x[block end - 1] + ... + x[r]
    for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
        np.cumsum(x[lo:hi], axis=0, out=head[lo:hi])
        tail[lo:hi] = np.cumsum(x[lo:hi][::-1], axis=0)[::-1]
    totals = head[ends - 1]
    block = np.repeat(np.arange(len(starts)), ends - starts)
    rows = np.arange(steps)
    first = np.maximum(rows - window + 1, 0)
    a, c = block[first], block[rows]
    # Same block: the window starts where the block (or the slice) starts.
    same = a == c
    out[same] = head[same]
    split = ~same
    acc = tail[first[split]]
    a_s, c_s = a[split], c[split]
    for j in range(1, int((c_s - a_s).max(initial=1))):
        inner = c_s - a_s > j  # whole block a + j lies inside the window
        acc[inner] += totals[a_s[inner] + j]
    acc += head[split]
    out[split] = acc
    return out


def normalize_causal(
    x: np.ndarray,
    open_time_ms: np.ndarray,
    bar_ms: int,
    method: str,
    window: int,
    min_periods: int,
    clip: float,
) -> np.ndarray:
    """Causal z-scores of ``x`` [T, ...] along time, clipped to ``clip``.

    ``rolling``: (x_t - mean) / std over the finite values among the last ``window`` rows, t
    included (std with ddof=1; `rolling_sums`, so row t depends on those rows only). Fewer than
    ``min_periods`` finite values, a spread under 1e-12 of the level, or a NaN input give 0.
    ``none``: ``x`` unchanged (NaN as 0), clipped.
    """
    x = np.asarray(x, dtype=np.float64)
    if method == "none":
        z = x.copy()
    elif method == "rolling":
        valid = np.isfinite(x)
        xv = np.where(valid, x, 0.0)
        count = rolling_sums(valid.astype(np.float64), open_time_ms, window, bar_ms)
        s1 = rolling_sums(xv, open_time_ms, window, bar_ms)
        s2 = rolling_sums(xv * xv, open_time_ms, window, bar_ms)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / count
            var = np.maximum(s2 - s1 * mean, 0.0) / np.maximum(count - 1.0, 1.0)
            std = np.sqrt(var)
            z = (xv - mean) / std
        ok = valid & (count >= min_periods) & (std > 1e-12 * np.maximum(np.abs(mean), 1.0))
        z = np.where(ok, z, 0.0)
    else:
        raise ConfigError(f"env.normalization.method must be one of {NORMALIZATION_METHODS}, got {method!r}")
    z = np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip)
    return np.clip(z, -clip, clip)


def observe_features(history: MarketData, env_cfg: Mapping[str, Any]) -> np.ndarray:
    """Normalized features [T, N, F] float32 (what the agents observe) of every bar of ``history``.

    Row t depends only on bars t-history_bars+1..t of ``history`` once that many bars precede it in
    the slice (see the module docstring), never on where the slice starts.
    """
    norm = env_cfg["normalization"]
    z = normalize_causal(
        transform_features(history, feature_names(history.feature_names, env_cfg)),
        history.open_time_ms,
        _timeframe_ms(history.timeframe),
        norm["method"],
        int(norm["window"]),
        int(norm["min_periods"]),
        float(norm["clip"]),
    )
    return np.ascontiguousarray(z, dtype=np.float32)


def rule_lookback(env_cfg: Mapping[str, Any], kinds: Sequence[str]) -> int:
    """Bars a rule specialist needs up to and including its decision bar (1: the bar's own features)."""
    if "ma_trend" in kinds:
        return int(env_cfg["rules"]["ma_trend"]["slow"])
    return 1


def history_bars(env_cfg: Mapping[str, Any]) -> int:
    """Bars needed up to and including a decision bar for its observation to be fully warm:
    normalization window + observation window - 1 (``none``: the observation window), or the longest
    rule specialist's look-back if that is longer. Indicators come warm from the data source."""
    window = int(env_cfg["window"])
    norm = env_cfg["normalization"]
    need = window if norm["method"] == "none" else int(norm["window"]) + window - 1
    spec = env_cfg["specialists"]
    kinds = [spec["default"], *dict(spec.get("pairs") or {}).values()]
    return max(need, rule_lookback(env_cfg, kinds))


def require_history(data: MarketData, first_bar: int, need_bars: int, what: str) -> None:
    """Refuse to decide at ``data``'s bar ``first_bar`` without ``need_bars`` bars up to and including
    it (`history_bars`); the message names how many bars are missing."""
    have = first_bar + 1
    if have < need_bars:
        from settings import format_ms

        when = format_ms(int(data.open_time_ms[first_bar])) if 0 <= first_bar < data.n_bars else "its start"
        raise ConfigError(
            f"{what} decides first after the close of {when} UTC and needs {need_bars} bars of history "
            f"up to that bar (history_bars: normalization window + observation window - 1); the data "
            f"holds {have}, so {need_bars - have} bars are missing: load data from earlier, or start later"
        )


def warm_range(
    data: MarketData, start_ms: int | None, end_ms: int | None, need_bars: int, what: str
) -> tuple[MarketData, int]:
    """Bars [start_ms, end_ms) of ``data`` with the ``need_bars - 1`` bars before them as warm-up:
    (slice, index of the first bar of the range in it). Refuses an empty range or missing history."""
    times = data.open_time_ms
    lo = 0 if start_ms is None else int(np.searchsorted(times, start_ms, "left"))
    hi = data.n_bars if end_ms is None else int(np.searchsorted(times, end_ms, "left"))
    if hi - lo < 1:
        from settings import format_ms

        covers = f"{format_ms(times[0])} .. {format_ms(times[-1])}" if data.n_bars else "nothing"
        raise ConfigError(f"{what} holds 0 bars; the data covers {covers}")
    first = max(lo - (need_bars - 1), 0)
    part = data.slice_bars(first, hi)
    require_history(part, lo - first, need_bars, what)
    return part, lo - first


# ----------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationLayout:
    """Named slices of the agents' observation vectors (float32).

    Specialist: ``[window * F features (bar t-window+1 first, features of a bar together), its pair's
    weight]``. Meta-agent: ``[N * F features of bar t (pair-major), N calls of this bar (-1/0/+1),
    N + 1 weights (pairs, then cash)]``.
    """

    n_pairs: int
    n_features: int
    window: int = 1

    @property
    def specialist_features(self) -> slice:
        return slice(0, self.window * self.n_features)

    @property
    def specialist_weight(self) -> int:
        return self.window * self.n_features

    @property
    def specialist_size(self) -> int:
        return self.window * self.n_features + 1

    @property
    def meta_features(self) -> slice:
        return slice(0, self.n_pairs * self.n_features)

    @property
    def meta_calls(self) -> slice:
        start = self.n_pairs * self.n_features
        return slice(start, start + self.n_pairs)

    @property
    def meta_weights(self) -> slice:
        start = self.n_pairs * self.n_features + self.n_pairs
        return slice(start, start + self.n_pairs + 1)

    @property
    def meta_size(self) -> int:
        return self.n_pairs * self.n_features + 2 * self.n_pairs + 1

    @classmethod
    def for_meta(cls, meta_size: int, n_pairs: int) -> ObservationLayout:
        """The layout behind a meta observation of ``meta_size`` values over ``n_pairs`` pairs."""
        n_features = (meta_size - 2 * n_pairs - 1) // n_pairs if n_pairs >= 1 else 0
        if n_pairs < 1 or n_features < 1 or cls(n_pairs, n_features).meta_size != meta_size:
            raise ValueError(
                f"a meta observation of {meta_size} values over {n_pairs} pairs is not "
                "[N*F features, N calls, N+1 weights]"
            )
        return cls(n_pairs, n_features)


@dataclass(frozen=True)
class RewardLayout:
    """Named columns of a reward vector: ``layout.names``, each name's column by attribute."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        # Each name's column as a plain attribute (``return`` is spelled ``ret``): the env reads them
        # every bar, so they are instance attributes rather than computed on access.
        for column, name in enumerate(self.names):
            object.__setattr__(self, "ret" if name == "return" else name, column)

    @property
    def size(self) -> int:
        return len(self.names)


# A pair's reward vector (the env's per-pair [N, 4] matrix): return contribution, risk (-return^2),
# cost (-(fees + slippage) / value) and the specialist's call times the next bar's log body.
REWARDS = RewardLayout(("return", "risk", "cost", "call"))
# The meta-agent's scalar reward weights: log return of the portfolio, sums over pairs of the others.
META_REWARDS = RewardLayout(("log_return", "return", "risk", "cost"))


# ----------------------------------------------------------------------------------------------
# Specialists and observations of a market
# ----------------------------------------------------------------------------------------------


def specialist_kinds(symbols: Sequence[str], env_cfg: Mapping[str, Any]) -> list[str]:
    """Per pair: ``learned`` or a rule name (``env.specialists``: default, overrides by base or symbol)."""
    pairs_cfg = dict(env_cfg["specialists"]["pairs"] or {})
    bases = {s.split("/")[0]: s for s in symbols}
    unknown = [k for k in pairs_cfg if k not in bases and k not in symbols]
    if unknown:
        raise ConfigError(f"env.specialists.pairs names unknown pair(s) {unknown}; pairs are {list(symbols)}")
    default = env_cfg["specialists"]["default"]
    return [pairs_cfg.get(s, pairs_cfg.get(s.split("/")[0], default)) for s in symbols]


class MarketObservations:
    """What the agents observe of a market, computed once for every bar: normalized features, the
    specialists' feature windows and the rule specialists' calls. The portfolio's weights and this
    bar's calls are laid over them per bar (`specialist`, `meta`)."""

    def __init__(self, data: MarketData, env_cfg: Mapping[str, Any]) -> None:
        self.data = data
        self.feature_names = feature_names(data.feature_names, env_cfg)
        self.kinds = specialist_kinds(data.symbols, env_cfg)
        self.learned_pairs = [i for i, kind in enumerate(self.kinds) if kind == rules_mod.LEARNED]
        n, f, w = data.n_pairs, len(self.feature_names), int(env_cfg["window"])
        self.layout = ObservationLayout(n, f, w)
        self.features = observe_features(data, env_cfg)  # [T, N, F]
        # [N, W-1 + T, F]: W-1 rows of zeros first, so bar t's window is rows t .. t+W-1 of its pair.
        padded = np.zeros((n, w - 1 + data.n_bars, f), dtype=np.float32)
        padded[:, w - 1 :, :] = self.features.transpose(1, 0, 2)
        self.windows = padded
        self.rule_calls = np.zeros((data.n_bars, n), dtype=np.int8)
        for i, kind in enumerate(self.kinds):
            if kind != rules_mod.LEARNED:
                self.rule_calls[:, i] = rules_mod.compute_calls(kind, data, env_cfg["rules"].get(kind))[:, i]

        # The layout's slices resolved once: the env observes several times per bar.
        lay = self.layout
        self._window = w
        self._spec_size, self._spec_features, self._spec_weight = (
            lay.specialist_size, lay.specialist_features, lay.specialist_weight
        )
        self._meta_size, self._meta_features, self._meta_calls, self._meta_weights = (
            lay.meta_size, lay.meta_features, lay.meta_calls, lay.meta_weights
        )

    def specialist(self, pair: int, t: int, weight: float) -> np.ndarray:
        """Pair ``pair``'s specialist observation at bar ``t`` given its current weight."""
        obs = np.empty(self._spec_size, dtype=np.float32)
        obs[self._spec_features] = self.windows[pair, t : t + self._window].reshape(-1)
        obs[self._spec_weight] = weight
        return obs

    def specialists(self, pairs: Sequence[int], t: int, weights: np.ndarray) -> np.ndarray:
        """[K, D] observations of the specialists of ``pairs`` at bar ``t`` (one batch)."""
        obs = np.empty((len(pairs), self._spec_size), dtype=np.float32)
        obs[:, self._spec_features] = self.windows[pairs, t : t + self._window].reshape(len(pairs), -1)
        obs[:, self._spec_weight] = weights[list(pairs)]
        return obs

    def meta(self, t: int, calls: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The meta-agent's observation at bar ``t`` given this bar's calls and the current weights."""
        obs = np.empty(self._meta_size, dtype=np.float32)
        obs[self._meta_features] = self.features[t].reshape(-1)
        obs[self._meta_calls] = calls
        obs[self._meta_weights] = weights
        return obs


# ----------------------------------------------------------------------------------------------
# From the meta-agent's action to target weights
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightLimits:
    """The ``env.meta`` rules that turn the meta-agent's N+1 logits into target weights."""

    logit_limit: float
    max_pair_weight: float = 1.0
    min_cash_weight: float = 0.0

    @classmethod
    def from_config(cls, env_cfg: Mapping[str, Any]) -> WeightLimits:
        meta = env_cfg["meta"]
        return cls(float(meta["logit_limit"]), float(meta["max_pair_weight"]), float(meta["min_cash_weight"]))

    def targets(self, logits: Any, n_pairs: int) -> np.ndarray:
        """Logits -> target weights (N pairs then cash): clip to +-logit_limit, softmax, then pair
        weights above ``max_pair_weight`` and shortfalls under ``min_cash_weight`` go to cash."""
        # Plain floats: for a few dozen values they beat numpy's per-call overhead several times.
        values = np.asarray(logits, dtype=np.float64).reshape(-1).tolist()
        if len(values) != n_pairs + 1 or not math.isfinite(sum(values)):
            raise ValueError(f"meta: action must be {n_pairs + 1} finite logits, got {logits!r}")
        hi = self.logit_limit
        top = min(max(values), hi)
        exps = [math.exp(min(max(v, -hi), hi) - top) for v in values]
        total = sum(exps)
        w = [e / total for e in exps]
        if self.max_pair_weight < 1.0 or self.min_cash_weight > 0.0:
            pairs = [min(x, self.max_pair_weight) for x in w[:-1]]
            held = sum(pairs)
            if held > 1.0 - self.min_cash_weight:
                factor = (1.0 - self.min_cash_weight) / held
                pairs = [x * factor for x in pairs]
            w = pairs + [max(1.0 - sum(pairs), 0.0)]
        return np.array(w)


# ----------------------------------------------------------------------------------------------
# Networks (pure torch, rebuilt from RLlib's saved module states)
# ----------------------------------------------------------------------------------------------


def _activation(name: str) -> Any:
    """RLlib's activation names (``models.utils.get_activation_fn``) as torch modules."""
    from torch import nn

    lowered = str(name).lower()
    if lowered == "linear":
        return None
    direct = getattr(nn, str(name), None)
    if direct is not None:
        return direct
    table = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
    if lowered not in table:
        raise ConfigError(f"model.activation {name!r} unknown; use one of {sorted(table)} or linear")
    return table[lowered]


def _linear_stack(state: Mapping[str, Any], prefixes: Sequence[str], activations: Sequence[Any]) -> Any:
    """An nn.Sequential of the Linear layers saved under each ``prefix.<k>.weight`` (in order), with
    ``activations[i]`` after every layer of prefix i except the very last layer."""
    import torch
    from torch import nn

    layers: list[Any] = []
    for prefix, act in zip(prefixes, activations, strict=True):
        keys = sorted(
            int(k[len(prefix) + 1 :].split(".")[0])
            for k in state
            if k.startswith(prefix + ".") and k.endswith(".weight")
        )
        if not keys:
            raise ValueError(f"no layers under {prefix!r} in the module state")
        for k in keys:
            weight = torch.as_tensor(np.asarray(state[f"{prefix}.{k}.weight"]))
            bias = state.get(f"{prefix}.{k}.bias")
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if bias is not None:
                    linear.bias.copy_(torch.as_tensor(np.asarray(bias)))
            layers.append(linear)
            layers.append(act() if act is not None else None)
    layers = [layer for layer in layers[:-1] if layer is not None]  # no activation after the output
    return nn.Sequential(*layers).eval()


def pair_scores(scorer: Any, cash_offset: Any, obs: Any, layout: ObservationLayout) -> Any:
    """The pair-shared allocator's logits [B, N+1] (meta_module.PairSharedAllocator): one scorer over
    each pair's (features, call, weight) and over cash as a neutral asset (zero features, no call,
    its own weight), plus a learned offset for cash."""
    import torch
    from torch import nn

    n, f = layout.n_pairs, layout.n_features
    features = nn.functional.pad(obs[:, layout.meta_features].reshape(-1, n, f), (0, 0, 0, 1))
    calls = nn.functional.pad(obs[:, layout.meta_calls, None], (0, 0, 0, 1))
    weights = obs[:, layout.meta_weights, None]
    scores = scorer(torch.cat((features, calls, weights), dim=-1)).squeeze(-1)
    return scores + torch.cat((scores.new_zeros(n), cash_offset))


class Policy:
    """A trained run's deterministic policy over the decision core's observations.

    ``specialist_net``: obs [K, D] -> logits [K, 3] (sell, hold, buy); ``meta_net``: obs [B, D] ->
    the mean of the Gaussian over the N+1 logits. Build it with `load_policy` (a saved run) or
    `Policy.from_states` (module states in memory, e.g. the learner's during training).
    """

    def __init__(
        self,
        env_config: Mapping[str, Any],
        symbols: Sequence[str],
        timeframe: str,
        data_feature_names: Sequence[str],
        specialist_net: Any,
        meta_net: Any,
        normalize_actions: bool = False,
    ) -> None:
        self.env_config = dict(env_config)
        self.symbols = list(symbols)
        self.timeframe = timeframe
        self.data_feature_names = list(data_feature_names)
        self.history_bars = history_bars(self.env_config)
        self.specialist_net = specialist_net
        self.meta_net = meta_net
        self.normalize_actions = bool(normalize_actions)
        self.limits = WeightLimits.from_config(self.env_config)
        self.kinds = specialist_kinds(self.symbols, self.env_config)
        self.learned_pairs = [i for i, kind in enumerate(self.kinds) if kind == rules_mod.LEARNED]
        n = len(self.symbols)
        self._low = np.full(n + 1, -self.limits.logit_limit, dtype=np.float32)
        self._high = np.full(n + 1, self.limits.logit_limit, dtype=np.float32)

    @classmethod
    def from_states(
        cls,
        cfg: Mapping[str, Any],
        symbols: Sequence[str],
        timeframe: str,
        data_feature_names: Sequence[str],
        states: Mapping[str, Mapping[str, Any]],
    ) -> Policy:
        """From a run config (its ``env``, ``model`` and ``ppo`` sections) and the module states
        (``{"specialist": state_dict, "meta": state_dict}``, numpy arrays or tensors)."""
        model = cfg["model"]
        act = _activation(model["activation"])
        head_act = _activation("relu")  # RLlib's head_fcnet_activation default (no head hiddens here)
        specialist = _linear_stack(
            states["specialist"], ("encoder.actor_encoder.net.mlp", "pi.net.mlp"), (act, head_act)
        )
        meta_state = states["meta"]
        n = len(symbols)
        if model["meta_network"] == "pair_shared":
            import torch

            scorer = _linear_stack(meta_state, ("scorer.mlp",), (act,))
            offset = torch.as_tensor(np.asarray(meta_state["cash_offset"]))
            layout = ObservationLayout(n, len(feature_names(data_feature_names, cfg["env"])))

            def meta(obs: Any) -> Any:
                return pair_scores(scorer, offset, obs, layout)
        else:
            mlp = _linear_stack(meta_state, ("encoder.actor_encoder.net.mlp", "pi.net.mlp"), (act, head_act))

            def meta(obs: Any) -> Any:
                return mlp(obs)[:, : n + 1]  # Gaussian inputs: the means, then the log stds

        return cls(
            cfg["env"], symbols, timeframe, data_feature_names, specialist, meta,
            normalize_actions=bool(cfg["ppo"]["normalize_actions"]),
        )  # fmt: skip

    # ---------------------------------------------------------------- deterministic actions
    def specialist_actions(self, obs: np.ndarray) -> np.ndarray:
        """Specialists' actions [K] in {0 sell, 1 hold, 2 buy} for observations [K, D]: argmax."""
        import torch

        with torch.no_grad():
            logits = self.specialist_net(torch.as_tensor(obs))
        return logits.argmax(dim=-1).numpy()

    def meta_action(self, obs: np.ndarray) -> np.ndarray:
        """The meta-agent's env-ready logits [N+1] float32: the Gaussian's mean, clipped to the
        action bounds (or un-squashed from [-1, 1] when ``ppo.normalize_actions``), as RLlib does."""
        import torch

        with torch.no_grad():
            mean = self.meta_net(torch.as_tensor(obs[None]))[0].numpy()
        if self.normalize_actions:
            mean = self._low + (mean + 1.0) * (self._high - self._low) / 2.0
        return np.clip(mean, self._low, self._high)

    def act(self, market: MarketObservations, t: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calls [N] int8, meta logits [N+1]) at bar ``t`` of ``market`` given the current weights."""
        calls = market.rule_calls[t].copy()
        pairs = market.learned_pairs
        if pairs:
            calls[pairs] = self.specialist_actions(market.specialists(pairs, t, weights)) - 1
        return calls, self.meta_action(market.meta(t, calls, weights))

    def check_market(self, data: MarketData, what: str = "the data") -> None:
        """Refuse data whose pairs, timeframe or features differ from the run's."""
        problems = []
        if list(data.symbols) != self.symbols:
            problems.append(f"symbols {list(data.symbols)} != the run's {self.symbols}")
        if data.timeframe != self.timeframe:
            problems.append(f"timeframe {data.timeframe!r} != the run's {self.timeframe!r}")
        if list(data.feature_names) != self.data_feature_names:
            problems.append(f"features {list(data.feature_names)} != the run's {self.data_feature_names}")
        if problems:
            raise ConfigError(f"{what} does not match the run: " + "; ".join(problems))

    def decide(self, history: MarketData, weights: np.ndarray) -> Decision:
        """The decision after the close of ``history``'s last bar, holding ``weights`` (pairs, cash).

        ``history`` must hold at least `history_bars` bars; only its last `history_bars` are used.
        """
        self.check_market(history, "the history")
        require_history(history, history.n_bars - 1, self.history_bars, "Policy.decide")
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(self.symbols) + 1,):
            raise ValueError(f"weights must be [N + 1] = ({len(self.symbols) + 1},), got {weights.shape}")
        recent = history.slice_bars(history.n_bars - self.history_bars, history.n_bars)
        market = MarketObservations(recent, self.env_config)
        t = recent.n_bars - 1
        calls, logits = self.act(market, t, weights)
        return Decision(
            bar_open_time_ms=int(recent.open_time_ms[t]),
            calls=calls.astype(np.int8),
            target_weights=self.limits.targets(logits, len(self.symbols)),
            logits=logits,
        )


@dataclass(frozen=True)
class Decision:
    """What the policy decided after the close of bar ``bar_open_time_ms``."""

    bar_open_time_ms: int  # open time of the bar whose CLOSE the decision follows
    calls: np.ndarray  # [N] int8 in {-1, 0, +1}, pair order = policy.symbols
    target_weights: np.ndarray  # [N + 1] float64, pairs then cash, >= 0, sums to 1
    logits: np.ndarray  # [N + 1] the meta-agent's action (what the env is given)


# ----------------------------------------------------------------------------------------------
# The episode loop
# ----------------------------------------------------------------------------------------------


def play_policy(
    policy: Policy,
    market: MarketData,
    first_bar: int,
    portfolio: Any = None,
    name: str = "agent",
) -> backtest.BacktestRecord:
    """The one episode loop: play ``policy`` over ``market`` from the close of bar ``first_bar`` to the
    end, with the env's timing and accounting (`backtest.execute`, `backtest.close_weights`).

    ``market`` holds `history_bars` bars up to and including ``first_bar`` (warm-up, never traded;
    `warm_range` cuts such a slice from a longer series). The record covers bars first_bar..end
    (fewer if the portfolio is ruined: ``env.ruin_fraction`` of its initial cash ends the episode, as
    in the env), starting from ``portfolio`` as given (one carried over from an earlier fold keeps
    its cash and positions; by default all cash). Observations come from the whole-array path
    (`MarketObservations`), bit-identical to `Policy.decide` bar by bar.
    """
    cfg = policy.env_config
    policy.check_market(market, "the market to play")
    require_history(market, first_bar, policy.history_bars, name)
    if market.n_bars - first_bar < 2:
        raise ValueError(f"{name}: nothing to trade after bar {first_bar} of {market.n_bars}")
    observed = MarketObservations(market, cfg)
    pf = portfolio if portfolio is not None else backtest.make_portfolio(market.symbols, cfg["portfolio"])
    played = market.slice_bars(first_bar, market.n_bars)
    rec = backtest.Recorder(name, played, pf)
    rec.calls = np.zeros((played.n_bars, market.n_pairs), dtype=np.int8)
    rec.bar(0)
    n = market.n_pairs
    band = float(cfg["meta"]["rebalance_band"])
    ruin_value = float(cfg["ruin_fraction"]) * pf.initial_cash
    need_volume = pf.impact_bps > 0.0
    open_, close, volume, times = market.open, market.close, market.volume, market.open_time_ms.tolist()
    _, weights = backtest.close_weights(pf.qty, pf.cash, close[first_bar])
    for t in range(first_bar, market.n_bars - 1):
        calls, logits = policy.act(observed, t, weights)
        rec.calls[t - first_bar] = calls
        target = policy.limits.targets(logits, n)
        turnover, _, _ = backtest.execute(pf, target, open_[t + 1], volume[t + 1] if need_volume else None,
                                 times[t + 1], band)  # fmt: skip
        rec.bar_from_portfolio(t + 1 - first_bar, traded=turnover > 0.0)
        value, weights = backtest.close_weights(pf.qty, pf.cash, close[t + 1])
        if value <= ruin_value:
            break
    record = rec.record()
    # What the agents observed of the market (features part) on the recorded bars, for audits.
    record.extra["observed_features"] = observed.features[first_bar : first_bar + len(record.equity)]
    return record


# ----------------------------------------------------------------------------------------------
# Loading a saved run
# ----------------------------------------------------------------------------------------------

MODULE_IDS = ("specialist", "meta")


def module_state_path(run_dir: str | Path, module_id: str, checkpoint: str = "checkpoint") -> Path:
    """Where RLlib saves module ``module_id``'s weights in a run's checkpoint (the best by default;
    ``latest`` is what --resume continues)."""
    modules = Path(run_dir) / checkpoint / "learner_group" / "learner" / "rl_module"
    return modules / module_id / "module_state.pkl"


def load_run_files(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resolved config, manifest) of a saved run, its files verified against their checksums
    (`run_files.read_run`); FileNotFoundError / ValueError name what is missing or damaged."""
    import run_files

    return run_files.read_run(run_dir)


def load_module_states(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``{module_id: state_dict}`` (numpy arrays) of a saved run's best checkpoint; ValueError names a
    missing or corrupt module file. Verify the run first (`load_run_files`)."""
    states = {}
    for module_id in MODULE_IDS:
        path = module_state_path(run_dir, module_id)
        try:
            with path.open("rb") as handle:
                states[module_id] = pickle.load(handle)  # noqa: S301 - the run's own checkpoint
            if not isinstance(states[module_id], dict):
                raise ValueError("not a module state")
        except Exception as exc:  # noqa: BLE001 - any failure here means the checkpoint is unusable
            raise ValueError(
                f"checkpoint of module {module_id!r} in {run_dir} is missing or corrupt: {exc}"
            ) from exc
    return states


def load_policy(run_dir: str | Path) -> Policy:
    """The deterministic policy of the run saved in ``run_dir`` (``saved_models/<run_id>/``), read
    with torch from its best checkpoint; no Ray needed. Raises FileNotFoundError / ValueError with a
    clear message for a missing or corrupt run.

    Sets torch to one intra-op thread for the process: the networks are tiny, and on a busy machine
    more threads only spin (a stitched walk-forward backtest took 20 min instead of 2)."""
    import torch

    torch.set_num_threads(1)
    cfg, manifest = load_run_files(run_dir)
    states = load_module_states(run_dir)
    try:
        return Policy.from_states(
            cfg, manifest["symbols"], manifest["timeframe"], manifest["feature_names"], states
        )
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"the run in {run_dir} cannot be rebuilt from its files: {exc!r}") from exc
