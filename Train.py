"""Multi-agent PPO (RLlib new API stack, ray 2.60) over SequentialTradingEnv.

Two policies: ``specialist`` (one network shared by every ``specialist_<BASE>`` agent) and ``meta``.
Data splits come from config by date; training uses only the train split, the deterministic policy
is scored on the validation split every ``validation.every_iterations`` and the best checkpoint by
``validation.metric`` is kept; nothing here ever touches the test split.

Usage::

    python Train.py --config configs/smoke.yaml --run-id NAME [--set ppo.lr=1e-4 ...]
    python Train.py --run-id NAME --resume [--set run.iterations=40]
    python Train.py --config configs/train.yaml --tune        # ASHA search, best trial saved as a run
    python Train.py --address 127.0.0.1:6379 ...              # or RAY_ADDRESS: join a Ray cluster

Run layout::

    saved_models/<run_id>/config.yaml      resolved config (all defaults filled in)
    saved_models/<run_id>/manifest.json    data manifest: symbols, timeframe, split ranges, rows, hash
    saved_models/<run_id>/checkpoint/      best algorithm checkpoint (by validation score)
    saved_models/<run_id>/latest/          latest algorithm checkpoint (what --resume continues)
    saved_models/<run_id>/metrics.json     final metrics (best validation metrics, steps, time)
    saved_models/<run_id>/state.json       iteration counter and best score (for --resume)
    logs/<run_id>/progress.log|.csv        one line per iteration
    logs/<run_id>/tensorboard/             TensorBoard event files
    logs/<run_id>/ray/ rllib/ tune/        Ray's own output (session logs of a local Ray; Tune trials)

Loading a run for inference (what performance.py uses)::

    config, manifest, policy = Train.load_run("saved_models/NAME")
    action = policy(agent_id, observation)      # deterministic, env-ready action for any agent
    env = Train.make_env(config, data, mode="eval")      # data: MarketData of the bars to play
    record = Train.play_episode(env, policy)    # EpisodeRecord: equity curve, weights, fees, rewards

``policy`` is a `RunPolicy`: it maps agents to modules (``meta`` -> meta, others -> specialist),
runs ``forward_inference`` on the restored RLModules and turns the action distribution into its
deterministic action (argmax for sell/hold/buy; the Gaussian mean for the meta logits, un-squashed to
the action space's bounds exactly as RLlib's env runner does when ``normalize_actions`` is on).
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import metrics
from market_data import MarketData
from settings import CONFIG_DIR, PROJECT_ROOT, ConfigError, check_keys, env, load_yaml, merge

log = logging.getLogger("train")

DEFAULT_CONFIG = CONFIG_DIR / "train.yaml"
ENV_CONFIG = CONFIG_DIR / "env.yaml"
SAVED_MODELS = PROJECT_ROOT / "saved_models"
LOGS = PROJECT_ROOT / "logs"
ENV_NAME = "sequential_trading"
SPLITS = ("train", "validation", "test")
META_NETWORKS = ("mlp", "pair_shared")  # model.meta_network: see meta_module.py
RLLIB_ENV_KINDS = ("two_phase", "pettingzoo")  # resources.rllib_env: see rllib_env.for_rllib
VALIDATION_METRICS = ("sharpe", "log_growth", "total_return", "sortino", "calmar", "cagr")
# Unix sockets cannot live under long paths (108 bytes); Ray's session dir adds ~62 characters.
_MAX_RAY_TEMP_DIR = 44


# ----------------------------------------------------------------------------------------------
# Configuration
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


def get_path(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``["ppo.lr=1e-4", "model.specialist_hiddens=[32, 32]"]`` -> [(key, parsed YAML value), ...]."""
    out = []
    for item in pairs:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. ppo.lr=1e-4), got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string; on the command line it means a number
                value = float(value)
            except ValueError:
                pass
        out.append((key.strip(), value))
    return out


