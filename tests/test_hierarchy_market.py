"""The hierarchy market (synthetic.py, ``signal_window``): the edge is in a pair's window, not in its
latest bar; its oracle trades it; hierarchy.py's fixed meta-agent and call diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

import decision
import hierarchy
import SequentialTradingEnv as S
import synthetic
from settings import ConfigError

WINDOW = 7  # pulses behind the state; the env's default window of 8 bars sees them all
FEE = {"fee_rate": 0.001}


@pytest.fixture(scope="module")
def market():
    return synthetic.generate(n_pairs=3, n_bars=24_000, signal_corr=0.1, seed=11, signal_window=WINDOW)


def _out_of_sample_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Least squares on the first half, correlation of its prediction with ``y`` on the second."""
    x = np.column_stack((np.ones(len(x)), x))
    half = len(x) // 2
    coef, *_ = np.linalg.lstsq(x[:half], y[:half], rcond=None)
    return float(np.corrcoef(x[half:] @ coef, y[half:])[0, 1])


def test_pulse_state_is_the_scaled_sum_of_the_previous_pulses():
    pulses = np.random.default_rng(0).standard_normal((20, 2))
    state = synthetic.pulse_state(pulses, 3)
    for t in range(20):
        expected = pulses[max(t - 3, 0) : t].sum(axis=0) / np.sqrt(3)
        np.testing.assert_allclose(state[t], expected, atol=1e-12)


def test_only_a_window_of_bars_predicts_the_next_return(market):
    """What the meta-agent sees (every feature of the latest bar, normalized as the env does) predicts
    the next return ~not at all; the pair's last 8 bars of the pulse feature predict it at ~rho."""
    cfg = S.resolve_config({})
    names = decision.feature_names(market.feature_names, cfg)
    z = decision.observe_features(market, cfg)  # exactly what the env observes
    next_ret = np.log(market.close[1:] / market.close[:-1]) / market.meta["sigma"][1:, None]
    start = 800  # past the normalization's warm-up and the first windows
    pulse = z[:, :, names.index(synthetic.SIGNAL_FEATURE)]
    single, windowed = [], []
    for i in range(market.n_pairs):
        y = next_ret[start - 1 :, i]
        latest = z[start - 1 : -1, i, :]
        window = np.column_stack(
            [pulse[start - 1 - lag : len(pulse) - 1 - lag, i] for lag in range(WINDOW + 1)]
        )
        single.append(_out_of_sample_corr(latest, y))
        windowed.append(_out_of_sample_corr(window, y))
    assert max(abs(c) for c in single) < 0.03, single
    assert min(windowed) > 0.07, windowed


def test_the_oracle_trades_the_window_signal_at_a_profit(market):
    train, test = market.slice_bars(0, 16_000), market.slice_bars(16_000, market.n_bars)
    threshold, train_growth = synthetic.tune_oracle(train, FEE)
    assert train_growth > 5.0
    held_out = synthetic.log_growth(test, synthetic.oracle_targets(test, threshold), FEE)
    assert held_out > 1.0
    # Trading the pulse feature itself (what a single bar shows) as if it were the signal has no edge.
    latest_only = synthetic.generate(n_pairs=3, n_bars=8_000, signal_corr=0.1, seed=11, signal_window=0)
    latest_only.features[..., -1] = test.features[: latest_only.n_bars, :, -1]
    latest_only.close[:] = test.close[: latest_only.n_bars]
    latest_only.open[:] = test.open[: latest_only.n_bars]
    assert synthetic.log_growth(latest_only, synthetic.oracle_targets(latest_only, threshold), FEE) < 0.0


def test_the_default_market_keeps_its_planted_feature():
    planted = synthetic.generate(n_pairs=2, n_bars=3_000, seed=3)
    explicit = synthetic.generate(n_pairs=2, n_bars=3_000, seed=3, signal_window=0)
    np.testing.assert_array_equal(planted.features, explicit.features)
    np.testing.assert_array_equal(synthetic.predictive_signal(planted), synthetic.signal_of(planted))
    signal = synthetic.signal_of(planted)
    assert np.corrcoef(signal[1:, 0], signal[:-1, 0])[0, 1] > 0.8  # the AR(1) plant, not pulses


