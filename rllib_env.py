"""SequentialTradingEnv as an RLlib MultiAgentEnv that steps in two phases per bar (optional, faster).

RLlib's ``PettingZooEnv`` wrapper makes one RLlib env step per agent: N + 1 per bar, and RLlib's own
cost is per env step (connectors, one forward pass per module). Here one bar is two env steps:

1. every learned specialist acts at once (their observations are returned together);
2. the meta-agent acts on their answers; the bar settles.

The same AEC env (`SequentialTradingEnv.raw_env`) does all the work, stepped agent by agent inside,
so observations, rewards, infos and episodes are identical to the AEC version's (a test checks it).
Rewards of a bar reach each agent with its next observation; when the episode ends every agent
gets a last observation, as RLlib needs for bootstrapping truncated episodes.

Use: ``register_env("trading", lambda cfg: rllib_env.TwoPhaseTradingEnv(data=..., mode="train", **env_cfg))``.
"""

from __future__ import annotations

from typing import Any

from ray.rllib.env.multi_agent_env import MultiAgentEnv

import SequentialTradingEnv as ste


class TwoPhaseTradingEnv(MultiAgentEnv):
    """RLlib MultiAgentEnv over `SequentialTradingEnv.raw_env`; keywords as `raw_env`."""

    def __init__(self, **kwargs: Any) -> None:
        self.raw = ste.raw_env(**kwargs)
        self.possible_agents = list(self.raw.possible_agents)
        self.agents = list(self.possible_agents)
        self.observation_spaces = {a: self.raw.observation_space(a) for a in self.possible_agents}
        self.action_spaces = {a: self.raw.action_space(a) for a in self.possible_agents}
        self._specialists = self.possible_agents[:-1]
        super().__init__()

    @property
    def unwrapped_env(self) -> ste.raw_env:
        return self.raw

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        raw = self.raw
        raw.reset(seed=seed, options=options)
        self.agents = list(self.possible_agents)
        first = self._specialists or [ste.META]
        return {a: raw.observe(a) for a in first}, {}

    def step(self, action_dict: dict[str, Any]) -> tuple[dict, dict, dict, dict, dict]:
        raw = self.raw
        if raw.agent_selection != ste.META:
            for agent in self._specialists:
                raw.step(action_dict[agent])
            # The meta-agent's info of the previous bar travels with its observation.
            infos = {ste.META: raw.infos[ste.META]}
            return {ste.META: raw.observe(ste.META)}, {}, {"__all__": False}, {"__all__": False}, infos
        raw.step(action_dict[ste.META])
        terminated, truncated = raw.terminations[ste.META], raw.truncations[ste.META]
        rewards = {a: raw.rewards[a] for a in self.possible_agents}
        if terminated or truncated:
            obs = {a: raw.observe(a) for a in self.possible_agents}
            self.agents = []
        else:
            obs = {a: raw.observe(a) for a in (self._specialists or [ste.META])}
        infos = {a: raw.infos[a] for a in obs}
        terms = dict.fromkeys(self.possible_agents, terminated)
        truncs = dict.fromkeys(self.possible_agents, truncated)
        terms["__all__"], truncs["__all__"] = terminated, truncated
        return obs, rewards, terms, truncs, infos
