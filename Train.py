"""Multi-agent PPO (RLlib new API stack, ray 2.60) over SequentialTradingEnv.

Two policies: ``specialist`` (one network shared by every ``specialist_<BASE>`` agent) and ``meta``.
Data splits come from config by date; training uses only the train split, the deterministic policy
is scored on the validation split every ``validation.every_iterations`` and the best checkpoint by
``validation.metric`` is kept; nothing here ever touches the test split.

Usage::

    python Train.py --config configs/smoke.yaml --run-id NAME [--set ppo.lr=1e-4 ...]
    python Train.py --run-id NAME --resume [--set run.iterations=40]
    python Train.py --config configs/smoke.yaml --run-id NEXT --init-from saved_models/NAME   # warm start
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

The flow (`train`): config -> data splits -> PPO algorithm -> loop {train one iteration; every
``validation.every_iterations`` play the deterministic policy over the validation split and keep the
best checkpoint; save latest/} -> metrics.json. The parts live where they belong: `training` (splits,
Ray, the PPO config, validation, progress log), `decision` (the policy and its observations: load a
saved run with `decision.load_policy`, no Ray needed), `backtest` (the episode loop).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import console
import run_files
import training
from run_config import (  # noqa: F401  (re-exported: callers say Train.load_config etc.)
    SPLITS,
    get_path,
    load_config,
    set_path,
    split_ranges_ms,
    validate_config,
)
from run_files import (  # noqa: F401  (re-exported)
    LOGS,
    SAVED_MODELS,
    RunPaths,
    _save_checkpoint,
    _write_json,
    build_manifest,
    data_hash,
    default_run_id,
)
from settings import ConfigError
from training import Splits

log = logging.getLogger("train")


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


def train(
    cfg: dict[str, Any],
    paths: RunPaths,
    *,
    resume: bool = False,
    address: str | None = None,
    splits: Splits | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
    init_from: str | Path | None = None,
) -> RunResult:
    """Train (or, with ``resume``, continue) the run at ``paths`` until ``run.iterations``, keeping the
    best checkpoint by validation score. ``report`` receives each iteration's row (Tune's).
    ``init_from``: a saved run whose best weights a new run starts from (the walk-forward's warm
    start); a resumed run continues from its own ``latest/`` instead."""
    splits = training.cached_splits(cfg, splits)
    init_weights = None
    if init_from is not None and not resume:  # refused before anything is written or Ray starts
        init_weights = training.read_init_weights(init_from, cfg, splits.train)
    state = _open_run(paths, resume)
    if init_weights is not None:
        state["init_from"] = str(init_from)
    _write_run_config(cfg, paths, splits, resume)
    ray_info = training.init_ray(address, paths.log_dir)
    training.redirect_rllib_logdir(paths.log_dir)
    algo_config = training.build_algo_config(cfg)
    algo = algo_config.build_algo()
    if resume:
        algo.restore_from_path(str((paths.run_dir / "latest").resolve()))
    elif init_weights is not None:
        training.set_module_weights(algo, init_weights)
    else:
        training.init_meta_log_std(algo, cfg["model"]["meta_log_std_init"])
    progress = training.ProgressLog(paths.log_dir)
    start = "resuming at" if resume else "starting" if init_weights is None else f"from {init_from}: starting"
    progress.line(
        f"run {paths.run_id}: {start} iteration {state['iteration']} "
        f"of {cfg['run']['iterations']}; {len(splits.train.symbols)} pairs, train {splits.train.n_bars} "
        f"bars, validation {splits.validation.n_bars} bars; {ray_info}; "
        f"{algo_config.num_env_runners} env runners x {algo_config.num_envs_per_env_runner} envs"
    )
    run, val_cfg = cfg["run"], cfg["validation"]
    started = time.monotonic()
    try:
        while state["iteration"] < run["iterations"]:
            tick = time.perf_counter()
            result = algo.train()
            state["iteration"] = it = state["iteration"] + 1
            row = training.iteration_row(it, result, time.perf_counter() - tick)
            state["agent_steps"] += row["agent_steps"]
            budget_over = bool(run["time_budget_s"]) and time.monotonic() - started >= run["time_budget_s"]
            last = it >= run["iterations"] or budget_over
            scores: dict[str, float] = {}
            if it % val_cfg["every_iterations"] == 0 or last:
                scores = training.validate(cfg, algo, splits)
                row["validation_score"] = scores["score"]
                if state["best_score"] is None or scores["score"] > state["best_score"]:
                    state.update(best_score=scores["score"], best_iteration=it, best_metrics=scores)
                    _save_checkpoint(algo, paths.run_dir / "checkpoint")
            if it % run["checkpoint_every"] == 0 or last:
                _save_checkpoint(algo, paths.run_dir / "latest")
                _write_json(paths.run_dir / "state.json", state)
            progress.record(row, scores, val_cfg["metric"])
            if report is not None:
                best = state["best_score"] if state["best_score"] is not None else -1e9
                report({**row, "validation_score": best})
            if last:
                break
    finally:
        progress.close()
        algo.stop()
    _write_json(paths.run_dir / "metrics.json", _final_metrics(paths, state, val_cfg["metric"], started))
    return RunResult.from_state(paths, state)


def _open_run(paths: RunPaths, resume: bool) -> dict[str, Any]:
    """The run's state: from ``state.json`` to resume, else fresh (refusing to overwrite a run)."""
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    state_path = paths.run_dir / "state.json"
    if resume:
        if not (paths.run_dir / "latest").exists() or not state_path.exists():
            raise ConfigError(f"--resume: {paths.run_dir} holds no resumable run (no latest/ checkpoint)")
        return json.loads(state_path.read_text())
    if (paths.run_dir / "latest").exists():
        raise ConfigError(f"{paths.run_dir} already holds a run; pass --resume or pick another --run-id")
    return {"iteration": 0, "best_score": None, "best_iteration": None, "best_metrics": {}, "agent_steps": 0}


