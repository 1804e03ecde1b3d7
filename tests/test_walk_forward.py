"""walk_forward.py and folds.py: fold plans, config errors, the chained out-of-sample account, the
statistics' wiring, resume after a kill, the smoke walk-forward end to end, and what a walk-forward
finds on a planted synthetic market and on one without signal.

The plan, config and chaining tests need no training (a rule policy trades the folds); the
end-to-end ones train real (tiny) RLlib runs as Ray tasks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import folds
import synthetic
import walk_forward as wf
from market_arrays import MarketData
from settings import ConfigError, parse_time_ms

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "walk_forward_smoke.yaml"
DAY_MS = folds.MS_PER_DAY


# ---------------------------------------------------------------------------------------------
# Fold plans
# ---------------------------------------------------------------------------------------------

PLAN = {"mode": "rolling", "test_start": "2020-03-01", "test_end": "2020-06-01", "train_days": 30,
        "validation_days": 10, "test_days": 20, "step_days": None}  # fmt: skip


def assert_plan_invariants(plan: list[folds.Fold]) -> None:
    """No test bar inside its fold's training or validation range; no overlap between test segments."""
    for f in plan:
        for lo, hi in (f.ranges_ms()["train"], f.ranges_ms()["validation"]):
            assert hi <= f.test_start_ms or lo >= f.test_end_ms  # disjoint from the test range
        assert f.train_start_ms < f.train_end_ms <= f.validation_start_ms < f.validation_end_ms
        assert f.validation_end_ms <= f.test_start_ms < f.test_end_ms
    for a, b in zip(plan, plan[1:], strict=False):
        assert a.test_end_ms <= b.test_start_ms


def test_rolling_plan_tiles_the_test_period():
    plan = folds.plan_folds(PLAN)
    start, end = parse_time_ms("2020-03-01"), parse_time_ms("2020-06-01")
    assert [f.index for f in plan] == [0, 1, 2, 3, 4]  # 92 days in 20-day segments: 4 whole + 12 days
    assert plan[0].test_start_ms == start and plan[-1].test_end_ms == end
    assert plan[-1].test_end_ms - plan[-1].test_start_ms == 12 * DAY_MS  # the last one is cut at test_end
    for a, b in zip(plan, plan[1:], strict=False):
        assert a.test_end_ms == b.test_start_ms  # contiguous: one continuous account
    for f in plan:
        assert f.train_end_ms - f.train_start_ms == 30 * DAY_MS  # rolling: fixed length
        assert f.validation_end_ms == f.test_start_ms and f.validation_start_ms == f.train_end_ms
        assert f.test_start_ms - f.validation_start_ms == 10 * DAY_MS
    assert_plan_invariants(plan)


def test_anchored_plan_grows_from_the_first_training_start():
    rolling = folds.plan_folds(PLAN)
    anchored = folds.plan_folds({**PLAN, "mode": "anchored"})
    assert anchored[0] == rolling[0]
    for a, r in zip(anchored, rolling, strict=True):
        assert a.train_start_ms == rolling[0].train_start_ms
        assert a.train_end_ms == r.train_end_ms
        assert (a.test_start_ms, a.test_end_ms) == (r.test_start_ms, r.test_end_ms)
    lengths = [f.train_end_ms - f.train_start_ms for f in anchored]
    assert np.all(np.diff(lengths) == 20 * DAY_MS)  # one step more training per fold
    assert_plan_invariants(anchored)


def test_step_longer_than_test_leaves_gaps_and_shorter_is_refused():
    plan = folds.plan_folds({**PLAN, "step_days": 30})
    assert all(b.test_start_ms - a.test_end_ms == 10 * DAY_MS for a, b in zip(plan, plan[1:], strict=False))
    assert_plan_invariants(plan)
    with pytest.raises(ConfigError, match="overlap"):
        folds.plan_folds({**PLAN, "step_days": 10})


