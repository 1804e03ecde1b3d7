"""The decision core (decision.py) and the one episode loop (decision.play_policy).

What is checked: features of bar t depend on bars t-history_bars+1..t only, bit for bit (whole-array
path == per-bar path, slices starting anywhere, gaps in the data); the z-scores equal an independent
rolling z-score; a trained run's Policy.decide gives identical decisions from histories starting at
different bars and equals the env's own observations and the episode loop; a backtest started in the
middle observes exactly what one started months earlier observed; missing history is refused with
the number of missing bars; the core loads a run without Ray.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_performance

import backtest
import decision
import SequentialTradingEnv as S
import synthetic
from market_arrays import MarketData
from settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
smoke_run = test_performance.smoke_run  # the module-scoped fixture: a run trained by Train.py's CLI


def env_cfg(**overrides) -> dict:
    return S.resolve_config({"normalization": {"window": 60, "min_periods": 10}, "window": 5, **overrides})


def with_gaps(data: MarketData, drop: np.ndarray) -> MarketData:
    keep = np.setdiff1d(np.arange(data.n_bars), drop)
    return MarketData(
        symbols=data.symbols, timeframe=data.timeframe, open_time_ms=data.open_time_ms[keep],
        open=data.open[keep], high=data.high[keep], low=data.low[keep], close=data.close[keep],
        volume=data.volume[keep], features=data.features[keep], feature_names=data.feature_names,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Features: causal, fixed history, bit for bit
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gaps", [False, True])
def test_bar_t_features_do_not_depend_on_where_the_slice_starts(gaps):
    data = synthetic.generate(n_pairs=3, n_bars=900, seed=4)
    if gaps:  # missing bars (the alignment rule drops them): blocks hold fewer rows than the window
        data = with_gaps(data, np.r_[100:160, 300, 301, 555:640])
    cfg = env_cfg()
    need = decision.history_bars(cfg)
    assert need == 60 + 5 - 1
    whole = decision.observe_features(data, cfg)
    norm_window = cfg["normalization"]["window"]
    for start in (1, 37, 59, 60, 250, 401):
        part = decision.observe_features(data.slice_bars(start, data.n_bars), cfg)
        # Every row with a full normalization window inside the slice is identical, bit for bit.
        np.testing.assert_array_equal(part[norm_window - 1 :], whole[start + norm_window - 1 :])
    # The per-bar path (what Policy.decide does): only the last history_bars bars, one bar at a time.
    for t in range(need - 1, data.n_bars, 37):
        recent = decision.observe_features(data.slice_bars(t - need + 1, t + 1), cfg)
        np.testing.assert_array_equal(recent[-1], whole[t])


def test_a_running_sum_would_not_be_bit_identical():
    """Why rolling_sums works in time-anchored blocks: a difference of running sums is not exact."""
    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 10.0, (3000, 1)) ** 3
    times = 3_600_000 * np.arange(3000, dtype=np.int64)
    window = 100

    def running(v):  # the former approach: cumsum over the slice, minus the cumsum window rows back
        c = np.cumsum(v, axis=0)
        out = c.copy()
        out[window:] -= c[:-window]
        return out

    assert not np.array_equal(running(x[1000:])[window:], running(x)[1000 + window :])
    exact = decision.rolling_sums(x, times, window, 3_600_000)
    later = decision.rolling_sums(x[1000:], times[1000:], window, 3_600_000)
    np.testing.assert_array_equal(later[window - 1 :], exact[1000 + window - 1 :])
    np.testing.assert_allclose(exact[window - 1 :, 0],
                               np.convolve(x[:, 0], np.ones(window), "valid"), rtol=1e-12)  # fmt: skip


def test_z_scores_equal_an_independent_rolling_z_score():
    data = synthetic.generate(n_pairs=2, n_bars=400, seed=9)
    cfg = env_cfg()
    z = decision.observe_features(data, cfg)
    names = decision.feature_names(data.feature_names, cfg)
    raw = data.features[:, :, [data.feature_names.index(n) for n in names]]
    close = data.close[:, :, None]
    # Independent: the scaling rules written out again, then mean / std(ddof=1) of bars t-59..t.
    scale = np.array([n in decision.RELATIVE_LEVEL or n in decision.RELATIVE_SIZE for n in names])
    x = np.where(scale, raw / close, raw) - np.array([n in decision.RELATIVE_LEVEL for n in names])
    for t in (9, 10, 30, 59, 60, 200, 399):
        w = x[max(0, t - 59) : t + 1]
        expected = (x[t] - w.mean(axis=0)) / w.std(axis=0, ddof=1) if len(w) >= 10 else np.zeros_like(x[t])
        np.testing.assert_allclose(z[t], np.clip(expected, -5, 5), atol=2e-6, err_msg=f"bar {t}")
    assert np.abs(z[10:]).mean() > 0.3  # not trivially zero


def test_missing_history_is_refused_with_the_number_of_missing_bars():
    data = synthetic.generate(n_pairs=2, n_bars=300, seed=1)
    cfg = env_cfg()
    with pytest.raises(ConfigError, match=r"needs 64 bars.*holds 41, so 23 bars are missing"):
        decision.require_history(data, 40, 64, "the backtest")
    start_ms = int(data.open_time_ms[100])
    part, first = decision.warm_range(data, start_ms, None, decision.history_bars(cfg), "the range")
    assert first == 63 and part.open_time_ms[first] == start_ms and part.n_bars == 300 - 100 + 63
    with pytest.raises(ConfigError, match="14 bars are missing"):
        decision.warm_range(data, int(data.open_time_ms[49]), None, 64, "the range")


def test_layouts_name_every_slice():
    lay = decision.ObservationLayout(n_pairs=3, n_features=4, window=5)
    assert lay.specialist_size == 21 and lay.specialist_weight == 20
    meta = np.arange(lay.meta_size)
    assert list(meta[lay.meta_calls]) == [12, 13, 14] and list(meta[lay.meta_weights]) == [15, 16, 17, 18]
    assert decision.ObservationLayout.for_meta(19, 3) == decision.ObservationLayout(3, 4)
    with pytest.raises(ValueError, match="not"):
        decision.ObservationLayout.for_meta(20, 3)
    assert decision.REWARDS.call == 3 and decision.META_REWARDS.log_return == 0 and decision.REWARDS.ret == 0


# ----------------------------------------------------------------------------------------------
# A trained run
# ----------------------------------------------------------------------------------------------


def long_market(run_dir: Path, n_bars: int) -> MarketData:
    """The run's synthetic market, longer (same pairs, timeframe and features)."""
    cfg, _ = decision.load_run_files(run_dir)
    source = {k: v for k, v in cfg["data"]["source"].items() if k != "kind"}
    return synthetic.generate(**{**source, "n_bars": n_bars})