def _parse_date_ms(value: Any, where: str) -> int:
    """A UTC date or datetime ('2021-01-01', '2021-01-01T12:00') as epoch milliseconds."""
    from market_data import to_ms

    try:
        return int(to_ms(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {value!r} is not a date (use YYYY-MM-DD, UTC)") from exc


def split_ranges_ms(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """The train/validation/test [start, end) ranges in ms, checked: start < end, no overlaps."""
    ranges: dict[str, tuple[int, int]] = {}
    splits = cfg["data"]["splits"]
    for name in SPLITS:
        spec = splits[name]
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


def validate_config(cfg: dict[str, Any]) -> None:
    """Value checks the key checks of `settings.merge` cannot do; raise ConfigError naming the key."""
    split_ranges_ms(cfg)
    run, ppo, val = cfg["run"], cfg["ppo"], cfg["validation"]
    positive_ints = {
        "run.iterations": run["iterations"],
        "validation.every_iterations": val["every_iterations"],
        "ppo.train_batch_size": ppo["train_batch_size"],
        "ppo.minibatch_size": ppo["minibatch_size"],
        "ppo.num_epochs": ppo["num_epochs"],
        "resources.num_envs_per_env_runner": cfg["resources"]["num_envs_per_env_runner"],
    }
    for key, value in positive_ints.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    for key in ("lr", "gamma", "lambda", "clip_param"):
        value = ppo[key]
        if not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"ppo.{key} must be a positive number, got {value!r}")
    if ppo["gamma"] > 1 or ppo["lambda"] > 1:
        raise ConfigError("ppo.gamma and ppo.lambda must be in (0, 1]")
    if val["metric"] not in VALIDATION_METRICS:
        raise ConfigError(f"validation.metric {val['metric']!r} unknown; choose one of {VALIDATION_METRICS}")
    for key in ("specialist_hiddens", "meta_hiddens"):
        hidden = cfg["model"][key]
        if not (isinstance(hidden, list) and hidden and all(isinstance(h, int) and h > 0 for h in hidden)):
            raise ConfigError(f"model.{key} must be a non-empty list of positive layer sizes, got {hidden!r}")
    if cfg["resources"]["rllib_env"] not in RLLIB_ENV_KINDS:
        raise ConfigError(
            f"resources.rllib_env must be one of {RLLIB_ENV_KINDS}, got {cfg['resources']['rllib_env']!r}"
        )
    log_std = cfg["model"]["meta_log_std_init"]
    if log_std is not None and not isinstance(log_std, (int, float)):
        raise ConfigError(f"model.meta_log_std_init must be a number or null, got {log_std!r}")
    if cfg["model"]["meta_network"] not in META_NETWORKS:
        raise ConfigError(
            f"model.meta_network must be one of {META_NETWORKS}, got {cfg['model']['meta_network']!r}"
        )
    clip = cfg["model"]["meta_log_std_clip"]
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"model.meta_log_std_clip must be a positive number or null, got {clip!r}")
    if clip is not None and log_std is not None and abs(log_std) > clip:
        raise ConfigError(f"model.meta_log_std_init {log_std} lies outside +-meta_log_std_clip {clip}")
    if not isinstance(cfg["resources"]["env_infos"], bool):
        raise ConfigError(f"resources.env_infos must be true or false, got {cfg['resources']['env_infos']!r}")
    runners = cfg["resources"]["num_env_runners"]
    if runners != "auto" and (not isinstance(runners, int) or runners < 0):
        raise ConfigError(f"resources.num_env_runners must be 'auto' or an integer >= 0, got {runners!r}")


def default_config() -> dict[str, Any]:
    """configs/train.yaml with its ``env`` section laid over configs/env.yaml (the env's defaults)."""
    cfg = load_yaml(DEFAULT_CONFIG)
    if ENV_CONFIG.exists():
        cfg["env"] = merge(load_yaml(ENV_CONFIG), cfg.get("env") or {}, f"{DEFAULT_CONFIG.name}: env")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Defaults, then the file at ``path`` (any subset of the keys), then ``KEY=VALUE`` overrides.

    Unknown keys anywhere are a ConfigError naming them; values are validated (`validate_config`).
    """
    cfg = default_config()
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        user = load_yaml(path)
        # The data source is one mapping whose keys depend on its kind (market_data.load checks
        # them): a file's source replaces the default one instead of being merged into it.
        source = (user.get("data") or {}).pop("source", None) if isinstance(user.get("data"), dict) else None
        cfg = merge(cfg, user, str(path))
        if source is not None:
            cfg["data"]["source"] = source
    # Resolve the env section (all its defaults filled in) before and after the --set overrides, so
    # that any env key can be overridden and the saved config is complete.
    cfg["env"] = resolve_env_config(cfg["env"])
    for key, value in parse_overrides(overrides or []):
        cfg = set_path(cfg, key, value)
    cfg["env"] = resolve_env_config(cfg["env"])
    validate_config(cfg)
    return cfg


def resolve_env_config(env_cfg: dict[str, Any]) -> dict[str, Any]:
    """The env's own validation and defaults (`SequentialTradingEnv.resolve_config`)."""
    import SequentialTradingEnv

    if not isinstance(env_cfg, dict):
        raise ConfigError(f"env must be a mapping of env settings, got {env_cfg!r}")
    return SequentialTradingEnv.resolve_config(env_cfg)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class Splits:
    train: MarketData
    validation: MarketData
    test: MarketData

    def __getitem__(self, name: str) -> MarketData:
        return getattr(self, name)


def load_splits(cfg: dict[str, Any]) -> Splits:
    """Load the configured market once and cut it into the date splits; an empty split is an error."""
    import market_data

    split_ranges_ms(cfg)  # clear errors before any data is loaded
    source = copy.deepcopy(cfg["data"]["source"])
    data = market_data.load(source)
    covers = f"{_iso(data.open_time_ms[0])} .. {_iso(data.open_time_ms[-1])}" if data.n_bars else "nothing"
    try:
        parts = market_data.split_by_dates(data, cfg["data"]["splits"])
    except ConfigError as exc:
        raise ConfigError(f"data.splits: {exc}; the data ({source}) covers {covers}") from exc
    for name, part in parts.items():
        if part.n_bars < 2:
            raise ConfigError(
                f"data.splits.{name} holds {part.n_bars} bars of {source}; the data covers {covers}"
            )
    return Splits(**{name: parts[name] for name in SPLITS})


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.UTC).isoformat(timespec="minutes")


