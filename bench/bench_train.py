"""Training throughput: agent-steps/s of RLlib PPO with SequentialTradingEnv beside a trivial env.

    python bench/bench_train.py [--pairs 10] [--iterations 3] [--set KEY=VALUE ...]

Both rows use the same Train.py settings in the same run (configs/train.yaml, synthetic market,
resources and batch sizes as configured); the trivial env has identical agents, spaces and episode
length but does no work (zero observations, zero rewards), so the gap is our env's own cost.
Timed phases (RLlib's result timers are smoothed averages, so we time them ourselves):
- ``sample``: one synchronous sampling round of a train batch over the env runners;
- ``iteration``: a full ``algo.train()`` (sampling plus the PPO update).
Aim (issue 7): our env >= 90% of the trivial env's throughput, >= 4,500 agent-steps/s on 2 CPUs.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import Train  # noqa: E402
import training  # noqa: E402


def trivial_env_class():
    """An AEC env with the agents and spaces of the real one and no work per step."""
    from pettingzoo import AECEnv

    class TrivialAEC(AECEnv):
        metadata = {"name": "trivial_same_spaces_v0", "render_modes": []}

        def __init__(self, agents, obs_spaces, act_spaces, episode_bars):
            super().__init__()
            self.possible_agents = list(agents)
            self._obs_spaces, self._act_spaces = obs_spaces, act_spaces
            self._zeros = {a: np.zeros(s.shape, s.dtype) for a, s in obs_spaces.items()}
            self.episode_bars = episode_bars

        def observation_space(self, agent):
            return self._obs_spaces[agent]

        def action_space(self, agent):
            return self._act_spaces[agent]

        def reset(self, seed=None, options=None):
            self.agents = list(self.possible_agents)
            self.rewards = dict.fromkeys(self.agents, 0.0)
            self._cumulative_rewards = dict.fromkeys(self.agents, 0.0)
            self.terminations = dict.fromkeys(self.agents, False)
            self.truncations = dict.fromkeys(self.agents, False)
            self.infos = {a: {} for a in self.agents}
            self._index, self._bar = 0, 0
            self.agent_selection = self.agents[0]

        def observe(self, agent):
            return self._zeros[agent]

        def step(self, action):
            agent = self.agent_selection
            if self.terminations[agent] or self.truncations[agent]:
                self._was_dead_step(action)
                return
            self._cumulative_rewards[agent] = 0.0
            self._index += 1
            if self._index == len(self.agents):
                self._index, self._bar = 0, self._bar + 1
                if self._bar >= self.episode_bars:
                    self.truncations = dict.fromkeys(self.agents, True)
            self.agent_selection = self.agents[self._index]

    return TrivialAEC


def _trivial_creator(env_config, spec):
    # The same RLlib adapter as the real env's (resources), so only the env's work differs.
    return training.adapt_for_rllib(trivial_env_class()(*spec), env_config["cfg"])


def env_spec(cfg: dict, data) -> tuple:
    """(agents, observation spaces, action spaces, episode bars) of the real env in training mode."""
    real = training.make_env(cfg, data, mode="train")
    real.reset(seed=0)
    agents = list(real.possible_agents)
    spec = (
        agents,
        {a: real.observation_space(a) for a in agents},
        {a: real.action_space(a) for a in agents},
        int(cfg["env"]["episode_length"]),
    )
    real.close()
    return spec


def measure(cfg: dict, env_name: str, iterations: int) -> dict[str, float]:
    """Agent-steps/s of sampling alone and of whole iterations (after one warm-up iteration)."""
    from ray.rllib.execution.rollout_ops import synchronous_parallel_sample

    algo = training.build_algo_config(cfg, env_name=env_name).build_algo()
    try:
        algo.train()  # warm-up: actor start, first weights sync, torch lazy init
        batch = cfg["ppo"]["train_batch_size"]
        sample_rates = []
        for _ in range(iterations):
            tick = time.perf_counter()
            episodes = synchronous_parallel_sample(
                worker_set=algo.env_runner_group, max_env_steps=batch, _uses_new_env_runners=True
            )
            seconds = time.perf_counter() - tick
            steps = sum(ep.agent_steps() for ep in episodes)
            sample_rates.append(steps / seconds)
        iteration_rates = []
        for _ in range(iterations):
            tick = time.perf_counter()
            result = algo.train()
            iteration_rates.append(training.agent_steps(result) / (time.perf_counter() - tick))
    finally:
        algo.stop()
    return {"sample": float(np.median(sample_rates)), "iteration": float(np.median(iteration_rates))}


def _ratio(ours: float, reference: float) -> str:
    # RLlib reported no agent steps for an iteration (seen under heavy load): no ratio, not a crash.
    return f"{ours / reference:.0%}" if reference > 0 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=3, help="timed rounds per phase (median)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Train config override"
    )
    args = parser.parse_args(argv)

    from ray.tune.registry import register_env

    cfg = Train.load_config(None, args.set)
    cfg["data"]["source"] = {**cfg["data"]["source"], "n_pairs": args.pairs}
    splits = training.load_splits(cfg)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_train_"))
    training.init_ray(None, log_dir)
    training.redirect_rllib_logdir(log_dir)
    register_env("trivial_same_spaces", functools.partial(_trivial_creator, spec=env_spec(cfg, splits.train)))
    runners = training.resolve_num_env_runners(cfg)
    cfg = Train.set_path(cfg, "resources.num_env_runners", runners)
    print(
        f"{args.pairs} pairs ({args.pairs + 1} agents), {runners} env runners x "
        f"{cfg['resources']['num_envs_per_env_runner']} envs, train batch {cfg['ppo']['train_batch_size']} "
        f"agent steps, median of {args.iterations}"
    )
    rows = {}
    for name, env_name in (
        ("SequentialTradingEnv", training.ENV_NAME),
        ("trivial (same spaces)", "trivial_same_spaces"),
    ):
        rows[name] = measure(cfg, env_name, args.iterations)
    ours, trivial = rows["SequentialTradingEnv"], rows["trivial (same spaces)"]
    print(f"{'env':<24}{'sample agent-steps/s':>22}{'iteration agent-steps/s':>26}")
    for name, row in rows.items():
        print(f"{name:<24}{row['sample']:>22,.0f}{row['iteration']:>26,.0f}")
    print(
        f"{'ours / trivial':<24}{_ratio(ours['sample'], trivial['sample']):>22}"
        f"{_ratio(ours['iteration'], trivial['iteration']):>26}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
