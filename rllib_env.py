"""SequentialTradingEnv as an RLlib MultiAgentEnv that steps in two phases per bar (optional, faster).

RLlib's ``PettingZooEnv`` wrapper makes one RLlib env step per agent: N + 1 per bar, and RLlib's own
cost is per env step (connectors, one forward pass per module). Here one bar is two env steps:

1. every learned specialist acts at once (their observations are returned together);
2. the meta-agent (the AEC env's last agent) acts on their answers; the bar settles.

The AEC env does all the work, stepped agent by agent inside, so observations, rewards, infos and
episodes are identical to the AEC version's (a test checks it). Rewards of a bar reach each agent
with its next observation; when the episode ends every agent gets a last observation, as RLlib needs
for bootstrapping truncated episodes. ``infos=False`` (Train's default, ``resources.env_infos``)
passes empty info dicts: RLlib stores every info in its episodes, PPO never reads them, and that cost
18% of sampling speed.

Each finished episode leaves `hierarchy.call_stats` of its bars in ``episode_stats`` (the specialists'
call hit rates, the meta-agent's weight on the pairs called buy), which the `HierarchyMetrics`
callback logs during training; it needs the AEC env's ``data``, ``bar`` and ``target_weights`` (an
env without them, like bench_train's trivial env, gets no stats).

Use: ``register_env("trading", lambda cfg: rllib_env.TwoPhaseTradingEnv(data=..., mode="train", **env_cfg))``,
or `for_rllib` to adapt any AEC env with the same turn order (bench/bench_train.py's trivial env).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pettingzoo import AECEnv
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.env.multi_agent_env import MultiAgentEnv

import hierarchy
import SequentialTradingEnv as ste


class TwoPhaseEnv(MultiAgentEnv):
    """RLlib MultiAgentEnv over an AEC env whose agents act in ``possible_agents`` order every round,
    the last one (the meta-agent) after all the others."""

    def __init__(self, aec: AECEnv, infos: bool = True) -> None:
        self.raw = aec
        # RLlib keeps every info dict in its episode buffers, and PPO never reads them.
        self.forward_infos = infos
        self.possible_agents = list(aec.possible_agents)
        self.agents = list(self.possible_agents)
        data = getattr(aec, "data", None)
        self._track = data is not None and hasattr(aec, "target_weights")
        if self._track:
            self._symbols = list(data.symbols)
            self._log_body = np.log(data.close / data.open)
            self._bars: list[int] = []
            self._calls: list[np.ndarray] = []
            self._targets: list[np.ndarray] = []
        self.episode_stats: dict = {}  # call_stats of the last finished episode
        self.observation_spaces = {a: aec.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: aec.action_space(a) for a in self.possible_agents}
        self._first = self.possible_agents[:-1]
        self._last = self.possible_agents[-1]
        super().__init__()

    @property
    def unwrapped_env(self) -> AECEnv:
        return self.raw

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        raw = self.raw
        raw.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        if self._track:
            self._bars, self._calls, self._targets = [], [], []
        first = self._first or [self._last]
        return {a: raw.observe(a) for a in first}, {}

    def step(self, action_dict: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        raw, last = self.raw, self._last
        if raw.agent_selection != last:
            for agent in self._first:
                raw.step(action_dict[agent])
            # The last agent's info of the previous round travels with its observation.
            infos = {last: raw.infos[last]} if self.forward_infos else {}
            return {last: raw.observe(last)}, {}, {"__all__": False}, {"__all__": False}, infos
        if self._track:
            self._bars.append(raw.bar)
            self._calls.append(raw.calls.copy())
            self._targets.append(raw.target_weights(action_dict[last]))
        raw.step(action_dict[last])
        terminated, truncated = raw.terminations[last], raw.truncations[last]
        rewards = {a: raw.rewards[a] for a in self.possible_agents}
        if terminated or truncated:
            obs = {a: raw.observe(a) for a in self.possible_agents}
            self.agents = []
            if self._track:
                moves = self._log_body[np.asarray(self._bars, dtype=np.int64) + 1]
                self.episode_stats = hierarchy.call_stats(
                    self._symbols, np.asarray(self._calls), moves, np.asarray(self._targets)
                )
        else:
            obs = {a: raw.observe(a) for a in (self._first or [last])}
        infos = {a: raw.infos[a] for a in obs} if self.forward_infos else {}
        terms = dict.fromkeys(self.possible_agents, terminated)
        truncs = dict.fromkeys(self.possible_agents, truncated)
        terms["__all__"], truncs["__all__"] = terminated, truncated
        return obs, rewards, terms, truncs, infos


class TwoPhaseTradingEnv(TwoPhaseEnv):
    """`TwoPhaseEnv` over `SequentialTradingEnv.raw_env`; keywords as `raw_env`."""

    def __init__(self, infos: bool = True, **kwargs: Any) -> None:
        super().__init__(ste.raw_env(**kwargs), infos=infos)


def for_rllib(aec: AECEnv, kind: str = "two_phase", infos: bool = True) -> MultiAgentEnv:
    """``aec`` as an RLlib MultiAgentEnv: `TwoPhaseEnv` (``"two_phase"``; ``infos=False`` passes empty
    info dicts) or RLlib's ``PettingZooEnv`` (``"pettingzoo"``, one env step per agent, always infos)."""
    if kind == "two_phase":
        return TwoPhaseEnv(aec, infos=infos)
    if kind == "pettingzoo":
        from ray.rllib.env.wrappers.pettingzoo_env import PettingZooEnv

        return PettingZooEnv(aec)
    raise ValueError(f"RLlib env kind must be two_phase or pettingzoo, got {kind!r}")


class HierarchyMetrics(RLlibCallback):
    """RLlib callback (``config.callbacks(rllib_env.HierarchyMetrics)``): when a training episode ends,
    logs its `TwoPhaseEnv.episode_stats` (`hierarchy.flat_stats`: each specialist's call hit rate and
    buy share, the meta's weight on the pairs called buy and its reliance on the calls) as
    ``hierarchy/<name>`` in the result's ``env_runners`` section, smoothed over 20 episodes."""

    def on_episode_end(
        self, *, env: Any = None, env_index: int = 0, metrics_logger: Any = None, **kwargs: Any
    ) -> None:
        envs = getattr(env, "envs", None)  # the env runner's vector env holds one env per index
        sub = envs[env_index] if envs is not None else env
        stats = getattr(getattr(sub, "unwrapped", sub), "episode_stats", None)
        if not stats or metrics_logger is None:
            return
        for name, value in hierarchy.flat_stats(stats).items():
            if np.isfinite(value):
                metrics_logger.log_value(("hierarchy", name), value, window=20)