def data_hash(data: MarketData) -> str:
    """sha256 over the arrays the agents learn from (times, OHLCV, features), in a fixed order."""
    digest = hashlib.sha256()
    for array in (data.open_time_ms, data.open, data.high, data.low, data.close, data.volume, data.features):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([data.symbols, data.timeframe, data.feature_names]).encode())
    return digest.hexdigest()


def build_manifest(cfg: dict[str, Any], splits: Splits) -> dict[str, Any]:
    """What the run was trained on; performance.py refuses data that does not match it."""
    train = splits.train
    out: dict[str, Any] = {
        "symbols": list(train.symbols),
        "timeframe": train.timeframe,
        "feature_names": list(train.feature_names),
        "source": cfg["data"]["source"],
        "splits": {},
        "train_hash": data_hash(train),
    }
    for name in SPLITS:
        part = splits[name]
        out["splits"][name] = {
            "start": cfg["data"]["splits"][name]["start"],
            "end": cfg["data"]["splits"][name]["end"],
            "first_open_time_ms": int(part.open_time_ms[0]),
            "last_open_time_ms": int(part.open_time_ms[-1]),
            "rows": part.n_bars,
        }
    return out


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def make_env(cfg: dict[str, Any], data: MarketData, mode: str = "train", wrapped: bool = True) -> Any:
    """The PettingZoo AEC env over ``data`` with the run's env settings.

    ``mode="train"``: random starts and fixed-length episodes; ``"eval"``: the whole split once.
    ``wrapped=False`` skips PettingZoo's order-enforcing wrapper (RLlib's PettingZooEnv drives the
    env correctly by construction, and the wrapper's per-call checks cost throughput).
    """
    import SequentialTradingEnv

    factory = SequentialTradingEnv.env if wrapped else SequentialTradingEnv.raw_env
    return factory(data=data, mode=mode, **cfg["env"])


_SPLITS_CACHE: dict[str, Splits] = {}


def cached_splits(cfg: dict[str, Any], splits: Splits | None = None) -> Splits:
    """The splits of ``cfg["data"]``, loaded once per process (``splits`` seeds the cache).

    Env runners load the data themselves instead of receiving it in ``env_config``: RLlib pickles
    the config into every checkpoint (5 copies: ~100 MB for 4 pairs x 30k bars), and this way each
    runner process loads it once for all its vectorized envs. The data source must therefore be
    reachable from every node of a cluster (synthetic and CSV at the same path, or the database).
    """
    key = json.dumps(cfg["data"], sort_keys=True, default=str)
    if splits is not None:
        _SPLITS_CACHE[key] = splits
    if key not in _SPLITS_CACHE:
        _SPLITS_CACHE[key] = load_splits(cfg)
    return _SPLITS_CACHE[key]


def adapt_for_rllib(aec: Any, cfg: dict[str, Any]) -> Any:
    """``aec`` as the RLlib env that ``cfg``'s ``resources`` ask for (`rllib_env.for_rllib`)."""
    import rllib_env

    resources = cfg["resources"]
    return rllib_env.for_rllib(aec, resources["rllib_env"], infos=resources["env_infos"])


def _rllib_env_creator(env_config: dict[str, Any]) -> Any:
    """Builds a training env inside an env runner from the run config in ``env_config``."""
    import torch

    # One torch thread per env runner: its forward passes are tiny batches, and a second thread
    # only spins against the learner for the machine's cores.
    torch.set_num_threads(1)
    cfg = env_config["cfg"]
    aec = make_env(cfg, cached_splits(cfg).train, mode="train", wrapped=False)
    return adapt_for_rllib(aec, cfg)


def agent_to_module(agent_id: str, *args: Any, **kwargs: Any) -> str:
    """Policy mapping: the meta-agent has its own module, every specialist shares one."""
    return "meta" if agent_id == "meta" else "specialist"


# ----------------------------------------------------------------------------------------------
# Policy for inference
# ----------------------------------------------------------------------------------------------


class RunPolicy:
    """Deterministic actions for every agent of the env from the run's RLModules."""

    def __init__(self, modules: dict[str, Any], normalize_actions: bool = False) -> None:
        self.modules = modules
        self.normalize_actions = normalize_actions

    @staticmethod
    def module_id(agent_id: str) -> str:
        return agent_to_module(agent_id)

    def act(self, agent_id: str, observation: np.ndarray) -> Any:
        """The env-ready deterministic action of ``agent_id`` for one observation."""
        import torch
        from ray.rllib.core import Columns
        from ray.rllib.utils.spaces.space_utils import clip_action, unsquash_action

        module = self.modules[agent_to_module(agent_id)]
        obs = torch.as_tensor(np.asarray(observation, dtype=np.float32)[None])
        with torch.no_grad():
            out = module.forward_inference({Columns.OBS: obs})
        dist = module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
        action = dist.to_deterministic().sample()[0].numpy()
        space = module.action_space
        if action.ndim == 0:
            return int(action)
        # Same post-processing as RLlib's NormalizeAndClipActions connector in the env runner.
        return unsquash_action(action, space) if self.normalize_actions else clip_action(action, space)

    __call__ = act


