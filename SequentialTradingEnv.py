"""SequentialTradingEnv: a PettingZoo AEC market of per-pair specialists and one meta-agent.

Agents: ``specialist_<BASE>`` (one per pair whose specialist is ``learned``; rule specialists answer
inside the env, see `specialists`) then ``meta``. Within decision bar t, after its close:

1. the learned specialists act in pair order: Discrete(3), 0 sell / 1 hold / 2 buy. A specialist
   observes a window of its pair's normalized features over bars t-window+1..t (zeros before the
   data starts) and its pair's current weight: Box((window * F + 1,), float32);
2. the meta-agent acts: Box((N + 1,), float32) logits over the N pairs then cash, clipped to
   ``meta.logit_limit`` and turned into target weights by a softmax, then capped by the config's
   weight limits (pair weights above ``max_pair_weight`` and shortfalls under ``min_cash_weight``
   go to cash). It observes every pair's latest features, this bar's answers of all specialists
   (-1/0/+1) and the current weights: Box((N * F + N + N + 1,), float32).
3. The targets execute at the OPEN of bar t+1 through `Portfolio.rebalance` (fees, slippage, exchange
   rules from the ``portfolio`` section) unless the turnover 0.5*sum|target - current| is at most
   ``meta.rebalance_band``; the portfolio is marked at the CLOSE of bar t+1, rewards are computed and
   bar t+1 becomes the decision bar.

Rewards per pair i over bar t+1 (V = portfolio value at the close of bar t), the reward vector
``[return, risk, cost, call]``:

- return_i = (q_i,before * (open_i,t+1 - close_i,t) + q_i,after * (close_i,t+1 - open_i,t+1)) / V
- cost_i = -(fee_i + slippage_i) / V, so that sum_i(return_i + cost_i) = V_t+1 / V - 1 exactly
- risk_i = -return_i ** 2 (the pair's realized squared contribution)
- call_i = c_i * ln(close_i,t+1 / open_i,t+1), c_i the specialist's answer in {-1, 0, +1}

``infos[specialist]["reward_vector"]`` is its pair's vector (4,); ``infos["meta"]["reward_vector"]``
is the [N, 4] matrix, with ``infos["meta"]["log_return"] = ln(V_t+1 / V)``. Scalar rewards are
``rewards.scale`` times a weighted sum: the meta-agent's weights apply to (log_return, sum of
return, sum of risk, sum of cost), a specialist's to its (return, risk, cost, call), minus
``rewards.specialist.call_cost_bps`` / 1e4 for each buy or sell call (0 by default): with it a
specialist calls only when it expects the next bar to move more than that fee.

Episodes: ``mode="train"`` starts at a random bar (after the feature window and the normalization
warm-up when the data allows) and lasts ``episode_length`` bars; ``mode="eval"`` plays the whole
data once from bar 0. Falling to ``ruin_fraction`` of the initial capital terminates every agent;
the end of an episode truncates them. ``reset(seed=...)`` makes the trajectory reproducible bit for
bit (the only randomness is the start bar).

No look-ahead: every observation at bar t is a function of the data up to the close of bar t. The
feature normalization is causal (rolling or expanding statistics that include bar t, computed once
for the whole series with cumulative sums), and rule specialists are causal rules.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium.utils import seeding
from pettingzoo import AECEnv
from pettingzoo.utils import wrappers
from pettingzoo.utils.env_logger import EnvLogger

import specialists as rules_mod
from market_data import MarketData
from Portfolio import PORTFOLIO_DEFAULTS, Portfolio
from settings import ConfigError, merge

META = "meta"
SPECIALIST_PREFIX = "specialist_"
REWARD_NAMES = ("return", "risk", "cost", "call")
META_REWARD_NAMES = ("log_return", "return", "risk", "cost")
NORMALIZATION_METHODS = ("rolling", "expanding", "none")

# Features whose level is a price: observed relative to the close so that they are scale free.
_RELATIVE_LEVEL = ("bb_middle_20", "bb_upper_20", "bb_lower_20")  # x / close - 1
_RELATIVE_SIZE = ("atr_14", "macd", "macd_signal", "macd_hist")  # x / close
_LOG_LEVEL = ("close",)  # ln(x)

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

# A small market for `env()` without data: anyone can try the env at once.
DEFAULT_SYNTHETIC = {"n_pairs": 3, "n_bars": 2_000, "seed": 0}


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
    if norm["method"] == "rolling" and not (isinstance(norm["window"], int) and norm["window"] >= 2):
        raise ConfigError("env.normalization.window must be an integer >= 2 for the rolling method")
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


def agent_name(symbol: str) -> str:
    """``BTC/USDT`` -> ``specialist_BTC``."""
    return SPECIALIST_PREFIX + symbol.split("/")[0]


def transform_features(data: MarketData, names: list[str]) -> np.ndarray:
    """The chosen features [T, N, F] made scale free: price levels relative to the close (see the
    module constants), the close as its logarithm, everything else unchanged."""
    close = data.close
    out = np.empty((data.n_bars, data.n_pairs, len(names)))
    for f, name in enumerate(names):
        x = data.features[:, :, data.feature_names.index(name)]
        if name in _RELATIVE_LEVEL:
            out[:, :, f] = x / close - 1.0
        elif name in _RELATIVE_SIZE:
            out[:, :, f] = x / close
        elif name in _LOG_LEVEL:
            out[:, :, f] = np.log(x)
        else:
            out[:, :, f] = x
    return out


def normalize_causal(
    x: np.ndarray, method: str, window: int | None, min_periods: int, clip: float
) -> np.ndarray:
    """Causal z-scores of ``x`` [T, ...] along time: row t uses rows <= t only (never later ones).

    ``rolling``: mean and standard deviation of the last ``window`` rows (fewer at the start);
    ``expanding``: of all rows so far; ``none``: ``x`` unchanged. Rows with fewer than
    ``min_periods`` observations, zero spread or NaN inputs give 0; results are clipped to ``clip``.
    """
    x = np.asarray(x, dtype=np.float64)
    if method == "none":
        z = x.copy()
    else:
        valid = np.isfinite(x)
        # Centre on the first finite value of each column so that the running sums stay small.
        ref = np.where(valid, x, np.nan)
        first = np.nan_to_num(ref[np.argmax(valid, axis=0), *np.indices(x.shape[1:])])
        xc = np.where(valid, x - first, 0.0)
        count = np.cumsum(valid, axis=0, dtype=np.float64)
        s1 = np.cumsum(xc, axis=0)
        s2 = np.cumsum(xc * xc, axis=0)
        if method == "rolling" and window is not None and window < x.shape[0]:
            count[window:] = count[window:] - count[:-window].copy()
            s1[window:] = s1[window:] - s1[:-window].copy()
            s2[window:] = s2[window:] - s2[:-window].copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / count
            var = np.maximum(s2 / count - mean * mean, 0.0) * (count / np.maximum(count - 1.0, 1.0))
            std = np.sqrt(var)
            z = (xc - mean) / std
        scale = np.maximum(np.abs(mean), 1.0)
        ok = valid & (count >= min_periods) & (std > 1e-12 * scale)
        z = np.where(ok, z, 0.0)
    z = np.nan_to_num(z, nan=0.0, posinf=clip, neginf=-clip)
    return np.clip(z, -clip, clip)


class raw_env(AECEnv):  # noqa: N801 - PettingZoo's naming convention for the unwrapped env
    """The unwrapped AEC environment; see the module docstring. Build it with `env` for the
    standard PettingZoo wrapper, or directly for speed (no per-call order checks).

    ``data``: a `MarketData`, a data-source mapping for `market_data.load`, or None (a small
    synthetic market). ``mode``: ``"train"`` or ``"eval"``. Other keywords: `ENV_DEFAULTS` keys.
    """

    metadata = {
        "name": "sequential_trading_v0",
        "render_modes": ["human", "ansi"],
        "is_parallelizable": False,
    }

    def __init__(
        self,
        data: MarketData | Mapping[str, Any] | None = None,
        mode: str = "train",
        render_mode: str | None = None,
        **config: Any,
    ) -> None:
        super().__init__()
        if mode not in ("train", "eval"):
            raise ConfigError(f"mode must be 'train' or 'eval', got {mode!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.config = cfg = resolve_config(config)
        if data is None:
            import synthetic

            data = synthetic.generate(**DEFAULT_SYNTHETIC)
        elif isinstance(data, Mapping):
            import market_data

            data = market_data.load(data)
        if data.n_bars < 2:
            raise ConfigError(f"the env needs at least 2 bars of data, got {data.n_bars}")
        self.data: MarketData = data
        self.mode = mode
        self.render_mode = render_mode
        self.symbols = list(data.symbols)
        n = self.n_pairs = data.n_pairs

        # ---- observed features, normalized once for the whole series (causal statistics)
        names = (
            cfg["features"]
            if cfg["features"] is not None
            else [f for f in data.feature_names if f not in set(cfg["exclude_features"])]
        )
        missing = [f for f in names if f not in data.feature_names]
        if missing or not names:
            raise ConfigError(
                f"env.features {missing or names} not in the data's features {data.feature_names}"
            )
        self.feature_names = list(names)
        norm = cfg["normalization"]
        self.clip = float(norm["clip"])
        z = normalize_causal(
            transform_features(data, self.feature_names),
            norm["method"],
            norm["window"] if norm["method"] == "rolling" else None,
            int(norm["min_periods"]),
            self.clip,
        )
        w = self.window = int(cfg["window"])
        f_count = len(self.feature_names)
        # [N, W-1 + T, F]: W-1 rows of zeros first, so bar t's window is rows t .. t+W-1 of its pair.
        padded = np.zeros((n, w - 1 + data.n_bars, f_count), dtype=np.float32)
        padded[:, w - 1 :, :] = z.transpose(1, 0, 2)
        self._windows = padded
        self._latest = np.ascontiguousarray(z, dtype=np.float32)  # [T, N, F] for the meta-agent
        self._warmup = max(w - 1, int(norm["min_periods"]) - 1 if norm["method"] != "none" else 0)

        # ---- specialists: learned agents or rules answering inside the env
        kinds = []
        pairs_cfg = dict(cfg["specialists"]["pairs"] or {})
        bases = {s.split("/")[0]: s for s in self.symbols}
        unknown = [k for k in pairs_cfg if k not in bases and k not in self.symbols]
        if unknown:
            raise ConfigError(
                f"env.specialists.pairs names unknown pair(s) {unknown}; pairs are {self.symbols}"
            )
        for symbol in self.symbols:
            kinds.append(
                pairs_cfg.get(symbol, pairs_cfg.get(symbol.split("/")[0], cfg["specialists"]["default"]))
            )
        self.specialist_kinds = dict(zip(self.symbols, kinds, strict=True))
        self._rule_calls = np.zeros((data.n_bars, n), dtype=np.int8)
        for i, kind in enumerate(kinds):
            if kind != rules_mod.LEARNED:
                self._rule_calls[:, i] = rules_mod.compute_calls(kind, data, cfg["rules"].get(kind))[:, i]
        names_by_pair = [agent_name(s) for s in self.symbols]
        if len(set(names_by_pair)) != n:
            names_by_pair = [SPECIALIST_PREFIX + s.replace("/", "_") for s in self.symbols]
        self.learned_pairs = [i for i, kind in enumerate(kinds) if kind == rules_mod.LEARNED]
        self.possible_agents = [names_by_pair[i] for i in self.learned_pairs] + [META]
        self._pair_of = {names_by_pair[i]: i for i in self.learned_pairs}
        self._learned_agents = self.possible_agents[:-1]
        self._learned_items = list(self._pair_of.items())
        self._next_agent = dict(zip(self.possible_agents[:-1], self.possible_agents[1:], strict=True))

        # ---- spaces, built once
        spec_dim = w * f_count + 1
        meta_dim = n * f_count + n + n + 1
        self._spec_obs_space = gymnasium.spaces.Box(-self.clip, self.clip, (spec_dim,), np.float32)
        self._meta_obs_space = gymnasium.spaces.Box(-self.clip, self.clip, (meta_dim,), np.float32)
        self._spec_act_space = gymnasium.spaces.Discrete(3)
        limit = float(cfg["meta"]["logit_limit"])
        self._meta_act_space = gymnasium.spaces.Box(-limit, limit, (n + 1,), np.float32)
        self.observation_spaces = {
            a: (self._meta_obs_space if a == META else self._spec_obs_space) for a in self.possible_agents
        }
        self.action_spaces = {
            a: (self._meta_act_space if a == META else self._spec_act_space) for a in self.possible_agents
        }

        # ---- market arrays and settings used every bar
        self._open, self._close = data.open, data.close
        # Per-bar price moves used by every reward, computed once: gap (open - previous close), body
        # (close - open) and its log ratio. Row t describes bar t (row 0's gap is unused).
        self._gap = np.vstack((np.zeros((1, n)), data.open[1:] - data.close[:-1]))
        self._body = data.close - data.open
        self._log_body = np.log(data.close / data.open)
        self._no_cost = np.zeros(n)
        self._no_cost.flags.writeable = False
        self._volume = data.volume
        self._times = data.open_time_ms.tolist()
        self.portfolio = Portfolio.from_config(self.symbols, cfg["portfolio"], where="env.portfolio")
        self._need_volume = self.portfolio.impact_bps > 0.0
        self._logit_limit = limit
        self._max_pair = float(cfg["meta"]["max_pair_weight"])
        self._min_cash = float(cfg["meta"]["min_cash_weight"])
        self._band = float(cfg["meta"]["rebalance_band"])
        rw = cfg["rewards"]
        self._scale = float(rw["scale"])
        self._meta_w_list = [float(rw["meta"][k]) for k in META_REWARD_NAMES]
        self._spec_w_scaled = self._scale * np.array([float(rw["specialist"][k]) for k in REWARD_NAMES])
        # A fee per bar for each buy or sell call: a call must expect more than it to pay (issue 19).
        self._call_cost = self._scale * float(rw["specialist"]["call_cost_bps"]) / 1e4
        self._ruin_penalty = float(rw["ruin_penalty"])
        self._ruin_fraction = float(cfg["ruin_fraction"])
        self._episode_length = int(cfg["episode_length"])
        self._rng: np.random.Generator | None = None
        self.bar = 0
        self.start_bar = 0
        self.stop_bar = data.n_bars - 1
        self.portfolio_value = self.portfolio.initial_cash

    @property
    def calls(self) -> np.ndarray:
        """This bar's answers per pair (-1 sell, 0 hold, +1 buy): rule specialists' from the start of
        the bar, learned ones' once they have acted (read-only view)."""
        view = self._calls.view()
        view.flags.writeable = False
        return view

    @property
    def weights(self) -> np.ndarray:
        """Current weights (pairs, then cash) at the close of the decision bar (read-only view)."""
        view = self._weights.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ PettingZoo API
    def observation_space(self, agent: str) -> gymnasium.spaces.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.spaces.Space:
        return self.action_spaces[agent]

    def reset(self, seed: int | None = None, options: dict | None = None) -> None:
        if seed is not None or self._rng is None:
            self._rng, _ = seeding.np_random(seed)
        steps = self.data.n_bars
        if self.mode == "eval":
            start, stop = 0, steps - 1
        else:
            length = min(self._episode_length, steps - 1)
            lowest = min(self._warmup, steps - 1 - length)
            start = int(self._rng.integers(lowest, steps - length))  # start + length <= steps - 1
            stop = start + length
        self.start_bar, self.stop_bar, self.bar = start, stop, start
        self.portfolio.reset()
        self.portfolio_value = self.portfolio.initial_cash
        self._weights = np.eye(self.n_pairs + 1)[-1]  # all cash
        self._calls = self._rule_calls[start].copy()
        self.last_target = self._weights.copy()
        self.last_turnover = 0.0
        self.last_log_return = 0.0
        self.last_fees = np.zeros(self.n_pairs)
        self.last_reward_vectors = np.zeros((self.n_pairs, len(REWARD_NAMES)))
        self.agents = list(self.possible_agents)
        self.rewards = dict.fromkeys(self.agents, 0.0)
        self._rewards_set = False
        self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
        self.terminations = dict.fromkeys(self.agents, False)
        self.truncations = dict.fromkeys(self.agents, False)
        self.infos = {a: {} for a in self.agents}
        self.agent_selection = self.agents[0]
        self._skip_agent_selection = None

    def observe(self, agent: str) -> np.ndarray:
        t = self.bar
        if agent == META:
            n, f = self.n_pairs, len(self.feature_names)
            obs = np.empty(self._meta_obs_space.shape[0], dtype=np.float32)
            obs[: n * f] = self._latest[t].reshape(-1)
            obs[n * f : n * f + n] = self._calls
            obs[n * f + n :] = self._weights
            return obs
        i = self._pair_of[agent]
        obs = np.empty(self._spec_obs_space.shape[0], dtype=np.float32)
        obs[:-1] = self._windows[i, t : t + self.window].reshape(-1)
        obs[-1] = self._weights[i]
        return obs

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        if self._rewards_set:  # `rewards` holds one step's rewards: the last bar's are spent
            self._clear_rewards()
            self._rewards_set = False
        if agent != META:
            a = int(action)
            if a < 0 or a > 2:
                raise ValueError(f"{agent}: action must be 0 (sell), 1 (hold) or 2 (buy), got {action!r}")
            self._calls[self._pair_of[agent]] = a - 1
            self.agent_selection = self._next_agent[agent]
            return
        self._settle(self.target_weights(action))
        self.agent_selection = self.agents[0]

    def render(self) -> str | None:
        """A readable summary of the current bar (printed in ``human`` mode, returned otherwise)."""
        t = self.bar
        when = dt.datetime.fromtimestamp(self._times[t] / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        lines = [
            f"bar {t} ({when} UTC, episode {self.start_bar}..{self.stop_bar})  "
            f"value {self.portfolio_value:,.2f}  log return {self.last_log_return:+.5f}  "
            f"turnover {self.last_turnover:.3f}  "
            f"fees {float(self.last_fees.sum()):.2f}",
            f"{'pair':>12} {'close':>12} {'weight':>7} {'call':>5} {'return':>9} {'cost':>9} "
            f"{'specialist':>10}",
        ]
        calls = {-1: "sell", 0: "hold", 1: "buy"}
        for i, symbol in enumerate(self.symbols):
            vec = self.last_reward_vectors[i]
            lines.append(
                f"{symbol:>12} {self._close[t, i]:>12.4f} {self._weights[i]:>7.3f} "
                f"{calls[int(self._calls[i])]:>5} {vec[0]:>+9.5f} {vec[2]:>+9.5f} "
                f"{self.specialist_kinds[symbol]:>10}"
            )
        lines.append(f"{'cash':>12} {'':>12} {self._weights[-1]:>7.3f}")
        text = "\n".join(lines)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ mechanics
    def target_weights(self, logits: Any) -> np.ndarray:
        """Meta action -> target weights (N pairs then cash): clip, softmax, weight limits."""
        # Plain floats: for a few dozen values they beat numpy's per-call overhead several times.
        values = np.asarray(logits, dtype=np.float64).reshape(-1).tolist()
        if len(values) != self.n_pairs + 1 or not math.isfinite(sum(values)):
            raise ValueError(f"meta: action must be {self.n_pairs + 1} finite logits, got {logits!r}")
        hi = self._logit_limit
        top = min(max(values), hi)
        exps = [math.exp(min(max(v, -hi), hi) - top) for v in values]
        total = sum(exps)
        w = [e / total for e in exps]
        if self._max_pair < 1.0 or self._min_cash > 0.0:
            pairs = [min(x, self._max_pair) for x in w[:-1]]
            held = sum(pairs)
            if held > 1.0 - self._min_cash:
                factor = (1.0 - self._min_cash) / held
                pairs = [x * factor for x in pairs]
            w = pairs + [max(1.0 - sum(pairs), 0.0)]
        return np.array(w)

    def _settle(self, target: np.ndarray) -> None:
        """Execute ``target`` at the next bar's open, mark at its close, reward, advance one bar."""
        pf = self.portfolio
        n = self.n_pairs
        t1 = self.bar + 1
        open1 = self._open[t1]
        value0 = self.portfolio_value
        qty0 = pf.qty.copy()
        cash0 = pf.cash
        value_open = cash0 + float(qty0.dot(open1))
        if value_open > 0.0:
            turnover = 0.5 * (
                float(np.abs(target[:n] - qty0 * open1 / value_open).sum())
                + abs(target[n] - cash0 / value_open)
            )
        else:
            turnover = 0.0
        if turnover > self._band:
            pf.rebalance(target, open1, self._volume[t1] if self._need_volume else None, self._times[t1])
            fees = pf.last_fees
            cost = fees + pf.last_slippage if pf._slip or pf._impact else fees
        else:
            cost = fees = self._no_cost
            turnover = 0.0
        qty1 = pf.qty
        held = qty1 * self._close[t1]
        cash1 = pf.cash
        value1 = cash1 + float(held.sum())
        # Per-pair reward components; their return and cost parts add up to value1 / value0 - 1.
        inv0 = 1.0 / value0
        ret = (qty0 * self._gap[t1] + qty1 * self._body[t1]) * inv0
        vectors = np.empty((n, 4))
        vectors[:, 0] = ret
        vectors[:, 1] = ret * ret
        vectors[:, 1] *= -1.0
        vectors[:, 2] = cost * -inv0
        vectors[:, 3] = self._calls * self._log_body[t1]
        log_return = math.log(value1 * inv0) if value1 > 0.0 else -math.inf
        sums = vectors[:, :3].sum(axis=0).tolist()
        ruined = value1 <= self._ruin_fraction * pf.initial_cash

        self.bar = t1
        self.portfolio_value = value1
        if value1 > 0.0:
            weights = np.empty(n + 1)
            weights[:n] = held
            weights[n] = cash1
            weights *= 1.0 / value1
            self._weights = weights
        else:
            self._weights = np.eye(n + 1)[-1]
        self.last_target, self.last_turnover, self.last_fees = target, turnover, fees
        self.last_log_return, self.last_reward_vectors = log_return, vectors
        calls = self._calls  # this bar's answers, which the specialists' rewards judge
        self._calls = self._rule_calls[t1].copy()

        mw = self._meta_w_list
        meta_reward = self._scale * (
            mw[0] * (log_return if value1 > 0.0 else -1e3)
            + mw[1] * sums[0]
            + mw[2] * sums[1]
            + mw[3] * sums[2]
        )
        if ruined:
            meta_reward -= self._ruin_penalty
        rewards, infos, cumulative = self.rewards, self.infos, self._cumulative_rewards
        if self._learned_agents:
            spec = vectors @ self._spec_w_scaled
            if self._call_cost:
                spec -= self._call_cost * np.abs(calls)
            spec_rewards = spec.tolist()
            for agent, i in self._learned_items:
                reward = spec_rewards[i]
                rewards[agent] = reward
                cumulative[agent] += reward
                infos[agent] = {"reward_vector": vectors[i], "bar": t1}
        rewards[META] = meta_reward
        cumulative[META] += meta_reward
        infos[META] = {
            "reward_vector": vectors,
            "log_return": log_return,
            "turnover": turnover,
            "value": value1,
            "bar": t1,
        }
        self._rewards_set = True
        if ruined or t1 >= self.stop_bar:
            flags = self.terminations if ruined else self.truncations
            for agent in self.agents:
                flags[agent] = True


def _forward(name: str) -> property:
    """A read-only attribute of the wrapped env that, like the wrapper's own lookup, refuses to
    answer before reset()."""

    def get(self: _OrderEnforcing) -> Any:
        if not self._has_reset:
            raise AttributeError(f"{name} cannot be accessed before reset")
        return getattr(self.env, name)

    return property(get)


class _OrderEnforcing(wrappers.OrderEnforcingWrapper):
    """PettingZoo's order-enforcing wrapper with one-hop access to what every step reads.

    The stock wrapper resolves ``agent_selection``, ``terminations``, ``last()``... through two
    ``__getattr__`` hops each, several per agent step, which made it cost more than the env itself.
    Same checks, same errors.
    """

    agent_selection = _forward("agent_selection")
    agents = _forward("agents")
    rewards = _forward("rewards")
    terminations = _forward("terminations")
    truncations = _forward("truncations")
    infos = _forward("infos")

    @property
    def _cumulative_rewards(self) -> dict[str, float]:
        return self.env._cumulative_rewards

    def last(self, observe: bool = True) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if not self._has_reset:
            EnvLogger.error_observe_before_reset()
        return self.env.last(observe)


def env(**kwargs: Any) -> AECEnv:
    """The AEC env wrapped like PettingZoo's own (order enforcing); keywords as `raw_env`."""
    return _OrderEnforcing(raw_env(**kwargs))