def test_fold_splits_are_train_py_splits():
    fold = folds.plan_folds(PLAN)[1]
    splits = fold.splits()
    assert splits["test"] == {"start": "2020-03-21 00:00", "end": "2020-04-10 00:00"}
    for name, (lo, hi) in fold.ranges_ms().items():
        assert parse_time_ms(splits[name]["start"]) == lo and parse_time_ms(splits[name]["end"]) == hi


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "expanding"}, "folds.mode"),
        ({"train_days": 0}, "folds.train_days"),
        ({"test_days": "20"}, "folds.test_days"),
        ({"test_end": "2020-02-01"}, "before folds.test_end"),
        ({"test_start": None}, "folds.test_start is required"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_plan_is_a_clear_error(change, message):
    with pytest.raises(ConfigError, match=message):
        folds.plan_folds({**PLAN, **change})


def test_coverage_names_the_fix():
    plan = folds.plan_folds(PLAN)
    first, last = plan[0].train_start_ms, plan[-1].test_end_ms
    folds.check_coverage(plan, first, last)
    with pytest.raises(ConfigError, match="move folds.test_start later"):
        folds.check_coverage(plan, first + 1, last)
    with pytest.raises(ConfigError, match="move folds.test_end earlier"):
        folds.check_coverage(plan, first, last - 1)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_default_config_resolves_with_its_training_part():
    cfg = wf.load_config(None, ["train.ppo.lr=1e-4", "seeds.values=[3]", "budget.iterations=5"])
    train = wf.training_config(cfg)
    assert train["ppo"]["lr"] == pytest.approx(1e-4)
    assert train["run"]["iterations"] == 5
    assert train["resources"]["num_env_runners"] == 0  # one CPU per Ray task
    assert train["env"]["portfolio"]["fee_rate"] == 0.001
    assert train["data"]["source"]["path"][1].endswith("binance_spot_1h_2022_2024")
    unit = wf.unit_config(train, folds.plan_folds(cfg["folds"])[2], 3)
    assert unit["run"]["seed"] == 3 and unit["data"]["splits"]["test"]["start"] == "2019-12-31 00:00"


@pytest.mark.parametrize(
    ("payload", "overrides", "message"),
    [
        ({"seeds": {"values": []}}, [], "seeds.values"),
        ({"seeds": {"values": [1, 1]}}, [], "duplicates"),
        ({"seeds": {"combine": "median"}}, [], "seeds.combine"),
        ({"budget": {"iterations": 0}}, [], "budget.iterations"),
        ({"warm_start": True}, [], "warm_start"),
        ({"statistics": {"confidence": 1.5}}, [], "statistics.confidence"),
        ({"statistics": {"configurations_tried": 0}}, [], "configurations_tried"),
        ({"train": {"run": {"seed": 4}}}, [], "train.run.seed"),
        ({"train": {"data": {"splits": {}}}}, [], "train.data"),
        ({}, ["train.run.iterations=3"], "set by the walk-forward"),
        ({}, ["train.ppo.lrr=3"], "lrr"),
        ({"folds": {"step_days": 1}}, [], "overlap"),
        ({"parallel": {"max_concurrent": 0}}, [], "max_concurrent"),
        ({"nonsense": 1}, [], "nonsense"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, payload, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(payload))
    with pytest.raises(ConfigError, match=message):
        wf.load_config(path, overrides)


def test_cli_refuses_bad_config_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "walk_forward.py"), "--config", str(SMOKE), "--set", "seeds.combine=vote",
         "--saved-models", str(tmp_path / "saved"), "--logs", str(tmp_path / "logs")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "seeds.combine" in proc.stderr
    assert not (tmp_path / "saved").exists() and not (tmp_path / "logs").exists()


def test_smoke_config_resolves():
    cfg = wf.load_config(SMOKE)
    plan = folds.plan_folds(cfg["folds"])
    assert len(plan) == 2 and len(cfg["seeds"]["values"]) == 1
    data = wf.load_data(cfg)
    folds.check_coverage(plan, int(data.open_time_ms[0]), int(data.open_time_ms[-1]) + wf.bar_ms(data))


# ---------------------------------------------------------------------------------------------
# The chained out-of-sample account (rule policies: no training needed)
# ---------------------------------------------------------------------------------------------


class _Identity:
    @staticmethod
    def targets(weights: np.ndarray, n_pairs: int) -> np.ndarray:
        return weights


class SignalPolicy:
    """A policy with `decision.Policy`'s interface that trades the synthetic plant: equal weight in
    the pairs whose signal is above ``threshold`` at the decision bar, cash otherwise."""

    limits = _Identity()

    def __init__(self, data: MarketData, threshold: float) -> None:
        import decision
        import Train

        self.symbols = list(data.symbols)
        self.timeframe = data.timeframe
        self.env_config = Train.resolve_env_config({"normalization": {"window": 24}})
        self.history_bars = decision.history_bars(self.env_config)
        self.threshold = threshold

    def targets(self, signal_row: np.ndarray) -> np.ndarray:
        on = signal_row > self.threshold
        out = np.zeros(len(self.symbols) + 1)
        if on.any():
            out[:-1] = on / on.sum()
        else:
            out[-1] = 1.0
        return out

    def check_market(self, data: MarketData, what: str = "the data") -> None:
        assert list(data.symbols) == self.symbols

    def act(self, market, t: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        signal_row = synthetic.signal_of(market.data)[t]
        return np.where(signal_row > self.threshold, 1, -1).astype(np.int8), self.targets(signal_row)

    def decide(self, history: MarketData, weights: np.ndarray):
        import decision

        calls, targets = self.act(
            decision.MarketObservations(history, self.env_config), history.n_bars - 1, weights
        )
        return decision.Decision(int(history.open_time_ms[-1]), calls, targets, targets)


CHAIN_PLAN = {"mode": "rolling", "test_start": "2020-01-20", "test_end": "2020-02-10", "train_days": 10,
              "validation_days": 5, "test_days": 7, "step_days": None}  # fmt: skip
PORTFOLIO = {"initial_cash": 10_000.0, "fee_rate": 0.001}


@pytest.fixture(scope="module")
def chain_market() -> MarketData:
    return synthetic.generate(n_pairs=3, n_bars=24 * 45, seed=3)


def test_stitched_equity_is_one_account_over_the_chained_folds(chain_market):
    plan = folds.plan_folds(CHAIN_PLAN)
    policies = [SignalPolicy(chain_market, th) for th in (0.5, 1.0, 0.0)]  # each fold its own rule
    chain = wf.chain_folds(policies, chain_market, plan, PORTFOLIO)
    market, rows = wf.stitched_market(chain_market, plan)
    assert rows == chain.fold_rows
    rec = chain.record
    assert np.array_equal(rec.open_time_ms, market.open_time_ms)
    assert rec.equity[0] == PORTFOLIO["initial_cash"]
    # Reference: ONE continuous backtest of the stitched bars whose target at each close is the rule
    # of the fold that owns the next bar (performance.simulate_targets: decide at the close, execute
    # at the next open). Equal to the chain only if capital AND positions carry over at boundaries.
    owner = np.searchsorted(np.array(rows), np.arange(market.n_bars) + 1, side="right") - 1
    signal = synthetic.signal_of(market)
    targets = np.array([policies[min(k, 2)].targets(signal[t]) for t, k in enumerate(owner)])
    import performance

    reference = performance.simulate_targets("reference", market, targets, PORTFOLIO)
    np.testing.assert_allclose(rec.equity, reference.equity, rtol=1e-12)
    np.testing.assert_allclose(rec.fees, reference.fees, rtol=1e-12, atol=1e-12)
    # Each fold's slice of the stitched curve is that fold played alone from where the last one ended.
    for k in range(len(plan)):
        state = chain.end_states[k]
        lo = rows[k]
        hi = rows[k + 1] if k + 1 < len(rows) else len(rec.equity)
        assert rec.equity[hi - 1] == pytest.approx(state["cash"] + np.dot(state["qty"], market.close[hi - 1]))
        assert lo < hi and np.all(np.isfinite(rec.equity[lo:hi]))
    # Fold boundaries are not liquidations: the account holds positions across them.
    assert any(np.any(np.array(s["qty"]) > 0) for s in chain.end_states[:-1])


def test_folds_table_chains_to_the_stitched_curve(chain_market):
    plan = folds.plan_folds(CHAIN_PLAN)
    chain = wf.chain_folds([SignalPolicy(chain_market, 0.5)] * len(plan), chain_market, plan, PORTFOLIO)
    records = {"agent": chain.record}
    info = [{"seeds": "0", "decision": "mean"}] * len(plan)
    table = wf.fold_table(plan, records, chain.fold_rows, 8760.0, info)
    growth = np.prod([1.0 + row["agent_total_return"] for row in table])
    assert growth == pytest.approx(chain.record.equity[-1] / chain.record.equity[0], rel=1e-12)
    assert sum(row["test_bars"] for row in table) == len(chain.record.equity) - 1


def test_ensemble_is_the_mean_of_target_weights(chain_market):
    members = [SignalPolicy(chain_market, th) for th in (-10.0, 10.0, 0.0)]
    ensemble = wf.EnsemblePolicy(members)
    history = chain_market.slice_bars(100, 140)
    weights = np.eye(4)[-1]
    d = ensemble.decide(history, weights)
    expected = np.mean([m.decide(history, weights).target_weights for m in members], axis=0)
    np.testing.assert_array_equal(d.target_weights, expected)
    assert d.target_weights.sum() == pytest.approx(1.0)
    votes = np.sum([m.decide(history, weights).calls for m in members], axis=0)
    np.testing.assert_array_equal(d.calls, np.sign(votes))