@dataclass
class EpisodeRecord:
    """One played episode: portfolio values per bar and what the meta-agent did."""

    equity: np.ndarray  # [B+1] portfolio value, initial capital first
    rewards: dict[str, float] = field(default_factory=dict)  # summed scalar reward per agent
    weights_before: np.ndarray | None = None  # [B, N+1]
    weights_after: np.ndarray | None = None  # [B, N+1]
    fees: np.ndarray | None = None  # [B]
    steps: int = 0  # agent steps


def play_episode(env: Any, policy: Callable[[str, Any], Any], seed: int | None = 0) -> EpisodeRecord:
    """Play one episode of the AEC ``env`` with ``policy`` and record the equity curve."""
    import torch

    env.reset(seed=seed)
    raw = env.unwrapped
    equity = [float(raw.portfolio_value)]
    rewards: dict[str, float] = {}
    steps = 0
    # One torch thread: batch-of-one forward passes with two threads spin on a busy machine
    # (milliseconds instead of microseconds per layer).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for agent in env.agent_iter():
            obs, reward, terminated, truncated, _ = env.last()
            rewards[agent] = rewards.get(agent, 0.0) + float(reward)
            action = None if terminated or truncated else policy(agent, obs)
            env.step(action)
            steps += 1
            if agent == "meta" and action is not None:
                equity.append(float(raw.portfolio_value))
    finally:
        torch.set_num_threads(threads)
    return EpisodeRecord(equity=np.asarray(equity), rewards=rewards, steps=steps)


def score_episode(record: EpisodeRecord, timeframe: str) -> dict[str, float]:
    """Validation metrics of an episode (metrics.py conventions) plus ``log_growth``."""
    periods = metrics.periods_per_year(timeframe)
    returns = metrics.simple_returns(record.equity)
    out = {
        "total_return": metrics.total_return(returns),
        "cagr": metrics.cagr(returns, periods),
        "sharpe": metrics.sharpe(returns, periods),
        "sortino": metrics.sortino(returns, periods),
        "calmar": metrics.calmar(returns, periods),
        "max_drawdown": metrics.max_drawdown(returns),
        "log_growth": float(np.log(record.equity[-1] / record.equity[0])),
        "bars": float(len(returns)),
    }
    return {key: float(value) for key, value in out.items()}


def _finite(value: float) -> float:
    """Scores must order: nan (e.g. Sharpe of a flat curve) ranks as the worst."""
    return value if math.isfinite(value) else -math.inf


# ----------------------------------------------------------------------------------------------
# Ray and the algorithm
# ----------------------------------------------------------------------------------------------


def init_ray(address: str | None, log_dir: Path, num_cpus: int | None = None) -> str:
    """Join ``address`` (or RAY_ADDRESS) if given, else start a local Ray sized for this machine.

    Local Ray keeps its session logs under ``log_dir/ray`` (via a short /tmp dir and a symlink when
    the path is too long for Ray's Unix sockets). Returns a one-line description for the log.
    """
    import ray

    if ray.is_initialized():
        return "ray already initialized (e.g. inside a Tune trial)"
    address = address or env("RAY_ADDRESS")
    # Workers import Train and SequentialTradingEnv by name: point them at this checkout (on a
    # multi-machine cluster the repository must sit at the same path on every node).
    pythonpath = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    common = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )
    if address:
        _use_cluster_token()
        ray.init(address=address, **common)
        return f"ray cluster {address}: {ray.cluster_resources().get('CPU', 0):.0f} CPUs"
    target = log_dir / "ray"
    target.parent.mkdir(parents=True, exist_ok=True)
    if len(str(target.resolve())) <= _MAX_RAY_TEMP_DIR:
        temp_dir = target.resolve()
    else:
        temp_dir = Path(tempfile.mkdtemp(prefix="ray_", dir="/tmp"))
        if target.is_symlink() or target.exists():
            target.unlink() if target.is_symlink() else shutil.rmtree(target)
        target.symlink_to(temp_dir, target_is_directory=True)
    cpus = num_cpus or os.cpu_count() or 1
    ray.init(num_cpus=cpus, _temp_dir=str(temp_dir), **common)
    return f"local ray: {cpus} CPUs, session logs in {target}"


