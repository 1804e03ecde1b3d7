"""Everything Train.py's loop calls but does not show: data splits, the env inside RLlib's runners,
Ray start-up, the PPO config of our two policies, validation and the progress log.

- `load_splits` / `cached_splits`: the configured market cut into the date splits, the whole series
  kept so that validation and backtests can take `decision.history_bars` of warm-up before a split.
- `build_algo_config`: RLlib PPO (new API stack) with two modules, ``specialist`` (shared by every
  ``specialist_<BASE>`` agent, `agent_to_module`) and ``meta`` (`meta_module.PairSharedAllocator` or
  RLlib's MLP); env runners build the env with `make_env` + `adapt_for_rllib` from the run config.
- `validate`: the learner's current weights as a `decision.Policy`, played once over the validation
  split by the one episode loop (`decision.play_policy`), warm from the train split's last bars.
- `init_ray`: join a cluster (``--address`` / RAY_ADDRESS) or start a local Ray with its logs in
  ``logs/<run_id>/ray``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import backtest
import console
import decision
from market_arrays import MarketData
from settings import PROJECT_ROOT, ConfigError, env, format_ms

ENV_NAME = "sequential_trading"
# Unix sockets cannot live under long paths (108 bytes); Ray's session dir adds ~62 characters.
_MAX_RAY_TEMP_DIR = 44


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


@dataclass
class Splits:
    """The date splits of the configured market, and the whole series they were cut from."""

    train: MarketData
    validation: MarketData
    test: MarketData
    full: MarketData

    def __getitem__(self, name: str) -> MarketData:
        return getattr(self, name)

    def warm(self, name: str, need_bars: int) -> tuple[MarketData, int]:
        """Split ``name`` with ``need_bars - 1`` earlier bars of the same series as warm-up:
        (slice, index of the split's first bar in it); `decision.warm_range`."""
        part = self[name]
        end_ms = int(part.open_time_ms[-1]) + 1
        return decision.warm_range(self.full, int(part.open_time_ms[0]), end_ms, need_bars,
                                   f"the {name} split")  # fmt: skip


def load_splits(cfg: dict[str, Any]) -> Splits:
    """Load the configured market once and cut it into the date splits; an empty split is an error."""
    import market_data
    from run_config import split_ranges_ms

    split_ranges_ms(cfg)  # clear errors before any data is loaded
    source = copy.deepcopy(cfg["data"]["source"])
    data = market_data.load(source)
    times = data.open_time_ms
    covers = f"{format_ms(times[0])} .. {format_ms(times[-1])}" if data.n_bars else "nothing"
    try:
        parts = market_data.split_by_dates(data, cfg["data"]["splits"])
    except ConfigError as exc:
        raise ConfigError(f"data.splits: {exc}; the data ({source}) covers {covers}") from exc
    for name, part in parts.items():
        if part.n_bars < 2:
            raise ConfigError(
                f"data.splits.{name} holds {part.n_bars} bars of {source}; the data covers {covers}"
            )
    return Splits(train=parts["train"], validation=parts["validation"], test=parts["test"], full=data)


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


# ----------------------------------------------------------------------------------------------
# The env inside RLlib
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
    console.route_library_output(log_dir / "libraries.log")  # Ray's chatter: a file
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


def read_init_weights(
    run_dir: str | Path, cfg: dict[str, Any], data: MarketData
) -> dict[str, dict[str, Any]]:
    """The module weights a run starting from the saved run ``run_dir`` begins with (its best
    checkpoint: what the walk-forward's ``warm_start`` carries from one fold to the next), checked
    before Ray starts: the saved run's files verify, and it must trade the same pairs at the same
    timeframe with the same features and ``model`` section, or the weights would mean something else
    (ConfigError naming the difference)."""
    run_dir = Path(run_dir)
    try:
        saved_cfg, manifest = decision.load_run_files(run_dir)
        states = decision.load_module_states(run_dir)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"init from {run_dir}: {exc}") from exc
    here = {"pairs": list(data.symbols), "timeframe": data.timeframe, "features": list(data.feature_names),
            "model": cfg["model"]}  # fmt: skip
    there = {"pairs": list(manifest["symbols"]), "timeframe": manifest["timeframe"],
             "features": list(manifest["feature_names"]), "model": saved_cfg["model"]}  # fmt: skip
    for key, value in here.items():
        if there[key] != value:
            raise ConfigError(
                f"init from {run_dir}: its {key} ({there[key]}) differ from this run's ({value}); start "
                "from a run of the same pairs, features and model, or from random weights"
            )
    return states


