"""meta_module.PairSharedAllocator: one scorer for every pair, on the meta-agent's real spaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ray.rllib.core.columns import Columns

import SequentialTradingEnv as S
import synthetic
from meta_module import PairSharedAllocator


@pytest.fixture(scope="module")
def env():
    data = synthetic.generate(n_pairs=3, n_bars=300, seed=4)
    return S.raw_env(data=data, episode_length=50, specialists={"default": "ma_trend"})


def make_module(env, log_std_init=None):
    return PairSharedAllocator(
        observation_space=env.observation_space(S.META),
        action_space=env.action_space(S.META),
        model_config={"hiddens": [8, 8], "activation": "tanh", "log_std_init": log_std_init},
    )


def permute_pairs(obs: np.ndarray, order: list[int], n: int, f: int) -> np.ndarray:
    features = obs[: n * f].reshape(n, f)[order].reshape(-1)
    calls = obs[n * f : n * f + n][order]
    weights = np.concatenate((obs[n * f + n : n * f + 2 * n][order], obs[-1:]))
    return np.concatenate((features, calls, weights))


def test_scores_follow_the_pairs_not_their_positions(env):
    torch.manual_seed(0)
    module = make_module(env, log_std_init=-1.0)
    env.reset(seed=1)
    for _ in range(40):  # move past the normalization warm-up so the features are not all zero
        env.step(np.zeros(4, dtype=np.float32))
    obs = env.observe(S.META)
    n, f = env.n_pairs, len(env.feature_names)
    order = [2, 0, 1]
    batch = torch.as_tensor(np.stack((obs, permute_pairs(obs, order, n, f))))
    with torch.no_grad():
        out = module.forward_inference({Columns.OBS: batch})[Columns.ACTION_DIST_INPUTS].numpy()
    assert out.shape == (2, 2 * (n + 1))
    mean, permuted_mean = out[0, : n + 1], out[1, : n + 1]
    np.testing.assert_allclose(permuted_mean[:n], mean[:n][order], rtol=1e-6)
    assert permuted_mean[n] == mean[n]  # cash keeps its score
    assert len(set(np.round(mean[:n], 6))) == n  # different pairs, different scores
    np.testing.assert_allclose(out[:, n + 1 :], -1.0)  # log std starts at log_std_init
    values = module.compute_values({Columns.OBS: batch})
    assert values.shape == (2,)


def test_spaces_that_are_not_the_meta_agents_are_refused(env):
    import gymnasium

    with pytest.raises(ValueError, match="not the meta-agent's"):
        PairSharedAllocator(
            observation_space=gymnasium.spaces.Box(-1, 1, (11,), np.float32),  # 11 - 7 is not 3 * F
            action_space=env.action_space(S.META),
            model_config={"hiddens": [8], "activation": "tanh", "log_std_init": None},
        )