@pytest.mark.parametrize("bad", [-1, 2.5, True, "7"])
def test_bad_signal_window_is_refused(bad):
    with pytest.raises(ConfigError, match="signal_window"):
        synthetic.generate(n_pairs=2, n_bars=100, signal_window=bad)


def test_follow_calls_holds_the_pairs_called_buy_or_cash():
    env = S.raw_env(
        data=synthetic.generate(n_pairs=3, n_bars=400, seed=1),
        mode="eval",
        specialists={"default": "ma_trend"},
    )
    env.reset(seed=0)
    follow = hierarchy.FollowCalls(lambda agent, obs: None, n_pairs=3)
    seen = set()
    for _ in range(300):
        obs = env.observe("meta")
        calls = hierarchy.meta_calls(obs, 3)
        np.testing.assert_array_equal(calls, env.calls)
        target = env.target_weights(follow("meta", obs))
        buys = calls > 0
        want = np.append(buys / buys.sum(), 0.0) if buys.any() else np.eye(4)[-1]
        np.testing.assert_allclose(target, want, atol=1e-3)
        seen.add(int(buys.sum()))
        env.step(follow("meta", obs))
    assert 0 in seen and len(seen) >= 3  # cash, and several numbers of buys were exercised


def test_call_diagnostics_measure_hits_and_reliance(market):
    """The diagnostic `signal` rule on the planted market is right more often than a coin; a meta-agent
    that follows the calls puts all its pair weight on them, one that ignores them does not."""
    planted = synthetic.generate(n_pairs=3, n_bars=3_000, signal_corr=0.3, seed=5)
    rules = {"default": "signal"}
    follow = hierarchy.FollowCalls(lambda agent, obs: None, n_pairs=3)
    out = hierarchy.call_diagnostics(S.env(data=planted, mode="eval", specialists=rules), follow)
    assert set(out["hit_rate"]) == set(planted.symbols)
    assert all(0.55 < h < 0.8 for h in out["hit_rate"].values()), out["hit_rate"]
    assert out["weight_on_buys"] == pytest.approx(1.0, abs=1e-3)
    assert 0.1 < out["buy_call_share"] < 0.5
    equal = np.zeros(4, dtype=np.float32)  # equal weight over pairs and cash whatever the calls
    ignore = hierarchy.call_diagnostics(
        S.env(data=planted, mode="eval", specialists=rules), lambda a, o: equal
    )
    assert ignore["weight_on_buys"] == pytest.approx(ignore["buy_call_share"], abs=1e-6)


def test_call_cost_is_charged_per_buy_or_sell_call():
    """rewards.specialist.call_cost_bps: each buy/sell call pays the fee, hold pays nothing."""
    data = synthetic.generate(n_pairs=2, n_bars=200, seed=4)
    plain = S.raw_env(data=data, mode="eval")
    charged = S.raw_env(data=data, mode="eval", rewards={"specialist": {"call_cost_bps": 10.0}})
    plain.reset()
    charged.reset()
    logits = np.array([1.0, 0.0, 0.5], dtype=np.float32)
    for answers in ([2, 0], [1, 2], [0, 1]):  # (buy, sell), (hold, buy), (sell, hold)
        for env in (plain, charged):
            for action in answers:
                env.step(action)
            env.step(logits)
        for agent, action in zip(plain.possible_agents[:-1], answers, strict=True):
            fee = 100.0 * 10.0 / 1e4 * abs(action - 1)  # scale x fee for a buy or sell call
            assert charged.rewards[agent] == pytest.approx(plain.rewards[agent] - fee, abs=1e-12)
        assert charged.rewards["meta"] == plain.rewards["meta"]