@pytest.mark.slow
def test_decisions_are_identical_from_histories_starting_anywhere(smoke_run):
    policy = decision.load_policy(smoke_run)
    data = long_market(smoke_run, 1500)
    need = policy.history_bars
    rng = np.random.default_rng(0)
    for t in (need - 1, 700, 1499):
        weights = rng.dirichlet(np.ones(data.n_pairs + 1))
        starts = [s for s in (0, t // 3, t - need + 1) if t + 1 - s >= need]
        decisions = [policy.decide(data.slice_bars(start, t + 1), weights) for start in starts]
        assert len(decisions) >= 2
        for d in decisions[1:]:
            np.testing.assert_array_equal(d.calls, decisions[0].calls)
            np.testing.assert_array_equal(d.target_weights, decisions[0].target_weights)
        assert decisions[0].bar_open_time_ms == data.open_time_ms[t]
        assert abs(decisions[0].target_weights.sum() - 1.0) < 1e-12 and decisions[0].target_weights.min() >= 0
    with pytest.raises(ConfigError, match="1 bars are missing"):
        policy.decide(data.slice_bars(0, need - 1), weights)


@pytest.mark.slow
def test_env_observes_what_the_decision_core_computes_and_plays_like_the_loop(smoke_run):
    policy = decision.load_policy(smoke_run)
    data = long_market(smoke_run, 900)
    first = policy.history_bars - 1
    env = S.env(data=data, mode="eval", first_bar=first, **policy.env_config)
    raw = env.unwrapped
    env.reset(seed=0)
    equity = [raw.portfolio_value]
    lay = raw.observed.layout
    checked = 0
    for agent in env.agent_iter():
        obs, _, terminated, truncated, _ = env.last()
        if terminated or truncated:
            env.step(None)
            continue
        t = raw.bar
        if agent == "meta":
            action = policy.meta_action(obs)
            if t >= first:
                # The decision core's per-bar path over the last history_bars bars only.
                market = decision.MarketObservations(data.slice_bars(t - first, t + 1), policy.env_config)
                core = market.meta(first, raw.calls, raw.weights)
                assert obs.tobytes() == core.tobytes(), f"bar {t}"
                d = policy.decide(data.slice_bars(0, t + 1), raw.weights)
                np.testing.assert_array_equal(d.calls, raw.calls)
                np.testing.assert_array_equal(d.target_weights, raw.target_weights(action))
                checked += 1
        else:
            i = raw._pair_of[agent]
            action = int(policy.specialist_actions(obs[None])[0])
            if t >= first:
                market = decision.MarketObservations(data.slice_bars(t - first, t + 1), policy.env_config)
                assert obs.tobytes() == market.specialist(i, first, raw.weights[i]).tobytes()
        env.step(action)
        if agent == "meta" and t >= first:
            equity.append(raw.portfolio_value)
    assert checked == data.n_bars - 1 - first and lay.meta_size == raw.observation_space("meta").shape[0]
    # The same policy through the one episode loop (validation, backtests) from the same bar: the
    # same equity as the env's own accounting, bit for bit.
    record = decision.play_policy(policy, data, first)
    assert len(record.equity) == data.n_bars - first
    np.testing.assert_array_equal(record.equity, np.array(equity))


@pytest.mark.slow
def test_mid_data_backtest_observes_what_an_earlier_one_observed(smoke_run):
    policy = decision.load_policy(smoke_run)
    data = long_market(smoke_run, 3000)  # 4 months of 1h bars
    need = policy.history_bars
    early = decision.play_policy(policy, data, need - 1)
    mid_start = 2200  # three months after the first warm bar
    market, first = decision.warm_range(data, int(data.open_time_ms[mid_start]), None, need, "the mid one")
    assert first == need - 1 and market.n_bars == data.n_bars - mid_start + need - 1
    mid = decision.play_policy(policy, market, first)
    offset = mid_start - (need - 1)
    np.testing.assert_array_equal(mid.extra["observed_features"], early.extra["observed_features"][offset:])
    np.testing.assert_array_equal(mid.open_time_ms, early.open_time_ms[offset:])
    assert mid.equity[0] == policy.env_config["portfolio"]["initial_cash"]  # holdings differ: fresh cash


@pytest.mark.slow
def test_the_core_loads_and_decides_without_ray(smoke_run):
    code = (
        "import sys, numpy as np, decision, synthetic\n"
        f"policy = decision.load_policy({str(smoke_run)!r})\n"
        "cfg, _ = decision.load_run_files(" + repr(str(smoke_run)) + ")\n"
        "src = {k: v for k, v in cfg['data']['source'].items() if k != 'kind'}\n"
        "data = synthetic.generate(**src)\n"
        "d = policy.decide(data, np.eye(len(policy.symbols) + 1)[-1])\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n"
        "print(d.calls.tolist(), round(float(d.target_weights.sum()), 12))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("1.0")


# ----------------------------------------------------------------------------------------------
# The episode loop with a policy built in memory (no training): chaining segments, carrying capital
# ----------------------------------------------------------------------------------------------


def random_policy(data: MarketData, cfg: dict, seed: int = 0) -> decision.Policy:
    """A Policy over small random linear networks (what Policy.from_states builds, minus training)."""
    import torch

    torch.manual_seed(seed)
    lay = decision.ObservationLayout(data.n_pairs, len(decision.feature_names(data.feature_names, cfg)),
                                     int(cfg["window"]))  # fmt: skip
    specialist = torch.nn.Linear(lay.specialist_size, 3)
    meta = torch.nn.Linear(lay.meta_size, data.n_pairs + 1)
    with torch.no_grad():
        meta.weight.mul_(20.0)  # decisive logits: the allocation moves, so fees and drift matter
    return decision.Policy(cfg, data.symbols, data.timeframe, data.feature_names, specialist, meta)


def test_segments_with_a_carried_portfolio_chain_into_the_whole_episode():
    data = synthetic.generate(n_pairs=3, n_bars=500, seed=2)
    cfg = env_cfg(portfolio={"fee_rate": 0.001, "slippage_bps": 2.0})
    policy = random_policy(data, cfg)
    first = policy.history_bars - 1
    whole = decision.play_policy(policy, data, first)
    assert whole.fees.sum() > 0 and len(np.unique(whole.calls)) == 3
    # Walk-forward style: segment 1 ends at bar b (its last decision executes at b's open), segment 2
    # trades on from bar b with the same Portfolio, warm from the bars before b.
    b = 301
    pf = backtest.make_portfolio(data.symbols, cfg["portfolio"])
    one = decision.play_policy(policy, data.slice_bars(0, b + 1), first, portfolio=pf)
    two = decision.play_policy(policy, data.slice_bars(b - first, data.n_bars), first, portfolio=pf)
    np.testing.assert_array_equal(one.equity, whole.equity[: b - first + 1])
    np.testing.assert_array_equal(two.equity, whole.equity[b - first :])
    np.testing.assert_array_equal(two.calls[:-1], whole.calls[b - first : -1])
    # A fresh portfolio at bar b instead (what a backtest started at b does): other holdings, other path.
    fresh = decision.play_policy(policy, data.slice_bars(b - first, data.n_bars), first)
    assert not np.array_equal(fresh.equity, two.equity)
    np.testing.assert_array_equal(fresh.extra["observed_features"], two.extra["observed_features"])