def set_module_weights(algo: Any, states: dict[str, dict[str, Any]]) -> None:
    """Load ``states`` (`read_init_weights`) into the learner's modules, every name and shape exactly
    (RLlib's own set_state is lenient about missing keys), then into every env runner's copy. The
    optimizer keeps its fresh state: Adam's moments of another run's data would steer the first steps."""
    import torch

    learner = algo.learner_group._learner  # num_learners=0: the learner lives in this process
    for module_id, state in states.items():
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        try:
            learner.module[module_id].load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ConfigError(f"module {module_id!r} cannot take the saved weights: {exc}") from exc
    algo.env_runner_group.sync_weights(from_worker_or_learner_group=algo.learner_group, inference_only=True)


def redirect_rllib_logdir(log_dir: Path) -> None:
    """Algorithm() outside Tune makes an (empty) dir under ~/ray_results; keep it in logs/<run_id>."""
    import ray.tune.trainable.trainable as trainable

    (log_dir / "rllib").mkdir(parents=True, exist_ok=True)
    trainable.DEFAULT_STORAGE_PATH = str(log_dir / "rllib")


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def policy_from_algo(algo: Any, cfg: dict[str, Any], data: MarketData) -> decision.Policy:
    """The learner's current modules as the decision core's deterministic `decision.Policy` (a copy
    of the weights: call it between train() calls). ``data``: any split (pairs, timeframe, features)."""
    learner = algo.learner_group._learner  # num_learners=0: the learner lives in this process
    states = {mid: learner.module[mid].state_dict() for mid in decision.MODULE_IDS}
    return decision.Policy.from_states(cfg, data.symbols, data.timeframe, data.feature_names, states)


def validate(cfg: dict[str, Any], algo: Any, splits: Splits) -> dict[str, float]:
    """Play the deterministic policy once over the whole validation split (warm from the bars before
    it) and score it; ``score`` is ``validation.metric`` with nan as -inf."""
    policy = policy_from_algo(algo, cfg, splits.validation)
    market, first_bar = splits.warm("validation", policy.history_bars)
    record = decision.play_policy(policy, market, first_bar, name="validation")
    scores = backtest.score_equity(record.equity, market.timeframe)
    scores["score"] = backtest.finite_score(scores[cfg["validation"]["metric"]])
    return scores


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


class ProgressLog:
    """Progress lines to the console and logs/<run_id>/progress.log, rows to progress.csv, and TB."""

    FIELDS = [
        "iteration", "seconds", "agent_steps", "agent_steps_per_s",
        "return_specialist", "return_meta", "episode_return", "validation_score",
        "hit_rate", "reliance",
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

    def record(self, row: dict[str, Any], scores: dict[str, float], metric: str) -> None:
        """One iteration: its row (CSV, TensorBoard with the validation ``scores``) and its line."""
        self.row(row, {f"validation/{k}": v for k, v in scores.items()})
        self.line(format_row(row, metric))

    def close(self) -> None:
        self.text.close()
        self.csv_file.close()
        self.tb.close()


def iteration_row(iteration: int, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One progress row of a training iteration from RLlib's result dict and the timed seconds."""
    steps = agent_steps(result)
    calls = result.get("env_runners", {}).get("hierarchy", {})  # rllib_env.HierarchyMetrics
    return {
        "iteration": iteration,
        "seconds": round(seconds, 3),
        "agent_steps": steps,
        "agent_steps_per_s": round(steps / seconds, 1),
        **module_returns(result),
        # The specialists' call hit rate and the meta's extra weight on pairs called buy.
        **{key: float(calls[key]) for key in ("hit_rate", "reliance") if key in calls},
    }


def module_returns(result: dict[str, Any]) -> dict[str, float]:
    runners = result.get("env_runners", {})
    returns = runners.get("module_episode_returns_mean", {}) or {}
    out = {f"return_{mid}": float(value) for mid, value in returns.items()}
    if "episode_return_mean" in runners:
        out["episode_return"] = float(runners["episode_return_mean"])
    return out


def agent_steps(result: dict[str, Any]) -> int:
    sampled = result.get("env_runners", {}).get("num_agent_steps_sampled", {}) or {}
    # RLlib reports NaN for an agent no runner sampled this iteration (seen under heavy CPU load).
    return int(sum(int(value) for value in sampled.values() if math.isfinite(value)))


def format_row(row: dict[str, Any], metric: str) -> str:
    parts = [
        f"iter {row['iteration']:4d}",
        f"{row['agent_steps_per_s']:8.0f} agent-steps/s",
        f"return specialist {console.number(row.get('return_specialist'), '.3f', 8)}",
        f"meta {console.number(row.get('return_meta'), '.3f', 8)}",
    ]
    if "hit_rate" in row:  # specialists' call hit rate, the meta's extra weight on pairs called buy
        reliance = console.number(row.get("reliance"), "+.2f")
        parts.append(f"calls hit {row['hit_rate']:.1%} reliance {reliance}")
    if "validation_score" in row:
        parts.append(f"validation {metric} {row['validation_score']:.3f}")
    return " | ".join(parts)
