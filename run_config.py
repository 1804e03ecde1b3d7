"""Training configuration: loading, ``--set`` overrides and one validated schema per section.

Where each thing lives (one place each):

- **Defaults**: ``configs/train.yaml`` for the sections ``run``, ``data``, ``model``, ``ppo``,
  ``resources``, ``validation`` and ``tune`` (code never repeats them: `default_config` reads the
  file), and ``SequentialTradingEnv.ENV_DEFAULTS`` for ``env`` (the env is usable without any YAML;
  ``configs/env.yaml`` documents the same values and a test checks that they agree).
- **Rules**: `TRAIN_SCHEMA` below and `env_config.ENV_SCHEMA`, one `config_rules.Rule` (type, range
  or choices) per key, and
  the cross-field rules of `validate_config` (``ppo.minibatch_size <= ppo.train_batch_size``, split
  dates, rule parameters, Tune's search space). ``tests/test_run_config.py`` checks that the schema
  and the YAML files name exactly the same keys, that every YAML key carries a comment and that
  every default passes its rule.

Every bad value is a `settings.ConfigError` naming the key, the value and what is allowed, raised
before anything is written or Ray starts (``Train.py`` exits with code 2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

import config_rules
import env_config
from config_rules import (  # noqa: F401  (get_path re-exported: callers say run_config.get_path)
    Rule,
    _is_int,
    _is_number,
    anything,
    boolean,
    get_path,
    integer,
    layer_sizes,
    number,
    one_of,
)
from env_config import ENV_SCHEMA
from settings import CONFIG_DIR, ConfigError, check_keys, load_yaml, merge, parse_time_ms, yaml_problem

DEFAULT_CONFIG = CONFIG_DIR / "train.yaml"
ENV_CONFIG = CONFIG_DIR / "env.yaml"
SPLITS = ("train", "validation", "test")
META_NETWORKS = ("mlp", "pair_shared")  # model.meta_network: see meta_module.py
RLLIB_ENV_KINDS = ("two_phase", "pettingzoo")  # resources.rllib_env: see rllib_env.for_rllib
VALIDATION_METRICS = ("sharpe", "log_growth", "total_return", "sortino", "calmar", "cagr")
# RLlib's torch activations by name (ray.rllib.models.utils.get_activation_fn).
ACTIVATIONS = ("tanh", "relu", "elu", "swish", "silu", "linear")
TUNE_SAMPLERS = ("loguniform", "uniform", "choice")


# ----------------------------------------------------------------------------------------------
# Rules (config_rules.Rule; the env's own are env_config.ENV_SCHEMA, beside its defaults)
# ----------------------------------------------------------------------------------------------


# One rule per key of configs/train.yaml (its env section aside); keep both in step (a test checks).
TRAIN_SCHEMA: dict[str, Rule] = {
    "run.seed": integer(0),
    "run.iterations": integer(1),
    "run.time_budget_s": number(0, low_open=True, null="no limit"),
    "run.checkpoint_every": integer(1),
    "data.source": anything("a data source mapping (checked by market_data.check_source)"),
    "data.splits.train.start": anything("a UTC date"),
    "data.splits.train.end": anything("a UTC date"),
    "data.splits.validation.start": anything("a UTC date"),
    "data.splits.validation.end": anything("a UTC date"),
    "data.splits.test.start": anything("a UTC date"),
    "data.splits.test.end": anything("a UTC date"),
    "model.specialist_hiddens": layer_sizes(),
    "model.meta_hiddens": layer_sizes(),
    "model.meta_network": one_of(*META_NETWORKS),
    "model.activation": one_of(*ACTIVATIONS),
    "model.meta_log_std_init": number(-20, 20, null="RLlib's 0, std 1"),
    "model.meta_log_std_clip": number(0, low_open=True, null="RLlib's 20"),
    "ppo.lr": number(0, 1, low_open=True),
    "ppo.meta_lr": number(0, 1, low_open=True, null="same as ppo.lr"),
    "ppo.gamma": number(0, 1, low_open=True),
    "ppo.lambda": number(0, 1, low_open=True),
    "ppo.entropy_coeff": number(0),
    "ppo.clip_param": number(0, low_open=True),
    "ppo.vf_loss_coeff": number(0),
    "ppo.vf_clip_param": number(0, low_open=True),
    "ppo.grad_clip": number(0, low_open=True, null="no gradient clipping"),
    "ppo.train_batch_size": integer(1),
    "ppo.minibatch_size": integer(1),
    "ppo.num_epochs": integer(1),
    "ppo.normalize_actions": boolean(),
    "resources.num_env_runners": Rule(
        "'auto' or an integer >= 0", lambda v: v == "auto" or (_is_int(v) and v >= 0)
    ),
    "resources.num_envs_per_env_runner": integer(1),
    "resources.rllib_env": one_of(*RLLIB_ENV_KINDS),
    "resources.env_infos": boolean(),
    "validation.every_iterations": integer(1),
    "validation.metric": one_of(*VALIDATION_METRICS),
    "tune.num_samples": integer(1),
    "tune.max_iterations": integer(1),
    "tune.grace_period": integer(1),
    "tune.reduction_factor": integer(2),
    "tune.max_concurrent_trials": integer(1),
    "tune.search_space": anything(
        "a mapping of dotted keys to {loguniform|uniform: [low, high]} or {choice: [...]}"
    ),
}

SCHEMA: dict[str, Rule] = {**TRAIN_SCHEMA, **ENV_SCHEMA}


def leaf_keys(tree: Mapping[str, Any], prefix: str = "", stop: frozenset[str] = frozenset()) -> list[str]:
    """Dotted keys of every leaf of ``tree``; mappings at keys in ``stop`` count as one leaf."""
    out = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and dotted not in stop:
            out.extend(leaf_keys(value, dotted + ".", stop))
        else:
            out.append(dotted)
    return out


# Mappings whose content is free-form (checked as one value by their rule).
FREE_MAPPINGS = frozenset(
    {"data.source", "tune.search_space", "env.specialists.pairs", "env.portfolio.lot_step",
     "env.portfolio.min_qty", "env.portfolio.min_notional"}
)  # fmt: skip


def check_schema(cfg: Mapping[str, Any], schema: Mapping[str, Rule] = SCHEMA) -> None:
    """`config_rules.check_schema` against the whole training schema by default."""
    config_rules.check_schema(cfg, schema)


# ----------------------------------------------------------------------------------------------
# Dotted keys and overrides
# ----------------------------------------------------------------------------------------------


def set_path(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``a.b.c`` set to ``value``; every level must already exist."""
    out = copy.deepcopy(cfg)
    node = out
    keys = dotted.split(".")
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[:depth]) or "<top>"
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"unknown key {key!r} in {where} (from {dotted!r}); allowed keys are {allowed}")
        if depth == len(keys) - 1:
            node[key] = value
        else:
            node = node[key]
    return out


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``["ppo.lr=1e-4", "model.specialist_hiddens=[32, 32]"]`` -> [(key, parsed YAML value), ...]."""
    out = []
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. ppo.lr=1e-4), got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date such as 2021-13-01
            raise ConfigError(
                f"--set {item}: {raw!r} is not a valid value ({yaml_problem(exc)}); dates are YYYY-MM-DD"
            ) from None
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string; on the command line it means a number
                value = float(value)
            except ValueError:
                pass
        out.append((key.strip(), value))
    return out


# ----------------------------------------------------------------------------------------------
# Splits and cross-field rules
# ----------------------------------------------------------------------------------------------


def _parse_date_ms(value: Any, where: str) -> int:
    """A UTC date or datetime ('2021-01-01', '2021-01-01T12:00') as epoch milliseconds."""
    try:
        return int(parse_time_ms(value, where))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not a date (use YYYY-MM-DD, UTC)") from exc


def split_ranges_ms(cfg: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """The train/validation/test [start, end) ranges in ms, checked: start < end, no overlaps."""
    ranges: dict[str, tuple[int, int]] = {}
    splits = cfg["data"]["splits"]
    if not isinstance(splits, dict):
        raise ConfigError(f"data.splits must map {list(SPLITS)} to {{start, end}}, got {splits!r}")
    for name in SPLITS:
        spec = splits.get(name)
        if not isinstance(spec, dict):
            raise ConfigError(f"data.splits.{name} must be {{start: DATE, end: DATE}}, got {spec!r}")
        check_keys(spec, {"start", "end"}, f"data.splits.{name}")
        start = _parse_date_ms(spec.get("start"), f"data.splits.{name}.start")
        end = _parse_date_ms(spec.get("end"), f"data.splits.{name}.end")
        if start >= end:
            raise ConfigError(f"data.splits.{name}: start {spec['start']} must be before end {spec['end']}")
        ranges[name] = (start, end)
    ordered = sorted(ranges.items(), key=lambda item: item[1][0])
    for (name_a, (_, end_a)), (name_b, (start_b, _)) in zip(ordered, ordered[1:], strict=False):
        if start_b < end_a:
            raise ConfigError(
                f"data.splits.{name_a} and data.splits.{name_b} overlap: {name_b} starts before "
                f"{name_a} ends; splits must be disjoint date ranges"
            )
    return ranges


def _check_search_space(cfg: Mapping[str, Any]) -> None:
    """Every searched key exists and every value Tune may draw passes that key's rule."""
    space = cfg["tune"]["search_space"]
    if not isinstance(space, dict):
        raise ConfigError(f"tune.search_space must be a mapping of dotted keys, got {space!r}")
    for key, spec in space.items():
        where = f"tune.search_space.{key}"
        set_path(dict(cfg), key, None)  # unknown keys fail here, naming the allowed ones
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in TUNE_SAMPLERS):
            raise ConfigError(f"{where}: expected one of {list(TUNE_SAMPLERS)} -> values, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not (isinstance(args, list) and args):
                raise ConfigError(f"{where}: choice needs a non-empty list of values, got {args!r}")
            candidates = list(args)
        else:
            if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)
                    and args[0] < args[1] and (kind == "uniform" or args[0] > 0)):  # fmt: skip
                positive = " and low > 0" if kind == "loguniform" else ""
                raise ConfigError(f"{where}: {kind} needs [low, high], low < high{positive}, got {args!r}")
            candidates = list(args)
        rule = SCHEMA.get(key)
        for value in candidates:
            if rule is not None:
                rule.check(f"{where} (value {value!r})", value)