def _use_cluster_token() -> None:
    """Clusters started by `ray start` (ray 2.60) require the token in ~/.ray/auth_token, but a
    connecting driver only sends it when RAY_AUTH_MODE=token: turn that on when a token exists."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # other Ray versions: RAY_AUTH_MODE / RAY_AUTH_TOKEN from the environment
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def resolve_num_env_runners(cfg: dict[str, Any]) -> int:
    """'auto': one remote env runner per CPU, or none (sample in the driver) on a single CPU.

    PPO samples and learns in turn, so the learner's CPU is idle while the runners sample: on 2 CPUs,
    2 runners sampled ~2x faster than 1 and whole iterations ran ~1.6x faster (bench/bench_train.py)."""
    runners = cfg["resources"]["num_env_runners"]
    if runners == "auto":
        import ray

        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1)) if ray.is_initialized() else 1
        return cpus if cpus >= 2 else 0
    return int(runners)


def build_algo_config(
    cfg: dict[str, Any], env_name: str = ENV_NAME, num_env_runners: int | None = None
) -> Any:
    """The PPOConfig for our two policies (returned unbuilt so benchmarks can swap the env)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.tune.registry import register_env

    import rllib_env

    if env_name == ENV_NAME:
        register_env(ENV_NAME, _rllib_env_creator)
    ppo, model = cfg["ppo"], cfg["model"]

    def spec(hiddens: list[int], **extra: Any) -> RLModuleSpec:
        return RLModuleSpec(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(hiddens),
                fcnet_activation=model["activation"],
                vf_share_layers=False,
                **extra,
            )
        )

    # RLlib clamps the Gaussian's log std to [-clip, clip]. Without a floor PPO can shrink the std
    # early, and as each clipped update moves the mean by a fraction of the std, learning stalls.
    clip = model["meta_log_std_clip"]
    if model["meta_network"] == "pair_shared":
        from meta_module import PairSharedAllocator

        meta_spec = RLModuleSpec(
            module_class=PairSharedAllocator,
            model_config={
                "hiddens": list(model["meta_hiddens"]),
                "activation": model["activation"],
                "log_std_init": model["meta_log_std_init"],
                "log_std_clip": clip,
            },
        )
    else:
        meta_spec = spec(
            model["meta_hiddens"], **({} if clip is None else {"log_std_clip_param": float(clip)})
        )

    # The meta-agent acts once per bar against N specialist steps, and the minibatch iterator cycles
    # every module until the specialist data is covered num_epochs times: the meta makes ~N times
    # more passes over its (N times smaller) batch. PPO's clipping bounds how far those passes move
    # it; ppo.meta_lr tunes it separately (in short runs the meta, not the specialists, is the
    # bottleneck, so its default is the same rate rather than a smaller one).
    meta_lr = ppo["meta_lr"] if ppo["meta_lr"] is not None else ppo["lr"]
    runners = resolve_num_env_runners(cfg) if num_env_runners is None else num_env_runners
    config = (
        PPOConfig()
        # normalize_actions off: the meta's Gaussian then explores in logit units (std 1 at the
        # start) instead of being stretched over +-logit_limit, which made every bar's exploration
        # allocation nearly one-hot and drowned the reward in trading costs. The env clips logits.
        .environment(
            env_name,
            env_config={"cfg": cfg},
            normalize_actions=ppo["normalize_actions"],
        )
        .env_runners(
            num_env_runners=runners,
            num_envs_per_env_runner=cfg["resources"]["num_envs_per_env_runner"],
            rollout_fragment_length="auto",
            num_cpus_per_env_runner=1,
            # Wait for the runners however long sampling takes: RLlib's default (60 s) DROPS the whole
            # sample of a runner that misses it, and on a busy machine every iteration lost its data.
            sample_timeout_s=None,
        )
        .multi_agent(policies={"specialist", "meta"}, policy_mapping_fn=agent_to_module)
        .rl_module(
            rl_module_spec=MultiRLModuleSpec(
                rl_module_specs={
                    "specialist": spec(model["specialist_hiddens"]),
                    "meta": meta_spec,
                }
            ),
            algorithm_config_overrides_per_module={"meta": PPOConfig.overrides(lr=meta_lr)},
        )
        .training(
            lr=ppo["lr"],
            gamma=ppo["gamma"],
            lambda_=ppo["lambda"],
            entropy_coeff=ppo["entropy_coeff"],
            clip_param=ppo["clip_param"],
            vf_loss_coeff=ppo["vf_loss_coeff"],
            vf_clip_param=ppo["vf_clip_param"],
            grad_clip=ppo["grad_clip"],
            train_batch_size_per_learner=ppo["train_batch_size"],
            minibatch_size=ppo["minibatch_size"],
            num_epochs=ppo["num_epochs"],
        )
        .learners(num_learners=0)
        .callbacks(rllib_env.HierarchyMetrics)  # calls' hit rates and the meta's reliance on them
        .debugging(seed=cfg["run"]["seed"], log_level="WARN")
        .reporting(metrics_num_episodes_for_smoothing=20)
    )
    return config


def init_meta_log_std(algo: Any, log_std: float | None) -> None:
    """Start the meta-agent's Gaussian at std ``exp(log_std)`` (RLlib starts at 1) in the learner and
    every env runner. Exploring with std 1 in logit units reshuffles the whole allocation every bar;
    its trading costs drown the planted signal's reward until PPO has shrunk the std by itself.
    The log-std half of the policy head's last layer gets zero weights and this bias (still learned)."""
    import torch

    module = algo.learner_group._learner.module["meta"]
    if log_std is None or not hasattr(module, "pi"):  # meta_module's networks start there themselves
        return
    head = module.pi
    with torch.no_grad():
        if hasattr(head, "log_std"):  # free_log_std heads
            head.log_std.fill_(float(log_std))
        else:
            last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
            half = last.out_features // 2
            last.weight[half:].zero_()
            last.bias[half:].fill_(float(log_std))
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def _redirect_rllib_logdir(log_dir: Path) -> None:
    """Algorithm() outside Tune makes an (empty) dir under ~/ray_results; keep it in logs/<run_id>."""
    import ray.tune.trainable.trainable as trainable

    (log_dir / "rllib").mkdir(parents=True, exist_ok=True)
    trainable.DEFAULT_STORAGE_PATH = str(log_dir / "rllib")


