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


def test_cash_is_scored_as_a_neutral_asset_holding_its_own_weight(env):
    """Cash goes through the pairs' scorer (neutral features, no call, its weight) plus an offset:
    holding cash is as sticky as holding a pair, so the agent cannot be biased towards staying in."""
    torch.manual_seed(0)
    module = make_module(env)
    with torch.no_grad():
        for p in module.scorer.parameters():  # undo the near-zero init: scores must differ
            p.normal_(0.0, 0.5)
        module.cash_offset.fill_(0.75)
    n, f = env.n_pairs, len(env.feature_names)
    obs = np.zeros(env.observation_space(S.META).shape, dtype=np.float32)
    obs[f : n * f] = 1.3  # pairs 1.. have non-neutral features; pair 0 is neutral with no call
    obs[n * f + 1 : n * f + n] = 1.0
    obs[n * f + n :] = [0.6, 0.1, 0.0, 0.3]  # weights: pair 0 holds the most, cash 0.3
    held_more = obs.copy()
    held_more[n * f + n], held_more[-1] = 0.3, 0.6  # swap pair 0's weight and cash's
    with torch.no_grad():
        scores = module._scores(torch.as_tensor(np.stack((obs, held_more)))).numpy()
    # A neutral pair holding what cash holds scores exactly cash's score less the offset.
    np.testing.assert_allclose(scores[1, n] - 0.75, scores[0, 0], rtol=1e-6)
    np.testing.assert_allclose(scores[0, n] - 0.75, scores[1, 0], rtol=1e-6)
    assert scores[0, n] != scores[1, n]  # cash's score depends on cash's current weight


def test_spaces_that_are_not_the_meta_agents_are_refused(env):
    import gymnasium

    with pytest.raises(ValueError, match="not the meta-agent's"):
        PairSharedAllocator(
            observation_space=gymnasium.spaces.Box(-1, 1, (11,), np.float32),  # 11 - 7 is not 3 * F
            action_space=env.action_space(S.META),
            model_config={"hiddens": [8], "activation": "tanh", "log_std_init": None},
        )