def check_cross_fields(cfg: Mapping[str, Any]) -> None:
    """Rules that relate several keys (each message names all of them)."""
    ppo, model, env_cfg = cfg["ppo"], cfg["model"], cfg["env"]
    if ppo["minibatch_size"] > ppo["train_batch_size"]:
        raise ConfigError(
            f"ppo.minibatch_size = {ppo['minibatch_size']} is not allowed: it must be <= "
            f"ppo.train_batch_size ({ppo['train_batch_size']})"
        )
    log_std, clip = model["meta_log_std_init"], model["meta_log_std_clip"]
    if clip is not None and log_std is not None and abs(log_std) > clip:
        raise ConfigError(f"model.meta_log_std_init {log_std} lies outside +-meta_log_std_clip {clip}")
    if cfg["tune"]["grace_period"] > cfg["tune"]["max_iterations"]:
        raise ConfigError(
            f"tune.grace_period = {cfg['tune']['grace_period']} is not allowed: it must be <= "
            f"tune.max_iterations ({cfg['tune']['max_iterations']})"
        )
    rules = env_cfg.get("rules", {})
    for rule_name, low_key, high_key in (("rsi", "lower", "upper"), ("bollinger", "lower", "upper"),
                                         ("ma_trend", "fast", "slow")):  # fmt: skip
        params = rules.get(rule_name, {})
        if low_key in params and high_key in params and not params[low_key] < params[high_key]:
            raise ConfigError(
                f"env.rules.{rule_name}.{low_key} = {params[low_key]!r} is not allowed: it must be below "
                f"env.rules.{rule_name}.{high_key} ({params[high_key]!r})"
            )