def _write_run_config(cfg: dict[str, Any], paths: RunPaths, splits: Splits, resume: bool) -> None:
    """config.yaml and manifest.json; a resumed run must see the same training data."""
    manifest = build_manifest(cfg, splits)
    if resume:
        old = json.loads((paths.run_dir / "manifest.json").read_text())
        if old["train_hash"] != manifest["train_hash"]:
            raise ConfigError("--resume: the training data changed since the run started (hash differs)")
    run_files.write_run_start(paths.run_dir, cfg, manifest)


def _final_metrics(paths: RunPaths, state: dict[str, Any], metric: str, started: float) -> dict[str, Any]:
    return {
        "run_id": paths.run_id,
        "iterations": state["iteration"],
        "agent_steps": state["agent_steps"],
        "seconds_this_session": round(time.monotonic() - started, 1),
        "validation_metric": metric,
        "best_validation_score": state["best_score"],
        "best_iteration": state["best_iteration"],
        "best_validation_metrics": state["best_metrics"],
        "init_from": state.get("init_from"),
    }


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
    splits = training.load_splits(cfg)
    training.init_ray(address, paths.log_dir)
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
        "--init-from",
        default=None,
        metavar="RUN_DIR",
        help="start from the best weights of a saved run (same pairs, features and model) instead of random",
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
        if args.init_from and (args.resume or args.tune):
            raise ConfigError("--init-from starts a new single run: not with --resume (which continues the "
                              "run's own latest/ checkpoint) nor with --tune")  # fmt: skip
        if args.resume:
            if not args.run_id:
                raise ConfigError("--resume needs --run-id NAME")
            paths = RunPaths.make(args.run_id, args.saved_models, args.logs)
            saved = paths.run_dir / "config.yaml"
            if not saved.exists():
                raise ConfigError(f"--resume: no saved run at {paths.run_dir}")
            # A damaged config.yaml would otherwise be completed from the defaults without a word.
            run_files.verify_run(paths.run_dir, required=run_files.RESUME_FILES)
            cfg = load_config(saved, args.set)
        else:
            cfg = load_config(args.config, args.set)
            paths = RunPaths.make(args.run_id or default_run_id(), args.saved_models, args.logs)
        # Everything that can be refused is refused here, before a directory is made or Ray starts:
        # the data loads, and the env builds once on the train split (portfolio, features, rules).
        try:
            splits = training.cached_splits(cfg)
            training.make_env(cfg, splits.train, mode="train").close()
        except (OSError, ValueError) as exc:  # ConfigError included
            raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"data or env: {exc}") from exc
        if args.tune:
            result = tune_run(cfg, paths, address=args.address)
        else:
            result = train(cfg, paths, resume=args.resume, address=args.address, splits=splits,
                           init_from=args.init_from)  # fmt: skip
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(
        f"run {result.run_id} saved in {result.run_dir}: {result.iterations} iterations, best validation "
        f"{cfg['validation']['metric']} {console.number(result.best_score)} at iteration "
        f"{result.best_iteration}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