def policy_from_algo(algo: Any) -> RunPolicy:
    """Inference policy over the learner's current modules (no copy; call it between train() calls)."""
    learner = algo.learner_group._learner  # num_learners=0: the learner lives in this process
    normalize = bool(algo.config.normalize_actions)
    return RunPolicy(
        {mid: learner.module[mid] for mid in ("specialist", "meta")}, normalize_actions=normalize
    )


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@dataclass
class RunPaths:
    run_id: str
    run_dir: Path
    log_dir: Path

    @classmethod
    def make(cls, run_id: str, saved_root: Path = SAVED_MODELS, logs_root: Path = LOGS) -> RunPaths:
        return cls(run_id, Path(saved_root) / run_id, Path(logs_root) / run_id)


def default_run_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


class ProgressLog:
    """Progress lines to the console and logs/<run_id>/progress.log, rows to progress.csv, and TB."""

    FIELDS = [
        "iteration", "seconds", "agent_steps", "agent_steps_per_s",
        "return_specialist", "return_meta", "episode_return", "validation_score",
    ]  # fmt: skip

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        self.text = (log_dir / "progress.log").open("a")
        csv_path = log_dir / "progress.csv"
        new = not csv_path.exists()
        self.csv_file = csv_path.open("a", newline="")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS)
        if new:
            self.csv.writeheader()
        self.tb = SummaryWriter(str(log_dir / "tensorboard"))

    def line(self, message: str) -> None:
        print(message, flush=True)
        self.text.write(message + "\n")
        self.text.flush()

    def row(self, row: dict[str, Any], extra_scalars: dict[str, float]) -> None:
        self.csv.writerow({key: row.get(key) for key in self.FIELDS})
        self.csv_file.flush()
        step = int(row["iteration"])
        for key, value in {**row, **extra_scalars}.items():
            if key != "iteration" and isinstance(value, (int, float)) and value is not None:
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.text.close()
        self.csv_file.close()
        self.tb.close()


def _module_returns(result: dict[str, Any]) -> dict[str, float]:
    runners = result.get("env_runners", {})
    returns = runners.get("module_episode_returns_mean", {}) or {}
    out = {f"return_{mid}": float(value) for mid, value in returns.items()}
    if "episode_return_mean" in runners:
        out["episode_return"] = float(runners["episode_return_mean"])
    return out


def _agent_steps(result: dict[str, Any]) -> int:
    sampled = result.get("env_runners", {}).get("num_agent_steps_sampled", {}) or {}
    return int(sum(int(value) for value in sampled.values()))


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)


def _save_checkpoint(algo: Any, target: Path) -> None:
    """Write to a sibling dir first so a crash never leaves a half-written checkpoint in place."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp.resolve()))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    iterations: int
    best_score: float
    best_iteration: int
    best_metrics: dict[str, float]

    @classmethod
    def from_state(cls, paths: RunPaths, state: dict[str, Any]) -> RunResult:
        """The result recorded in a run's ``state.json``."""
        return cls(
            paths.run_id,
            paths.run_dir,
            state["iteration"],
            state["best_score"],
            state["best_iteration"],
            state["best_metrics"],
        )


def validate(cfg: dict[str, Any], algo: Any, data: MarketData) -> dict[str, float]:
    """Play the deterministic policy once over the whole validation split and score it."""
    env_instance = make_env(cfg, data, mode="eval")
    try:
        record = play_episode(env_instance, policy_from_algo(algo), seed=cfg["run"]["seed"])
    finally:
        env_instance.close()
    scores = score_episode(record, data.timeframe)
    scores["score"] = _finite(scores[cfg["validation"]["metric"]])
    return scores