def validate_config(cfg: dict[str, Any]) -> None:
    """Every rule of the schema, the cross-field rules, the splits and the data source's form.

    Types come first, so that nothing later converts a bad value (``float('abc')``) or divides by
    zero; raise ConfigError naming the key, the value and what is allowed.
    """
    import market_data

    if not isinstance(cfg.get("env"), dict):
        raise ConfigError(f"env must be a mapping of env settings, got {cfg.get('env')!r}")
    check_schema(cfg)
    check_cross_fields(cfg)
    split_ranges_ms(cfg)
    _check_search_space(cfg)
    resolve_env_config(cfg["env"])  # the env's own checks, too
    try:
        market_data.check_source(cfg["data"]["source"])
    except ConfigError as exc:
        raise ConfigError(f"data.source: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def default_config() -> dict[str, Any]:
    """configs/train.yaml with its ``env`` section laid over configs/env.yaml (the env's defaults)."""
    cfg = load_yaml(DEFAULT_CONFIG)
    if ENV_CONFIG.exists():
        cfg["env"] = merge(load_yaml(ENV_CONFIG), cfg.get("env") or {}, f"{DEFAULT_CONFIG.name}: env")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the file at ``path`` (any subset of the keys), then ``KEY=VALUE`` overrides.

    Unknown keys anywhere are a ConfigError naming them; values are validated (`validate_config`)
    before the env section is resolved, so a bad value never reaches a conversion.
    """
    cfg = default_config()
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        user = load_yaml(path)
        # The data source is one mapping whose keys depend on its kind (market_data.load checks
        # them): a file's source replaces the default one instead of being merged into it.
        data = user.get("data")
        source = data.pop("source", None) if isinstance(data, dict) else None
        for key, value in user.items():  # merge would replace a whole section by a scalar
            if isinstance(cfg.get(key), dict) and not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} must be a mapping of settings, got {value!r}")
        cfg = merge(cfg, user, str(path))
        if source is not None:
            cfg["data"]["source"] = source
    for key, value in parse_overrides(overrides or []):
        cfg = set_path(cfg, key, value)
    validate_config(cfg)
    cfg["env"] = resolve_env_config(cfg["env"])  # the saved config is complete
    return cfg


def resolve_env_config(env_cfg: dict[str, Any]) -> dict[str, Any]:
    """The env's own validation and defaults (`env_config.resolve_config`)."""
    if not isinstance(env_cfg, dict):
        raise ConfigError(f"env must be a mapping of env settings, got {env_cfg!r}")
    return env_config.resolve_config(env_cfg)
