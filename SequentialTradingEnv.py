"""SequentialTradingEnv: a PettingZoo AEC market of per-pair specialists and one meta-agent.

Observations, the action-to-weights rule and the execution step come from the decision core
(`decision.MarketObservations`, `decision.WeightLimits`) and `backtest` (`execute`, `close_weights`),
which validation, backtests and live trading use too: the env adds turns, rewards and episodes.

Agents: ``specialist_<BASE>`` (one per pair whose specialist is ``learned``; rule specialists answer
inside the env, see `specialists`) then ``meta``. Within decision bar t, after its close:

1. the learned specialists act in pair order: Discrete(3), 0 sell / 1 hold / 2 buy. A specialist
   observes a window of its pair's normalized features over bars t-window+1..t (zeros before the
   data starts) and its pair's current weight: Box((window * F + 1,), float32);
2. the meta-agent acts: Box((N + 1,), float32) logits over the N pairs then cash, clipped to
   ``meta.logit_limit`` and turned into target weights by a softmax, then capped by the config's
   weight limits (pair weights above ``max_pair_weight`` and shortfalls under ``min_cash_weight``
   go to cash). It observes every pair's latest features, this bar's answers of all specialists
   (-1/0/+1) and the current weights: Box((N * F + N + N + 1,), float32). Slices by name:
   `decision.ObservationLayout`.
3. The targets execute at the OPEN of bar t+1 through `Portfolio.rebalance` (fees, slippage, exchange
   rules from the ``portfolio`` section) unless the turnover 0.5*sum|target - current| is at most
   ``meta.rebalance_band``; the portfolio is marked at the CLOSE of bar t+1, rewards are computed and
   bar t+1 becomes the decision bar.

Rewards per pair i over bar t+1 (V = portfolio value at the close of bar t), the reward vector
``[return, risk, cost, call]`` (columns by name: `decision.REWARDS`):

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

Episodes: ``mode="train"`` starts at a random bar (from bar `decision.history_bars` - 1 on, where
observations are fully warm, when the data allows) and lasts ``episode_length`` bars;
``mode="eval"`` plays the whole data once from bar ``first_bar`` (default 0). Falling to
``ruin_fraction`` of the initial capital terminates every agent; the end of an episode truncates
them. ``reset(seed=...)`` makes the trajectory reproducible bit for bit (the only randomness is the
start bar).

No look-ahead: every observation at bar t is a function of the data up to the close of bar t: of
bars t-history_bars+1..t only (`decision`: rolling z-scores over a fixed window, computed for the
whole series at once and bit-identical to the per-bar path), and rule specialists are causal rules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np
from gymnasium.utils import seeding
from pettingzoo import AECEnv
from pettingzoo.utils import wrappers
from pettingzoo.utils.env_logger import EnvLogger

import decision
from backtest import close_weights, execute
from decision import META_REWARDS, REWARDS, MarketObservations, WeightLimits
from env_config import ENV_DEFAULTS, NORMALIZATION_METHODS, resolve_config  # noqa: F401 (re-exported)
from market_arrays import MarketData
from Portfolio import Portfolio
from settings import ConfigError, format_ms

META = "meta"
SPECIALIST_PREFIX = "specialist_"
REWARD_NAMES = REWARDS.names
META_REWARD_NAMES = META_REWARDS.names

# A small market for `env()` without data: anyone can try the env at once.
DEFAULT_SYNTHETIC = {"n_pairs": 3, "n_bars": 2_000, "seed": 0}


def agent_name(symbol: str) -> str:
    """``BTC/USDT`` -> ``specialist_BTC``."""
    return SPECIALIST_PREFIX + symbol.split("/")[0]


class raw_env(AECEnv):  # noqa: N801 - PettingZoo's naming convention for the unwrapped env
    """The unwrapped AEC environment; see the module docstring. Build it with `env` for the
    standard PettingZoo wrapper, or directly for speed (no per-call order checks).

    ``data``: a `MarketData`, a data-source mapping for `market_data.load`, or None (a small
    synthetic market). ``mode``: ``"train"`` or ``"eval"``; ``first_bar``: the bar an eval episode
    starts at (e.g. the first warm one, `decision.history_bars` - 1). Other keywords: `ENV_DEFAULTS`.
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
        first_bar: int = 0,
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
        if not 0 <= int(first_bar) < data.n_bars - 1:
            raise ConfigError(f"first_bar must be in [0, {data.n_bars - 1}), got {first_bar}")
        self.first_bar = int(first_bar)
        self.render_mode = render_mode
        self.symbols = list(data.symbols)
        n = self.n_pairs = data.n_pairs

        # ---- what the agents observe, from the decision core (computed once for every bar)
        self.observed = observed = MarketObservations(data, cfg)
        self._observe_meta, self._observe_specialist = observed.meta, observed.specialist
        self.feature_names = observed.feature_names
        self.clip = float(cfg["normalization"]["clip"])
        self.window = int(cfg["window"])
        # Training episodes start where observations are fully warm when the data allows it.
        self.history_bars = decision.history_bars(cfg)
        self._warmup = self.history_bars - 1

        # ---- specialists: learned agents or rules answering inside the env
        kinds = observed.kinds
        self.specialist_kinds = dict(zip(self.symbols, kinds, strict=True))
        self._rule_calls = observed.rule_calls
        names_by_pair = [agent_name(s) for s in self.symbols]
        if len(set(names_by_pair)) != n:
            names_by_pair = [SPECIALIST_PREFIX + s.replace("/", "_") for s in self.symbols]
        self.learned_pairs = observed.learned_pairs
        self.possible_agents = [names_by_pair[i] for i in self.learned_pairs] + [META]
        self._pair_of = {names_by_pair[i]: i for i in self.learned_pairs}
        self._learned_agents = self.possible_agents[:-1]
        self._learned_items = list(self._pair_of.items())
        self._next_agent = dict(zip(self.possible_agents[:-1], self.possible_agents[1:], strict=True))

        # ---- spaces, built once
        spec_dim = observed.layout.specialist_size
        meta_dim = observed.layout.meta_size
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
        self._volume = data.volume
        self._times = data.open_time_ms.tolist()
        self.portfolio = Portfolio.from_config(self.symbols, cfg["portfolio"], where="env.portfolio")
        self._need_volume = self.portfolio.impact_bps > 0.0
        self._limits = WeightLimits.from_config(cfg)
        self._band = float(cfg["meta"]["rebalance_band"])
        rw = cfg["rewards"]
        self._scale = float(rw["scale"])
        # The columns the meta-agent's reward sums over pairs: return, risk, cost (a slice when adjacent).
        summed = [REWARDS.ret, REWARDS.risk, REWARDS.cost]
        adjacent = summed == list(range(summed[0], summed[0] + 3))
        self._summed = slice(summed[0], summed[0] + 3) if adjacent else np.array(summed)
        self._meta_w_list = [float(rw["meta"][k]) for k in META_REWARDS.names]
        self._spec_w_scaled = self._scale * np.array([float(rw["specialist"][k]) for k in REWARDS.names])
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
            start, stop = self.first_bar, steps - 1
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
        self.last_reward_vectors = np.zeros((self.n_pairs, REWARDS.size))
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
        if agent == META:
            return self._observe_meta(self.bar, self._calls, self._weights)
        i = self._pair_of[agent]
        return self._observe_specialist(i, self.bar, self._weights[i])

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
        when = format_ms(self._times[t])
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
                f"{calls[int(self._calls[i])]:>5} {vec[REWARDS.ret]:>+9.5f} {vec[REWARDS.cost]:>+9.5f} "
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
        """Meta action -> target weights (N pairs then cash): `decision.WeightLimits.targets`."""
        return self._limits.targets(logits, self.n_pairs)

    def _settle(self, target: np.ndarray) -> None:
        """Execute ``target`` at the next bar's open, mark at its close, reward, advance one bar."""
        pf = self.portfolio
        n = self.n_pairs
        t1 = self.bar + 1
        value0 = self.portfolio_value
        qty0 = pf.qty.copy()
        turnover, fees, cost = execute(
            pf, target, self._open[t1], self._volume[t1] if self._need_volume else None, self._times[t1],
            self._band,
        )
        qty1 = pf.qty
        value1, weights = close_weights(qty1, pf.cash, self._close[t1])
        # Per-pair reward components; their return and cost parts add up to value1 / value0 - 1.
        inv0 = 1.0 / value0
        ret = (qty0 * self._gap[t1] + qty1 * self._body[t1]) * inv0
        R = REWARDS
        vectors = np.empty((n, R.size))
        vectors[:, R.ret] = ret
        vectors[:, R.risk] = ret * ret
        vectors[:, R.risk] *= -1.0
        vectors[:, R.cost] = cost * -inv0
        vectors[:, R.call] = self._calls * self._log_body[t1]
        log_return = math.log(value1 * inv0) if value1 > 0.0 else -math.inf
        sum_ret, sum_risk, sum_cost = vectors[:, self._summed].sum(axis=0).tolist()
        ruined = value1 <= self._ruin_fraction * pf.initial_cash

        self.bar = t1
        self.portfolio_value = value1
        self._weights = weights
        self.last_target, self.last_turnover, self.last_fees = target, turnover, fees
        self.last_log_return, self.last_reward_vectors = log_return, vectors
        calls = self._calls  # this bar's answers, which the specialists' rewards judge
        self._calls = self._rule_calls[t1].copy()

        mw, M = self._meta_w_list, META_REWARDS
        meta_reward = self._scale * (
            mw[M.log_return] * (log_return if value1 > 0.0 else -1e3)
            + mw[M.ret] * sum_ret
            + mw[M.risk] * sum_risk
            + mw[M.cost] * sum_cost
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