def train(
    cfg: dict[str, Any],
    paths: RunPaths,
    *,
    resume: bool = False,
    address: str | None = None,
    splits: Splits | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train (or, with ``resume``, continue) the run at ``paths`` until ``run.iterations``.

    ``report`` receives each iteration's row (Ray Tune passes ``tune.report``).
    """
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    state_path = paths.run_dir / "state.json"
    if resume:
        if not (paths.run_dir / "latest").exists() or not state_path.exists():
            raise ConfigError(f"--resume: {paths.run_dir} holds no resumable run (no latest/ checkpoint)")
        state = json.loads(state_path.read_text())
    else:
        if (paths.run_dir / "latest").exists():
            raise ConfigError(f"{paths.run_dir} already holds a run; pass --resume or pick another --run-id")
        state = {
            "iteration": 0,
            "best_score": None,
            "best_iteration": None,
            "best_metrics": {},
            "agent_steps": 0,
        }

    splits = cached_splits(cfg, splits)
    manifest = build_manifest(cfg, splits)
    if resume:
        old = json.loads((paths.run_dir / "manifest.json").read_text())
        if old["train_hash"] != manifest["train_hash"]:
            raise ConfigError("--resume: the training data changed since the run started (hash differs)")
    (paths.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _write_json(paths.run_dir / "manifest.json", manifest)

    ray_info = init_ray(address, paths.log_dir)
    _redirect_rllib_logdir(paths.log_dir)
    algo_config = build_algo_config(cfg)
    algo = algo_config.build_algo()
    if resume:
        algo.restore_from_path(str((paths.run_dir / "latest").resolve()))
    else:
        init_meta_log_std(algo, cfg["model"]["meta_log_std_init"])
    progress = ProgressLog(paths.log_dir)
    progress.line(
        f"run {paths.run_id}: {'resuming at' if resume else 'starting'} iteration {state['iteration']} "
        f"of {cfg['run']['iterations']}; {len(splits.train.symbols)} pairs, train "
        f"{splits.train.n_bars} bars, validation {splits.validation.n_bars} bars; {ray_info}; "
        f"{algo_config.num_env_runners} env runners x {algo_config.num_envs_per_env_runner} envs"
    )
    started = time.monotonic()
    budget = cfg["run"]["time_budget_s"]
    val_cfg = cfg["validation"]
    try:
        while state["iteration"] < cfg["run"]["iterations"]:
            tick = time.perf_counter()
            result = algo.train()
            seconds = time.perf_counter() - tick
            state["iteration"] += 1
            it = state["iteration"]
            steps = _agent_steps(result)
            state["agent_steps"] += steps
            row: dict[str, Any] = {
                "iteration": it,
                "seconds": round(seconds, 3),
                "agent_steps": steps,
                "agent_steps_per_s": round(steps / seconds, 1),
                **_module_returns(result),
            }
            last = it >= cfg["run"]["iterations"] or (budget and time.monotonic() - started >= budget)
            val_metrics: dict[str, float] = {}
            if it % val_cfg["every_iterations"] == 0 or last:
                val_metrics = validate(cfg, algo, splits.validation)
                row["validation_score"] = val_metrics["score"]
                if state["best_score"] is None or val_metrics["score"] > state["best_score"]:
                    state.update(best_score=val_metrics["score"], best_iteration=it, best_metrics=val_metrics)
                    _save_checkpoint(algo, paths.run_dir / "checkpoint")
            if it % cfg["run"]["checkpoint_every"] == 0 or last:
                _save_checkpoint(algo, paths.run_dir / "latest")
                _write_json(state_path, state)
            calls = result.get("env_runners", {}).get("hierarchy", {})  # rllib_env.HierarchyMetrics
            row.update({k: calls[k] for k in ("hit_rate", "reliance") if k in calls})
            scalars = {f"validation/{k}": v for k, v in val_metrics.items()}
            progress.row(row, {**scalars, **{f"hierarchy/{k}": v for k, v in calls.items()}})
            progress.line(_format_row(row, val_cfg["metric"]))
            if report is not None:
                report(
                    {
                        **row,
                        "validation_score": state["best_score"] if state["best_score"] is not None else -1e9,
                    }
                )
            if last:
                break
    finally:
        progress.close()
        algo.stop()
    elapsed = time.monotonic() - started
    final = {
        "run_id": paths.run_id,
        "iterations": state["iteration"],
        "agent_steps": state["agent_steps"],
        "seconds_this_session": round(elapsed, 1),
        "validation_metric": val_cfg["metric"],
        "best_validation_score": state["best_score"],
        "best_iteration": state["best_iteration"],
        "best_validation_metrics": state["best_metrics"],
    }
    _write_json(paths.run_dir / "metrics.json", final)
    return RunResult.from_state(paths, state)


def _format_row(row: dict[str, Any], metric: str) -> str:
    parts = [
        f"iter {row['iteration']:4d}",
        f"{row['agent_steps_per_s']:8.0f} agent-steps/s",
        f"return specialist {row.get('return_specialist', float('nan')):8.3f}",
        f"meta {row.get('return_meta', float('nan')):8.3f}",
    ]
    if "hit_rate" in row:  # specialists' call hit rate, the meta's extra weight on pairs called buy
        parts.append(f"calls hit {row['hit_rate']:.1%} reliance {row.get('reliance', float('nan')):+.2f}")
    if "validation_score" in row:
        parts.append(f"validation {metric} {row['validation_score']:.3f}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------------------------
# Loading a run
# ----------------------------------------------------------------------------------------------


def load_run(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], RunPolicy]:
    """(resolved config, data manifest, deterministic policy) of a saved run; no Ray needed.

    Raises FileNotFoundError / ValueError with a clear message for a missing or corrupt run.
    """
    from ray.rllib.core.rl_module.rl_module import RLModule

    run_dir = Path(run_dir)
    for name in ("config.yaml", "manifest.json", "checkpoint"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a saved run: {name} is missing")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    modules = {}
    for module_id in ("specialist", "meta"):
        path = run_dir / "checkpoint" / "learner_group" / "learner" / "rl_module" / module_id
        try:
            modules[module_id] = RLModule.from_checkpoint(str(path.resolve()))
        except Exception as exc:  # noqa: BLE001 - any failure here means the checkpoint is unusable
            raise ValueError(
                f"checkpoint of module {module_id!r} in {run_dir} is missing or corrupt: {exc}"
            ) from exc
        modules[module_id].eval()
    return cfg, manifest, RunPolicy(modules, normalize_actions=bool(cfg["ppo"]["normalize_actions"]))


# ----------------------------------------------------------------------------------------------
# Tune
# ----------------------------------------------------------------------------------------------


def _sample_space(space_cfg: dict[str, Any]) -> dict[str, Any]:
    """``{"ppo.lr": {"loguniform": [1e-5, 1e-3]}, ...}`` -> a Ray Tune param space."""
    from ray import tune

    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "choice": tune.choice}
    space = {}
    for key, spec in space_cfg.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in kinds:
            raise ConfigError(
                f"tune.search_space.{key}: expected one of {sorted(kinds)} -> values, got {spec!r}"
            )
        kind, args = next(iter(spec.items()))
        space[key] = kinds[kind](args) if kind == "choice" else kinds[kind](*args)
    return space


def tune_run(cfg: dict[str, Any], paths: RunPaths, address: str | None = None) -> RunResult:
    """ASHA search over ``tune.search_space``; the best trial's run is copied to ``paths.run_dir``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tune_cfg = cfg["tune"]
    for key in tune_cfg["search_space"]:
        set_path(cfg, key, get_path(cfg, key))  # unknown keys fail before anything starts
    space = _sample_space(tune_cfg["search_space"])
    splits = load_splits(cfg)
    init_ray(address, paths.log_dir)
    trial_root = paths.run_dir / "trials"

    def trial(params: dict[str, Any], splits: Splits) -> None:
        trial_cfg = cfg
        for key, value in params.items():
            trial_cfg = set_path(trial_cfg, key, value.item() if hasattr(value, "item") else value)
        trial_cfg = set_path(trial_cfg, "resources.num_env_runners", 0)
        trial_cfg = set_path(trial_cfg, "run.iterations", tune_cfg["max_iterations"])
        validate_config(trial_cfg)
        name = tune.get_context().get_trial_name()
        train(
            trial_cfg,
            RunPaths(name, trial_root / name, paths.log_dir / "trials" / name),
            splits=splits,
            report=tune.report,
        )

    trainable = tune.with_resources(tune.with_parameters(trial, splits=splits), {"cpu": 1})
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=tune_cfg["max_iterations"],
        grace_period=tune_cfg["grace_period"],
        reduction_factor=tune_cfg["reduction_factor"],
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="validation_score",
            mode="max",
            scheduler=scheduler,
            num_samples=tune_cfg["num_samples"],
            max_concurrent_trials=tune_cfg["max_concurrent_trials"],
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str((paths.log_dir).resolve()),
            verbose=1,
        ),
    )
    results = tuner.fit()
    frame = results.get_dataframe()
    columns = [c for c in frame.columns if c.startswith("config/")] + [
        "training_iteration",
        "validation_score",
    ]
    table = frame[columns].sort_values("validation_score", ascending=False)
    print(table.to_string(index=False))
    table.to_csv(paths.log_dir / "tune_results.csv", index=False)
    best = results.get_best_result()
    if best.metrics is None:
        raise RuntimeError("no Tune trial reported a result; see the trial errors above")
    best_name = next(d for d in trial_root.iterdir() if d.name.endswith(best.metrics["trial_id"]))
    for item in best_name.iterdir():
        target = paths.run_dir / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    best_cfg = yaml.safe_load((paths.run_dir / "config.yaml").read_text())
    state = json.loads((paths.run_dir / "state.json").read_text())
    print(f"best trial {best_name.name}: validation {best_cfg['validation']['metric']} {state['best_score']}")
    return RunResult.from_state(paths, state)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", default=None, help="YAML laid over configs/train.yaml (e.g. configs/smoke.yaml)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set ppo.lr=1e-4 (repeatable)",
    )
    parser.add_argument("--run-id", default=None, help="run name (default: UTC timestamp)")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run --run-id from its latest checkpoint"
    )
    parser.add_argument(
        "--tune", action="store_true", help="Ray Tune ASHA search; the best trial becomes the run"
    )
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else local Ray)"
    )
    parser.add_argument("--saved-models", type=Path, default=SAVED_MODELS, help="root of saved runs")
    parser.add_argument("--logs", type=Path, default=LOGS, help="root of run logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:
            if not args.run_id:
                raise ConfigError("--resume needs --run-id NAME")
            paths = RunPaths.make(args.run_id, args.saved_models, args.logs)
            saved = paths.run_dir / "config.yaml"
            if not saved.exists():
                raise ConfigError(f"--resume: no saved run at {paths.run_dir}")
            cfg = load_config(saved, args.set)
        else:
            cfg = load_config(args.config, args.set)
            paths = RunPaths.make(args.run_id or default_run_id(), args.saved_models, args.logs)
        if args.tune:
            result = tune_run(cfg, paths, address=args.address)
        else:
            result = train(cfg, paths, resume=args.resume, address=args.address)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(
        f"run {result.run_id} saved in {result.run_dir}: {result.iterations} iterations, best validation "
        f"{cfg['validation']['metric']} {result.best_score} at iteration {result.best_iteration}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
