"""rllib_env.TwoPhaseTradingEnv: same trajectory as the AEC env, and RLlib samples complete episodes."""

from __future__ import annotations

import numpy as np
import pytest

import rllib_env
import SequentialTradingEnv as S
import synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(n_pairs=3, n_bars=300, seed=2)


@pytest.mark.parametrize("specialists", [{}, {"pairs": {"SYN1": "rsi"}}, {"default": "ma_trend"}])
def test_two_phase_env_replays_the_aec_env(data, specialists):
    two = rllib_env.TwoPhaseTradingEnv(data=data, episode_length=30, specialists=specialists)
    aec = S.raw_env(data=data, episode_length=30, specialists=specialists)
    rng = np.random.default_rng(0)
    obs, _ = two.reset(seed=9)
    aec.reset(seed=9)
    learned = two.possible_agents[:-1]
    assert set(obs) == set(learned or ["meta"])
    bars = 0
    while True:
        if learned:
            calls = {a: int(rng.integers(0, 3)) for a in learned}
            for agent in learned:
                np.testing.assert_array_equal(obs[agent], aec.observe(agent))
                aec.step(calls[agent])
            obs, rewards, terms, truncs, _ = two.step(calls)
            assert set(obs) == {"meta"} and rewards == {} and not truncs["__all__"]
        logits = rng.normal(0, 2, 4).astype(np.float32)
        np.testing.assert_array_equal(obs["meta"], aec.observe("meta"))
        aec.step(logits)
        obs, rewards, terms, truncs, infos = two.step({"meta": logits})
        bars += 1
        assert rewards == {a: aec.rewards[a] for a in aec.possible_agents}
        if truncs["__all__"]:
            break
        assert set(obs) == set(learned or ["meta"])
    assert bars == 30 and set(obs) == set(two.possible_agents) and all(truncs.values())
    assert two.raw.portfolio_value == aec.portfolio_value


def test_infos_can_be_left_out_without_changing_the_episode(data):
    rules = {"default": "ma_trend"}  # meta-only: one env step per bar
    with_infos = rllib_env.TwoPhaseTradingEnv(data=data, episode_length=5, specialists=rules)
    without = rllib_env.TwoPhaseTradingEnv(data=data, episode_length=5, specialists=rules, infos=False)
    with_infos.reset(seed=3)
    without.reset(seed=3)
    logits = {"meta": np.array([1.0, -1.0, 0.5, 0.0], dtype=np.float32)}
    for _ in range(5):
        obs_a, rewards_a, _, truncs_a, infos_a = with_infos.step(logits)
        obs_b, rewards_b, _, truncs_b, infos_b = without.step(logits)
        np.testing.assert_array_equal(obs_a["meta"], obs_b["meta"])
        assert rewards_a == rewards_b and truncs_a == truncs_b
        assert "reward_vector" in infos_a["meta"] and infos_b == {}


def test_episode_stats_report_the_calls_hit_rate_and_the_metas_use_of_them(data):
    """Every specialist calls buy; the meta puts everything on the first pair: its weight is all on
    pairs called buy, and each pair's hit rate is the share of the episode's bars that rose."""
    two = rllib_env.TwoPhaseTradingEnv(data=data, episode_length=40, specialists={"pairs": {"SYN1": "rsi"}})
    two.reset(seed=4)
    start = two.raw.start_bar
    learned = two.possible_agents[:-1]
    first_pair = {"meta": np.array([5.0, -5.0, -5.0, -5.0], dtype=np.float32)}
    rsi_calls = []
    while True:
        two.step(dict.fromkeys(learned, 2))
        rsi_calls.append(int(two.raw.calls[1]))
        *_, truncs, _ = two.step(first_pair)
        if truncs["__all__"]:
            break
    stats = two.episode_stats
    rose = np.log(data.close / data.open)[start + 1 : start + 41] > 0
    assert stats["hit_rate"]["SYN0/USDT"] == pytest.approx(rose[:, 0].mean())
    assert stats["hit_rate"]["SYN2/USDT"] == pytest.approx(rose[:, 2].mean())
    assert stats["buy_share"]["SYN1/USDT"] == pytest.approx(np.mean(np.asarray(rsi_calls) > 0))
    assert stats["weight_on_buys"] == pytest.approx(1.0, abs=1e-3)  # softmax leaves e^-10 elsewhere
    two.reset(seed=5)
    assert two.episode_stats is stats  # kept until the next episode ends


def test_rllib_samples_complete_episodes(data):
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    register_env(
        "two_phase_test", lambda cfg: rllib_env.TwoPhaseTradingEnv(data=cfg["data"], episode_length=20)
    )
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        config = (
            PPOConfig()
            .environment("two_phase_test", env_config={"data": data})
            .env_runners(num_env_runners=0, num_envs_per_env_runner=2)
            .multi_agent(
                policies={"specialist", "meta"},
                policy_mapping_fn=lambda agent, *args, **kwargs: "meta" if agent == "meta" else "specialist",
            )
            .rl_module(
                rl_module_spec=MultiRLModuleSpec(
                    rl_module_specs={"specialist": RLModuleSpec(), "meta": RLModuleSpec()}
                )
            )
            .training(train_batch_size=200, minibatch_size=100, num_epochs=1)
            .callbacks(rllib_env.HierarchyMetrics)
        )
        algo = config.build_algo()
        episodes = algo.env_runner.sample(num_timesteps=200)
        done = [ep for ep in episodes if ep.is_done]
        assert done, "no episode finished"
        for ep in done:
            assert len(ep.agent_episodes["meta"]) == 20
            assert all(len(ep.agent_episodes[a]) == 20 for a in ("specialist_SYN0", "specialist_SYN2"))
        result = algo.train()
        assert "learners" in result
        # The callback logged each finished episode's call stats.
        logged = result["env_runners"]["hierarchy"]
        assert {"hit_rate/SYN0", "hit_rate/SYN1", "hit_rate/SYN2", "weight_on_buys", "reliance"} <= set(
            logged
        )
        assert all(0.0 <= logged[f"hit_rate/SYN{i}"] <= 1.0 for i in range(3))
        algo.stop()
    finally:
        ray.shutdown()
