"""run_config.py: one validated schema per section, refused before anything is written or Ray starts.

The CLI cases run ``Train.py`` as a subprocess, as a user meets it: every bad value of issue #15
(items 2 and 3) must exit with code 2 and a one-line ``config error`` naming the key, the value and
what is allowed, with no traceback and no ``saved_models/<id>/`` or ``logs/<id>/`` left behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import run_config
import SequentialTradingEnv
from run_config import ENV_SCHEMA, FREE_MAPPINGS, TRAIN_SCHEMA, leaf_keys
from settings import ConfigError, load_yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def train_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "Train.py"), "--run-id", "refused", *args,
           "--saved-models", str(tmp_path / "saved"), "--logs", str(tmp_path / "logs")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_refused(proc: subprocess.CompletedProcess, tmp_path: Path, *expected: str) -> str:
    """Exit 2, a short message naming ``expected``, no traceback, nothing written."""
    err = proc.stderr
    assert proc.returncode == 2, f"rc {proc.returncode}\n{proc.stdout[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("config error: "), err  # the message comes first
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert not (tmp_path / "saved").exists() and not (tmp_path / "logs").exists(), "a run directory was made"
    return err


# Issue #15 items 2 and 3, each with what the message must name (key, value, what is allowed).
BAD_OVERRIDES = [
    ("ppo.meta_lr=-1", ["ppo.meta_lr", "-1", "(0, 1]"]),
    ("ppo.lr=.inf", ["ppo.lr", "inf", "finite"]),
    ("run.seed=abc", ["run.seed", "'abc'", "integer >= 0"]),
    ("ppo.entropy_coeff=abc", ["ppo.entropy_coeff", "'abc'", ">= 0"]),
    ("model.activation=foo", ["model.activation", "'foo'", "tanh"]),
    ("run.checkpoint_every=0", ["run.checkpoint_every", "= 0", "integer >= 1"]),
    ("run.time_budget_s=abc", ["run.time_budget_s", "'abc'", "null"]),
    ("env.meta.logit_limit=abc", ["env.meta.logit_limit", "'abc'", "> 0"]),
    ("ppo.minibatch_size=100000", ["ppo.minibatch_size", "100000", "ppo.train_batch_size (500)"]),
    ("data.splits.train.start=2021-13-01", ["data.splits.train.start", "2021-13-01", "YYYY-MM-DD"]),
    ("env.portfolio.fee_rate=-1", ["env.portfolio.fee_rate", "-1", "[0, 1)"]),
    ("resources.num_env_runners=-2", ["resources.num_env_runners", "-2", "'auto'"]),
    ("ppo.gamma=0", ["ppo.gamma", "0", "(0, 1]"]),
    ("env.features=[nope]", ["env.features", "nope", "the data's features"]),  # checked on the data
]


@pytest.mark.parametrize(("override", "expected"), BAD_OVERRIDES, ids=[o for o, _ in BAD_OVERRIDES])
def test_cli_refuses_bad_value_before_any_work(tmp_path, override, expected):
    proc = train_cli(tmp_path, "--config", str(SMOKE), "--set", override)
    assert_refused(proc, tmp_path, *expected)


def test_cli_refuses_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  iterations: 2\n ppo: [unclosed\n")
    assert_refused(train_cli(tmp_path, "--config", str(bad)), tmp_path, str(bad), "not valid YAML", "line 3")


def test_cli_refuses_csv_source_problems(tmp_path):
    missing = tmp_path / "no_such_dir"
    source = f"data.source={{kind: csv, path: {missing}, timeframe: 1h, symbols: [BTC/USDT]}}"
    assert_refused(train_cli(tmp_path, "--config", str(SMOKE), "--set", source), tmp_path,
                   "data.source", str(missing), "not a directory")  # fmt: skip
    candles = tmp_path / "candles"
    candles.mkdir()
    (candles / "BTC_USDT.csv").write_text("ts_ms,open,high,low,close,volume\n0,1,1,1,1,1\n")
    source = f"data.source={{kind: csv, path: {candles}, timeframe: 1h, symbols: [BTC/USDT, NOPE/USDT]}}"
    assert_refused(train_cli(tmp_path, "--config", str(SMOKE), "--set", source), tmp_path,
                   "NOPE/USDT", "NOPE_USDT.csv")  # fmt: skip
    source = f"data.source={{kind: csv, path: {candles}, timeframe: 1h, symbols: [BTC/USDT, BTC/USDT]}}"
    assert_refused(train_cli(tmp_path, "--config", str(SMOKE), "--set", source), tmp_path,
                   "BTC/USDT", "more than once")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Schema and YAML documentation agree
# ---------------------------------------------------------------------------------------------


def test_schema_names_exactly_the_keys_of_the_yaml_defaults():
    train = load_yaml(run_config.DEFAULT_CONFIG)
    train_keys = {k for k in leaf_keys(train, stop=FREE_MAPPINGS) if not k.startswith("env")}
    assert train_keys == set(TRAIN_SCHEMA)
    env_keys = {f"env.{k}" for k in leaf_keys(SequentialTradingEnv.ENV_DEFAULTS, stop=frozenset(
        k.removeprefix("env.") for k in FREE_MAPPINGS))}  # fmt: skip
    assert env_keys == set(ENV_SCHEMA)
    # configs/env.yaml documents the env's code defaults: the same values.
    assert load_yaml(run_config.ENV_CONFIG) == SequentialTradingEnv.ENV_DEFAULTS


@pytest.mark.parametrize("name", ["train.yaml", "env.yaml"])
def test_every_default_key_is_documented(name):
    """Each line that sets a value carries a comment saying what it means."""
    undocumented = [
        line
        for line in (ROOT / "configs" / name).read_text().splitlines()
        if re.match(r"^\s*[A-Za-z_][\w.]*:\s*\S", line) and "#" not in line
    ]
    assert undocumented == []


def test_defaults_and_shipped_configs_pass_the_schema():
    run_config.validate_config(run_config.default_config())
    for name in ("smoke.yaml", "learning_check.yaml"):
        cfg = run_config.load_config(ROOT / "configs" / name)
        run_config.check_schema(cfg)
    assert run_config.load_config(None)["ppo"]["lr"] == load_yaml(run_config.DEFAULT_CONFIG)["ppo"]["lr"]


# ---------------------------------------------------------------------------------------------
# Rules in detail (no subprocess)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["tune.grace_period=100"], "tune.grace_period = 100 is not allowed: it must be <= tune.max_iter"),
        (["env.rules.rsi.lower=80"], "env.rules.rsi.lower = 80 is not allowed: it must be below env.rules"),
        (["env.rules.ma_trend.fast=60"], "env.rules.ma_trend.fast"),
        (["tune.search_space={ppo.lrr: {uniform: [0, 1]}}"], "unknown key 'lrr'"),
        (["tune.search_space={ppo.lr: {uniform: [-1, 1]}}"], r"tune.search_space.ppo.lr \(value -1\)"),
        (["tune.search_space={ppo.lr: {loguniform: [0, 1]}}"], "low > 0"),
        (["tune.search_space={ppo.lr: {normal: [0, 1]}}"], "loguniform"),
        (["env.specialists.pairs={BTC: magic}"], "env.specialists.pairs"),
        (["env.portfolio.lot_step={BTC/USDT: -1}"], "env.portfolio.lot_step"),
        (["model.meta_hiddens=[64, 0]"], "model.meta_hiddens"),
        (["resources.env_infos=1"], "true or false"),
        (["data.source={kind: csv, path: /tmp, timeframe: 1h, start: 2021-02-01, end: 2021-01-01}"],
         "must be before end"),
        (["data.source={kind: db, symbols: [A/USDT], timeframe: 7m}"], "unsupported timeframe"),
        (["data.source={kind: synthetic, n_pair: 3}"], "n_pair"),
        (["data.splits.test=2021"], "data.splits.test must be {start: DATE, end: DATE}"),
    ],
)
def test_rule_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_config.load_config(SMOKE, overrides)


def test_yaml_exponent_without_dot_gets_a_hint(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("ppo:\n  lr: 1e-4\n")  # YAML 1.1: a string
    with pytest.raises(ConfigError, match=r"ppo.lr = '1e-4'.*write 1.0e-4"):
        run_config.load_config(path)
    assert run_config.load_config(None, ["ppo.lr=1e-4"])["ppo"]["lr"] == pytest.approx(1e-4)  # --set: number


def test_impossible_date_in_a_file_is_a_config_error(tmp_path):
    path = tmp_path / "date.yaml"
    path.write_text("data:\n  splits:\n    train: {start: 2021-13-01, end: 2022-01-01}\n")
    with pytest.raises(ConfigError, match=r"date.yaml holds an impossible value: month must be in 1..12"):
        run_config.load_config(path)


def test_a_section_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump({"ppo": 3}))
    with pytest.raises(ConfigError, match="ppo must be a mapping"):
        run_config.load_config(path)


def test_free_ports_stay_out_of_the_ephemeral_range():
    """tests/_ports.py: servers' ports never come from the range outgoing connections draw from."""
    import socket

    from _ports import _ephemeral_range, free_port

    low, high = _ephemeral_range()
    ports = {free_port() for _ in range(50)}
    assert all(not low <= p <= high for p in ports) and len(ports) > 40
    with socket.socket() as sock:  # a bound port is never handed out
        sock.bind(("127.0.0.1", 0))
        taken = sock.getsockname()[1]
        assert taken not in {free_port() for _ in range(50)}
