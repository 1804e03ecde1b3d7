"""Walk-forward research: retrain and test fold by fold, stitch one out-of-sample account, and say how
sure the result is.

    python walk_forward.py --config configs/walk_forward.yaml [--set KEY=VALUE ...] [--run-id ID]
                           [--address RAY_ADDRESS] [--resume]

1. **Plan** (`folds.plan_folds`): rolling or anchored folds of train / validation / test ranges whose
   test segments tile the out-of-sample period.
2. **Train**: every (fold, seed) pair is one independent `Train.train` run, one Ray task of one CPU
   (sampling in-process), so the same command spreads over a cluster with ``--address`` and locally
   runs one run per CPU. A finished run leaves ``done.json``; ``--resume`` skips finished runs and
   continues interrupted ones from their ``latest/`` checkpoint. With ``warm_start: true`` a fold's
   run of seed s starts from the best weights of the previous fold's run of seed s (``Train.train``'s
   ``init_from``) and waits for it: seeds train side by side, folds one after another.
3. **Backtest**: the folds' test segments are played in order on the decision core with warm history
   (each segment's observations use the bars before it, so nothing restarts cold at a boundary), ONE
   `Portfolio` carried from fold to fold (cash and positions: the stitched curve is one account). The
   decision after the close of a segment's last bar belongs to the next fold, whose first decision is
   taken at that close; so every bar of the stitched range is traded under exactly one fold's policy.
   The benchmarks (`performance.BENCHMARKS`) trade the same stitched bars with the same costs.
4. **Statistics** (`significance.py`): stationary-bootstrap intervals of each curve's Sharpe ratio and
   of the Sharpe difference agent - benchmark, the probabilistic and deflated Sharpe ratios with the
   number of trials recorded, per-fold metrics and the share of folds where the agent beats each
   benchmark.

Seeds: the fold decides with the seeds' MEAN target weights (``seeds.combine: mean``, the default) or
with the seed that scored best on validation (``best_validation``); README "Walk-forward" says why
the mean is the default.

Layout::

    saved_models/<ID>/fold_<k>/seed_<s>/   one Train.py run per fold and seed (decision.load_policy)
    saved_models/<ID>/fold_<k>/fold.json   the fold's ranges, seeds, combine rule and end-of-test state
    logs/<ID>/walk_forward/config.yaml     the resolved walk-forward config (what --resume reuses)
    logs/<ID>/walk_forward/plan.json       the folds
    logs/<ID>/walk_forward/metrics.json    per curve metrics + sharpe_ci_95; per benchmark
                                           sharpe_diff_ci_95; probabilistic/deflated Sharpe, n_trials
    logs/<ID>/walk_forward/folds.csv       ranges, seeds, validation scores, per-fold metrics
    logs/<ID>/walk_forward/equity.csv      the stitched curves (agent first, then the benchmarks)
    logs/<ID>/walk_forward/report.html     stitched curves with fold boundaries, per-fold table, intervals
    logs/<ID>/walk_forward/fold_<k>/seed_<s>/   each run's training logs
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import folds as folds_mod
import metrics
from folds import Fold
from market_arrays import MarketData
from settings import CONFIG_DIR, PROJECT_ROOT, ConfigError, check_keys, format_ms, load_yaml, merge

log = logging.getLogger("walk_forward")

DEFAULT_CONFIG = CONFIG_DIR / "walk_forward.yaml"
SAVED_MODELS = PROJECT_ROOT / "saved_models"
LOGS = PROJECT_ROOT / "logs"
COMBINE_RULES = ("mean", "best_validation")
DONE_FILE = "done.json"  # written by a (fold, seed) run when its training has finished
# Training keys the walk-forward sets itself (from data, seeds and budget): refused in ``train:``.
OWNED_TRAIN_KEYS = ("data", "run.seed", "run.iterations", "run.time_budget_s")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """configs/walk_forward.yaml, then the file at ``path`` (any subset), then ``KEY=VALUE`` overrides.

    ``train.*`` overrides are kept as dotted keys in ``train_overrides`` and applied to the resolved
    training config (whose every key exists), so ``--set train.ppo.lr=1e-4`` works although the
    ``train`` section lists only what differs from the training config. Validated: `validate_config`.
    """
    import run_config

    cfg = load_yaml(DEFAULT_CONFIG)
    cfg.setdefault("train_overrides", [])
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        user = load_yaml(path)
        # The data source is one mapping whose keys depend on its kind: a file's source replaces it.
        source = user.get("data", {}).pop("source", None) if isinstance(user.get("data"), dict) else None
        train_section = user.pop("train", None)  # replaces the default's: it is a diff over train_config
        cfg = merge(cfg, user, str(path))
        if source is not None:
            cfg["data"]["source"] = source
        if train_section is not None:
            cfg["train"] = train_section
    for key, value in run_config.parse_overrides(list(overrides)):
        if key.startswith("train."):
            cfg["train_overrides"] = [*cfg["train_overrides"], [key[len("train.") :], value]]
        elif key.startswith("data.source."):  # the source's keys depend on its kind: set freely
            cfg["data"]["source"][key[len("data.source.") :]] = value
        else:
            cfg = run_config.set_path(cfg, key, value)
    validate_config(cfg)
    return cfg


def validate_config(cfg: dict[str, Any]) -> None:
    """Value checks; ConfigError naming the key and the fix (before any work starts)."""
    allowed = {"data", "folds", "seeds", "budget", "warm_start", "parallel", "statistics", "train_config",
               "train", "train_overrides"}  # fmt: skip
    check_keys(cfg, allowed, "walk_forward config")
    check_keys(cfg["data"], {"source"}, "data")
    folds_mod.plan_folds(cfg["folds"])
    seeds = cfg["seeds"]
    check_keys(seeds, {"values", "combine"}, "seeds")
    values = seeds["values"]
    if not (
        isinstance(values, list)
        and values
        and all(isinstance(s, int) and not isinstance(s, bool) for s in values)
    ):
        raise ConfigError(f"seeds.values must be a non-empty list of integers, got {values!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"seeds.values has duplicates: {values}")
    if seeds["combine"] not in COMBINE_RULES:
        raise ConfigError(f"seeds.combine must be one of {COMBINE_RULES}, got {seeds['combine']!r}")
    budget = cfg["budget"]
    check_keys(budget, {"iterations", "time_budget_s"}, "budget")
    if not (isinstance(budget["iterations"], int) and budget["iterations"] >= 1):
        raise ConfigError(f"budget.iterations must be a positive integer, got {budget['iterations']!r}")
    seconds = budget["time_budget_s"]
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ConfigError(f"budget.time_budget_s must be a positive number or null, got {seconds!r}")
    if not isinstance(cfg["warm_start"], bool):
        raise ConfigError(f"warm_start must be true or false, got {cfg['warm_start']!r}")
    concurrent = cfg["parallel"]["max_concurrent"]
    if concurrent is not None and not (isinstance(concurrent, int) and concurrent >= 1):
        raise ConfigError(f"parallel.max_concurrent must be a positive integer or null, got {concurrent!r}")
    stats = cfg["statistics"]
    check_keys(stats, {"confidence", "bootstrap_samples", "block_bars", "seed", "configurations_tried"},
               "statistics")  # fmt: skip
    if not 0.5 <= float(stats["confidence"]) < 1.0:
        raise ConfigError(f"statistics.confidence must be in [0.5, 1), got {stats['confidence']!r}")
    if not (isinstance(stats["bootstrap_samples"], int) and stats["bootstrap_samples"] >= 100):
        raise ConfigError("statistics.bootstrap_samples must be an integer >= 100")
    block = stats["block_bars"]
    if block is not None and not (isinstance(block, (int, float)) and block >= 1):
        raise ConfigError(f"statistics.block_bars must be >= 1 or null, got {block!r}")
    if not (isinstance(stats["configurations_tried"], int) and stats["configurations_tried"] >= 1):
        raise ConfigError("statistics.configurations_tried must be a positive integer (this one counts)")
    if not isinstance(cfg["train"], dict):
        raise ConfigError(f"train must be a mapping of Train.py overrides, got {cfg['train']!r}")
    training_config(cfg)  # the training part resolves and validates too


def training_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The Train.py config of every (fold, seed) run before its splits and seed are set: configs/train.yaml,
    ``train_config``, the ``train`` section, the ``train.*`` overrides; data and budget from the
    walk-forward config; one in-process sampler (each run is one Ray task of one CPU)."""
    import run_config

    for key in OWNED_TRAIN_KEYS:
        head, _, rest = key.partition(".")
        section = cfg["train"].get(head)
        if section is not None and (not rest or (isinstance(section, dict) and rest in section)):
            raise ConfigError(f"train.{key} is set by the walk-forward (data, seeds, budget); remove it")
    for key, _ in cfg["train_overrides"]:
        if any(key == owned or key.startswith(owned + ".") for owned in OWNED_TRAIN_KEYS):
            raise ConfigError(f"--set train.{key}: set by the walk-forward (data, seeds, budget) instead")
    base = run_config.load_config(cfg["train_config"])
    train = merge(base, copy.deepcopy(cfg["train"]), "walk_forward config: train")
    train["env"] = run_config.resolve_env_config(train["env"])
    for key, value in cfg["train_overrides"]:
        train = run_config.set_path(train, key, value)
    train["env"] = run_config.resolve_env_config(train["env"])
    train["data"]["source"] = copy.deepcopy(cfg["data"]["source"])
    train["run"]["iterations"] = cfg["budget"]["iterations"]
    train["run"]["time_budget_s"] = cfg["budget"]["time_budget_s"]
    train["resources"]["num_env_runners"] = 0
    run_config.validate_config(train)
    return train


def unit_config(train_cfg: Mapping[str, Any], fold: Fold, seed: int) -> dict[str, Any]:
    """The training config of one (fold, seed) run."""
    out = copy.deepcopy(dict(train_cfg))
    out["data"]["splits"] = fold.splits()
    out["run"]["seed"] = int(seed)
    return out


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkForwardPaths:
    run_id: str
    saved_dir: Path  # saved_models/<ID>
    log_root: Path  # logs/<ID>
    out_dir: Path  # logs/<ID>/walk_forward

    @classmethod
    def make(cls, run_id: str, saved_root: Path = SAVED_MODELS, logs_root: Path = LOGS) -> WalkForwardPaths:
        log_root = Path(logs_root) / run_id
        return cls(run_id, Path(saved_root) / run_id, log_root, log_root / "walk_forward")

    def fold_dir(self, fold: Fold) -> Path:
        return self.saved_dir / fold.name

    def unit(self, fold: Fold, seed: int) -> Any:
        """run_files.RunPaths of the (fold, seed) run."""
        import run_files

        name = f"seed_{seed}"
        return run_files.RunPaths(
            f"{self.run_id}/{fold.name}/{name}", self.fold_dir(fold) / name, self.out_dir / fold.name / name
        )


def default_run_id() -> str:
    return "wf-" + dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_data(cfg: Mapping[str, Any]) -> MarketData:
    """The walk-forward's market (``data.source``), whole: every fold slices it."""
    import market_data

    source = copy.deepcopy(dict(cfg["data"]["source"]))
    if source.get("kind") == "csv" and source.get("path") is not None:  # relative to the repository
        paths = source["path"] if isinstance(source["path"], list) else [source["path"]]
        resolved = [str(p if Path(p).is_absolute() else PROJECT_ROOT / p) for p in paths]
        source["path"] = resolved if isinstance(source["path"], list) else resolved[0]
    try:
        return market_data.load(source)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.source {cfg['data']['source']}: {exc}") from exc


def bar_ms(data: MarketData) -> int:
    from binance.symbols import timeframe_ms

    return int(timeframe_ms(data.timeframe))


def fold_splits(data: MarketData, fold: Fold) -> Any:
    """training.Splits of one fold (ConfigError when a range holds fewer than 2 bars)."""
    import training

    parts = {}
    for name, (lo, hi) in fold.ranges_ms().items():
        part = data.slice_time(lo, hi)
        if part.n_bars < 2:
            raise ConfigError(
                f"{fold.name}: its {name} range {format_ms(lo)} .. {format_ms(hi)} "
                f"holds {part.n_bars} bars of the data; change the fold plan"
            )
        parts[name] = part
    return training.Splits(**parts, full=data)


# ----------------------------------------------------------------------------------------------
# Training: one Ray task per (fold, seed)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One (fold, seed) training run."""

    fold: Fold
    seed: int
    cfg: dict[str, Any]
    run_dir: Path
    log_dir: Path
    after: Unit | None = None  # warm_start: the previous fold's run of this seed (its weights start this)

    @property
    def name(self) -> str:
        return f"{self.fold.name}/seed_{self.seed}"


def make_units(cfg: Mapping[str, Any], plan: list[Fold], paths: WalkForwardPaths) -> list[Unit]:
    """Every (fold, seed) run, fold by fold; with ``warm_start`` each run after fold 0 starts from the
    best weights of the previous fold's run of the same seed (trained on data that all lies before
    this fold's test segment: the previous fold's ranges end where its test segment starts)."""
    train_cfg = training_config(cfg)
    units: list[Unit] = []
    previous: dict[int, Unit] = {}
    for fold in plan:
        for seed in cfg["seeds"]["values"]:
            run = paths.unit(fold, seed)
            after = previous.get(seed) if cfg["warm_start"] else None
            unit = Unit(fold, seed, unit_config(train_cfg, fold, seed), run.run_dir, run.log_dir, after)
            units.append(unit)
            previous[seed] = unit
    return units


def next_ready(queue: Sequence[Unit], finished: Mapping[str, Any]) -> Unit | None:
    """The first queued unit whose warm-start source (if any) has finished training, else None."""
    return next((u for u in queue if u.after is None or u.after.name in finished), None)


def unit_done(unit: Unit) -> dict[str, Any] | None:
    """The run's done.json (its result) when its training finished, else None."""
    path = unit.run_dir / DONE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def train_unit(unit: Unit, data: MarketData) -> dict[str, Any]:
    """Train one (fold, seed) run to its budget (resuming an interrupted one) and mark it done.

    Runs inside a Ray task (or the driver); returns the done.json payload."""
    import run_files
    import Train

    done = unit_done(unit)
    if done is not None:
        return done
    paths = run_files.RunPaths(unit.name, unit.run_dir, unit.log_dir)
    resume = (unit.run_dir / "latest").exists() and (unit.run_dir / "state.json").exists()
    if not resume and unit.run_dir.exists():
        shutil.rmtree(unit.run_dir)  # killed before its first checkpoint: nothing to keep
    tick = time.monotonic()
    init_from = None if unit.after is None else unit.after.run_dir
    splits = fold_splits(data, unit.fold)
    result = Train.train(unit.cfg, paths, resume=resume, splits=splits, init_from=init_from)
    payload = {
        "fold": unit.fold.index,
        "seed": unit.seed,
        "warm_from": None if unit.after is None else unit.after.name,
        "iterations": result.iterations,
        "best_iteration": result.best_iteration,
        "best_validation_score": result.best_score,
        "validation_metric": unit.cfg["validation"]["metric"],
        "resumed": resume,
        "seconds": round(time.monotonic() - tick, 1),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    tmp = unit.run_dir / (DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(unit.run_dir / DONE_FILE)
    return payload


def run_units(
    units: list[Unit],
    data: MarketData,
    log_dir: Path,
    address: str | None = None,
    max_concurrent: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every unfinished unit as a Ray task of one CPU; {unit name: done payload} of all units.

    Ray runs as many tasks at once as the cluster has CPUs (locally: this machine's); ``max_concurrent``
    caps that. A warm-started unit waits for the run it starts from (`next_ready`): seeds still train
    side by side, folds one after another per seed. Results are printed as they arrive; a failed unit
    (and every unit that would start from it) raises after the others finished."""
    import ray

    import training

    results = {u.name: done for u in units if (done := unit_done(u)) is not None}
    pending = [u for u in units if u.name not in results]
    if results:
        print(f"resume: {len(results)} of {len(units)} runs already finished", flush=True)
    if not pending:
        return results
    info = training.init_ray(address, log_dir)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    limit = min(max_concurrent or cpus, cpus, len(pending))
    print(f"training {len(pending)} runs, {limit} at a time ({info})", flush=True)
    remote = ray.remote(num_cpus=1, max_retries=0)(train_unit)
    data_ref = ray.put(data)
    queue = list(pending)
    running: dict[Any, Unit] = {}
    failures: list[str] = []
    while queue or running:
        while len(running) < limit and (unit := next_ready(queue, results)) is not None:
            queue.remove(unit)
            running[remote.remote(unit, data_ref)] = unit
        if not running:  # what is left waits for runs that failed
            failures.extend(f"{u.name}: not trained, its warm start {u.after.name} failed" for u in queue)
            break
        ready, _ = ray.wait(list(running), num_returns=1)
        unit = running.pop(ready[0])
        try:
            results[unit.name] = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - report every failed run, then stop
            failures.append(f"{unit.name}: {exc}")
            print(f"FAILED {unit.name}: {exc}", flush=True)
            continue
        r = results[unit.name]
        warm = f" (started from {r['warm_from']})" if r.get("warm_from") else ""
        print(
            f"done {unit.name}{warm}: {r['iterations']} iterations in {r['seconds']} s, best validation "
            f"{r['validation_metric']} {r['best_validation_score']}",
            flush=True,
        )
    if failures:
        raise RuntimeError("training failed for " + "; ".join(failures))
    return results


# ----------------------------------------------------------------------------------------------
# The fold's policy: its seeds combined
# ----------------------------------------------------------------------------------------------


class _PassThroughLimits:
    """The ensemble's `act` returns final target weights (each member's own limits already applied
    before averaging), so the loop's ``limits.targets`` step passes them through."""

    @staticmethod
    def targets(weights: np.ndarray, n_pairs: int) -> np.ndarray:
        return np.asarray(weights, dtype=np.float64)


class EnsemblePolicy:
    """The seeds' mean decision: mean target weights (a convex combination of allocations is an
    allocation), calls by majority (the sign of their sum; a tie holds).

    Duck-types `decision.Policy` for `decision.play_policy` (``act``, ``limits``, ``check_market``,
    ``env_config``, ``history_bars``) and for live use (``decide``). One member plays exactly as that
    member alone. Members share the fold's training config (they differ in seed only), hence the
    same observations."""

    limits = _PassThroughLimits()

    def __init__(self, members: Sequence[Any]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one policy")
        first = members[0]
        for other in members[1:]:
            if other.env_config != first.env_config or list(other.symbols) != list(first.symbols):
                raise ValueError("every seed of a fold must share its env config and pairs")
        self.members = list(members)
        self.symbols = list(first.symbols)
        self.timeframe = first.timeframe
        self.env_config = first.env_config
        self.history_bars = int(first.history_bars)

    def check_market(self, data: MarketData, what: str = "the data") -> None:
        self.members[0].check_market(data, what)

    @staticmethod
    def combine(calls: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(majority calls, mean targets) of the members' answers."""
        if len(targets) == 1:
            return np.asarray(calls[0]), np.asarray(targets[0])
        votes = np.sum([np.asarray(c, dtype=np.int64) for c in calls], axis=0)
        return np.sign(votes).astype(np.int8), np.mean(targets, axis=0)

    def act(self, market: Any, t: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(calls [N], target weights [N+1]) at bar ``t`` of the observed market."""
        n = len(self.symbols)
        calls, targets = [], []
        for member in self.members:
            member_calls, logits = member.act(market, t, weights)
            calls.append(member_calls)
            targets.append(member.limits.targets(logits, n))
        return self.combine(calls, targets)

    def decide(self, history: MarketData, weights: np.ndarray) -> Any:
        """The fold's `decision.Decision` after the close of ``history``'s last bar (``logits`` are
        the first member's; the targets are the mean)."""
        import dataclasses

        decisions = [m.decide(history, weights) for m in self.members]
        calls, targets = self.combine([d.calls for d in decisions], [d.target_weights for d in decisions])
        return dataclasses.replace(decisions[0], calls=calls, target_weights=targets)


def seed_dirs(fold_dir: Path, seeds: Sequence[int]) -> list[Path]:
    return [fold_dir / f"seed_{s}" for s in seeds]


def best_seed(fold_dir: Path, seeds: Sequence[int]) -> int:
    """The seed whose run scored best on the fold's validation range (ties: the first seed)."""
    scores = []
    for seed, run_dir in zip(seeds, seed_dirs(fold_dir, seeds), strict=True):
        done = json.loads((run_dir / DONE_FILE).read_text())
        score = done["best_validation_score"]
        scores.append((-math.inf if score is None or not math.isfinite(score) else score, -seed, seed))
    return max(scores)[2]


def load_fold_policy(fold_dir: str | Path) -> Any:
    """The decision rule of a finished fold (``saved_models/<ID>/fold_<k>/``): its seeds' runs loaded
    with `decision.load_policy` and combined as its fold.json says (mean, or the best on validation)."""
    import decision

    fold_dir = Path(fold_dir)
    info = json.loads((fold_dir / "fold.json").read_text())
    seeds = info["seeds"] if info["combine"] == "mean" else [info["selected_seed"]]
    return EnsemblePolicy([decision.load_policy(d) for d in seed_dirs(fold_dir, seeds)])


# ----------------------------------------------------------------------------------------------
# Backtest: test segments chained into one account
# ----------------------------------------------------------------------------------------------


def segment_bounds(data: MarketData, fold: Fold) -> tuple[int, int]:
    """[first, stop) bar indices of the fold's test segment in ``data``."""
    first = int(np.searchsorted(data.open_time_ms, fold.test_start_ms, "left"))
    stop = int(np.searchsorted(data.open_time_ms, fold.test_end_ms, "left"))
    if stop - first < 1:
        raise ConfigError(f"{fold.name}: its test range holds no bars of the data; change the fold plan")
    return first, stop


def play_fold(policy: Any, data: MarketData, fold: Fold, portfolio: Any, name: str = "agent") -> Any:
    """Trade ``portfolio`` (carried in, left as it ends) through the fold's test segment with the
    decision core's loop (`decision.play_policy`) on warm history.

    The first decision follows the close of the bar before the segment and fills at the segment's
    first open. Returns the loop's `backtest.BacktestRecord`: the bar before the segment (untraded
    by this fold; its calls are this fold's first decision), then one row per test bar."""
    import decision

    first, stop = segment_bounds(data, fold)
    if first < 1:
        raise ConfigError(f"{fold.name}: no bar before its test segment to decide at; start the folds later")
    market, before = decision.warm_range(data, int(data.open_time_ms[first - 1]), fold.test_end_ms,
                                         int(policy.history_bars), f"{fold.name}'s test segment")  # fmt: skip
    record = decision.play_policy(policy, market, before, portfolio, name=name)
    if len(record.equity) != stop - first + 1:
        raise RuntimeError(f"{fold.name}: the account was ruined during the test segment "
                           f"(env.ruin_fraction); the stitched curve would stop there")  # fmt: skip
    return record


def drop_first_row(record: Any) -> Any:
    """``record`` without its first row (the bar the first decision follows)."""
    import dataclasses

    fields = ("open_time_ms", "equity", "weights_before", "weights_after", "fees", "pnl")
    trimmed = {f: getattr(record, f)[1:] for f in fields}
    calls = None if record.calls is None else record.calls[1:]
    return dataclasses.replace(record, calls=calls, **trimmed)


def concat_records(name: str, parts: Sequence[Any]) -> Any:
    """Records of consecutive segments as one (`performance.BacktestRecord`)."""
    from backtest import BacktestRecord

    calls = None
    if all(p.calls is not None for p in parts):
        calls = np.concatenate([p.calls for p in parts])
    return BacktestRecord(
        name=name,
        symbols=list(parts[0].symbols),
        open_time_ms=np.concatenate([p.open_time_ms for p in parts]),
        equity=np.concatenate([p.equity for p in parts]),
        weights_before=np.concatenate([p.weights_before for p in parts]),
        weights_after=np.concatenate([p.weights_after for p in parts]),
        fees=np.concatenate([p.fees for p in parts]),
        pnl=np.concatenate([p.pnl for p in parts]),
        calls=calls,
    )


def stitched_market(data: MarketData, plan: Sequence[Fold]) -> tuple[MarketData, list[int]]:
    """The bar before the first test bar, then every fold's test bars, as one MarketData (what the
    benchmarks trade), and the row where each fold's segment starts in it."""
    bounds = [segment_bounds(data, f) for f in plan]
    if bounds[0][0] < 1:
        raise ConfigError("the data has no bar before the first test bar; start folds.test_start later")
    rows = np.concatenate([[bounds[0][0] - 1], *[np.arange(a, b) for a, b in bounds]])
    starts = list(np.cumsum([1] + [b - a for a, b in bounds[:-1]]))
    market = MarketData(
        symbols=list(data.symbols), timeframe=data.timeframe, open_time_ms=data.open_time_ms[rows],
        open=data.open[rows], high=data.high[rows], low=data.low[rows], close=data.close[rows],
        volume=data.volume[rows], features=data.features[rows], feature_names=list(data.feature_names),
        meta=dict(data.meta),
    )  # fmt: skip
    return market, [int(s) for s in starts]


@dataclass
class ChainResult:
    """The stitched agent curve and where each fold's account ended."""

    record: Any  # performance.BacktestRecord over the stitched bars (start row first)
    fold_rows: list[int]  # row of each fold's first test bar in ``record``
    end_states: list[dict[str, Any]]  # per fold: cash and quantities after its last bar


def portfolio_state(portfolio: Any) -> dict[str, Any]:
    return {"cash": float(portfolio.cash), "qty": [float(q) for q in portfolio.qty]}


def chain_folds(
    policies: Sequence[Any],
    data: MarketData,
    plan: Sequence[Fold],
    portfolio_cfg: Mapping[str, Any],
    name: str = "agent",
) -> ChainResult:
    """Play every fold's test segment with its policy on ONE portfolio (capital and positions carried
    over) and stitch the records: fold 0's whole record (its first row, the bar before the first
    test bar, is the common start: the untouched initial capital), then each later fold's test rows.
    The bar a fold's segment ends on is where the next fold decides first: its calls are that fold's."""
    from backtest import make_portfolio

    portfolio = make_portfolio(data.symbols, portfolio_cfg)
    parts: list[Any] = []
    rows, states = [], []
    for policy, fold in zip(policies, plan, strict=True):
        record = play_fold(policy, data, fold, portfolio, name=name)
        if parts:
            if parts[-1].calls is not None and record.calls is not None:
                parts[-1].calls[-1] = record.calls[0]
            record = drop_first_row(record)
            rows.append(sum(len(p.equity) for p in parts))
        else:
            rows.append(1)
        parts.append(record)
        states.append(portfolio_state(portfolio))
    return ChainResult(concat_records(name, parts), rows, states)


# ----------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------


def interval_key(name: str, confidence: float) -> str:
    """``sharpe_ci`` at 0.95 -> ``sharpe_ci_95``."""
    return f"{name}_{round(100 * confidence):d}"


def _pair(interval: tuple[float, float]) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in interval]


def curve_statistics(
    records: Mapping[str, Any],
    periods: float,
    stats_cfg: Mapping[str, Any],
    n_trials: int,
    trials_sharpe_variance: float,
) -> dict[str, Any]:
    """metrics.json's body: per curve the usual metrics + the Sharpe interval; per benchmark the
    interval of Sharpe(agent) - Sharpe(benchmark); the agent's probabilistic and deflated Sharpe."""
    import significance

    agent = metrics.simple_returns(records["agent"].equity)
    out = {name: curve_row(rec, None if name == "agent" else agent, periods, stats_cfg)
           for name, rec in records.items()}  # fmt: skip
    out["agent"]["probabilistic_sharpe"] = _finite(significance.probabilistic_sharpe_ratio(agent))
    out["agent"]["deflated_sharpe"] = _finite(
        significance.deflated_sharpe_ratio(agent, n_trials, trials_sharpe_variance)
    )
    out["agent"]["n_trials"] = int(n_trials)
    out["agent"]["trials_sharpe_variance"] = float(trials_sharpe_variance)
    return out


def curve_row(
    record: Any, agent_returns: np.ndarray | None, periods: float, stats_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """One curve's metrics, log growth and Sharpe interval; with ``agent_returns`` (same bars) also
    the interval of Sharpe(agent) - Sharpe(this curve), resampled in pairs."""
    import significance

    level = float(stats_cfg["confidence"])
    boot = dict(level=level, n_boot=int(stats_cfg["bootstrap_samples"]), mean_block=stats_cfg["block_bars"],
                seed=int(stats_cfg["seed"]))  # fmt: skip
    returns = metrics.simple_returns(record.equity)
    row = {k: (float(v) if math.isfinite(v) else None) for k, v in record.metrics(periods).items()}
    row["log_growth"] = float(np.log(record.equity[-1] / record.equity[0]))
    row[interval_key("sharpe_ci", level)] = _pair(
        significance.stationary_bootstrap_sharpe_ci(returns, periods, **boot)
    )
    if agent_returns is not None:
        row[interval_key("sharpe_diff_ci", level)] = _pair(
            significance.sharpe_diff_ci(agent_returns, returns, periods, **boot)
        )
    return row


def exposure_matched_mix(market: MarketData, invested: float, portfolio_cfg: Mapping[str, Any]) -> Any:
    """A DIAGNOSTIC, not a benchmark: ``invested`` (the agent's own average exposure) in equal weight
    across the pairs and the rest in cash, rebalanced every bar, on the same bars and costs. It is
    chosen after seeing the agent, so it answers one question only: is the agent's result more than
    its average cash share? An agent that times the market or picks pairs beats it; one that holds a
    near-static mix matches it (its smaller drawdown than the fully invested benchmarks is then the
    cash, not a forecast)."""
    from backtest import simulate_targets

    n = market.n_pairs
    mix = np.concatenate((np.full(n, invested / n), [1.0 - invested]))
    return simulate_targets("exposure_matched_mix", market, np.tile(mix, (market.n_bars, 1)), portfolio_cfg)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def trials_variance(trial_records: Sequence[Any], n_returns: int) -> float:
    """Variance of the trials' PER-PERIOD Sharpe ratios (deflated Sharpe's V): across the seeds'
    own stitched curves when there are several; with one, the estimator's variance under the null
    of no skill, 1 / (n - 1) (Lo 2002's asymptotic variance of a Sharpe ratio of 0)."""
    sharpes = [metrics.sharpe(metrics.simple_returns(r.equity), 1.0) for r in trial_records]
    sharpes = [s for s in sharpes if math.isfinite(s)]
    if len(sharpes) >= 2:
        return float(np.var(sharpes, ddof=1))
    return 1.0 / max(n_returns - 1, 1)


def fold_table(
    plan: Sequence[Fold],
    records: Mapping[str, Any],
    fold_rows: Sequence[int],
    periods: float,
    fold_info: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """One row per fold: ranges, seeds, validation scores, and each curve's metrics on the fold's
    test bars (its curve from the close before the segment, so fold returns chain exactly)."""
    rows = []
    bounds = [*fold_rows[1:], len(next(iter(records.values())).equity)]
    for fold, lo, hi, info in zip(plan, fold_rows, bounds, fold_info, strict=True):
        dates = {k: v for k, v in fold.as_row().items() if not k.endswith("_ms") and k != "index"}
        row: dict[str, Any] = {"fold": fold.index, **dates,
                               "test_bars": hi - lo, **info}  # fmt: skip
        for name, rec in records.items():
            equity = rec.equity[lo - 1 : hi]
            r = metrics.simple_returns(equity)
            row[f"{name}_total_return"] = metrics.total_return(r)
            row[f"{name}_sharpe"] = metrics.sharpe(r, periods)
            row[f"{name}_max_drawdown"] = metrics.max_drawdown(r)
        rows.append(row)
    return rows


def beat_shares(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """Share of folds whose test return of the agent exceeds each benchmark's."""
    return {
        name: float(np.mean([r["agent_total_return"] > r[f"{name}_total_return"] for r in rows]))
        for name in names
        if name != "agent"
    }


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    text = json.dumps(payload, indent=2, default=_json_default, allow_nan=False)
    tmp.write_text(text + "\n")
    tmp.replace(path)


def write_folds_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in row.items()}
            )


def _plot_stitched(
    path: Path, records: Mapping[str, Any], fold_rows: Sequence[int], plan: Sequence[Fold]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lead = records["agent"]
    dates = np.asarray(lead.open_time_ms, dtype="datetime64[ms]")
    fig, (ax, ax_dd) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    for name, rec in records.items():
        width = 1.6 if name == "agent" else 1.0
        ax.plot(dates, rec.equity, lw=width, label=name)
        dd = np.concatenate(([0.0], metrics.drawdown_series(metrics.simple_returns(rec.equity))))
        ax_dd.plot(dates, 100 * dd, lw=width, label=name)
    for row, fold in zip(fold_rows, plan, strict=True):
        for axis in (ax, ax_dd):
            axis.axvline(dates[row], color="0.5", lw=0.7, ls="--")
        ax.annotate(
            str(fold.index),
            (dates[row], 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            va="top",
            ha="left",
            color="0.3",
        )
    ax.set_yscale("log")
    ax.set_ylabel("portfolio value (log scale)")
    ax.set_title("Stitched out-of-sample equity (dashed lines: fold boundaries, numbered by fold)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax_dd.set_ylabel("drawdown (%)")
    ax_dd.grid(True, alpha=0.3)
    fig.autofmt_xdate()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def write_report(
    out_dir: Path,
    title: str,
    summary: Mapping[str, Any],
    records: Mapping[str, Any],
    fold_rows_table: Sequence[Mapping[str, Any]],
    fold_rows: Sequence[int],
    plan: Sequence[Fold],
) -> None:
    """report.html: the stitched curves with fold boundaries, the intervals, the per-fold table."""
    import html

    from performance import format_value

    _plot_stitched(out_dir / "stitched.png", records, fold_rows, plan)
    level = float(summary["confidence"])
    ci, diff = interval_key("sharpe_ci", level), interval_key("sharpe_diff_ci", level)
    curves = summary["curves"]

    def fmt(metric: str, value: Any) -> str:
        return "n/a" if value is None else format_value(metric, float(value))

    def interval(pair: Sequence[float | None] | None) -> str:
        if not pair or pair[0] is None:
            return "n/a"
        return f"[{pair[0]:.2f}, {pair[1]:.2f}]"

    head = (
        "<tr><th>curve</th><th>log growth</th><th>total return</th><th>Sharpe</th>"
        f"<th>Sharpe {round(100 * level)}% CI</th><th>Sharpe diff (agent - this) CI</th><th>max drawdown</th>"
        "<th>turnover</th><th>folds the agent beats it</th></tr>"
    )
    body = []
    for name, row in curves.items():
        share = summary["agent_beats_share"].get(name)
        body.append(
            f"<tr><th>{html.escape(name)}</th><td>{row['log_growth']:.3f}</td>"
            f"<td>{fmt('total_return', row['total_return'])}</td><td>{fmt('sharpe', row['sharpe'])}</td>"
            f"<td>{interval(row[ci])}</td><td>{interval(row.get(diff))}</td>"
            f"<td>{fmt('max_drawdown', row['max_drawdown'])}</td><td>{fmt('turnover', row['turnover'])}</td>"
            f"<td>{'' if share is None else f'{100 * share:.0f}%'}</td></tr>"
        )
    agent = curves["agent"]
    cols = [
        "fold",
        "train_start",
        "validation_start",
        "test_start",
        "test_end",
        "test_bars",
        "seeds",
        "decision",
    ]
    names = list(records)
    fold_head = "".join(f"<th>{c}</th>" for c in cols) + "".join(
        f"<th>{html.escape(n)} return</th><th>{html.escape(n)} Sharpe</th>" for n in names
    )
    fold_body = []
    for r in fold_rows_table:
        cells = "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols)
        cells += "".join(
            f"<td>{format_value('total_return', r[f'{n}_total_return'])}</td>"
            f"<td>{format_value('sharpe', r[f'{n}_sharpe'])}</td>"
            for n in names
        )
        fold_body.append(f"<tr>{cells}</tr>")
    warm = ", each fold's runs starting from the previous fold's weights (warm start)" if summary.get(
        "warm_start") else ", every run from random weights"  # fmt: skip
    mix = summary.get("exposure_matched_mix")
    mix_note = "" if mix is None else (
        f"<p><b>Diagnostic, not a benchmark</b>: {100 * mix['invested']:.0f}% invested (the agent's own "
        f"average exposure) in equal weight, the rest in cash, rebalanced every bar with the same costs: "
        f"log growth {mix['log_growth']:.3f}, Sharpe {fmt('sharpe', mix['sharpe'])} "
        f"{interval(mix[ci])}, maximum drawdown {fmt('max_drawdown', mix['max_drawdown'])}; Sharpe "
        f"difference agent &minus; mix {interval(mix[diff])}. Chosen after seeing the agent, it asks one "
        f"question: is the agent's result more than its cash share?</p>"
    )  # fmt: skip
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1300px}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{len(plan)} folds ({html.escape(summary["mode"])}), seeds {html.escape(str(summary["seeds"]))} combined by
<b>{html.escape(summary["combine"])}</b>{warm}; out-of-sample {html.escape(summary["test_start"])} ..
{html.escape(summary["test_end"])} UTC, {summary["bars"]} bars of {len(records["agent"].symbols)} pairs
({html.escape(", ".join(records["agent"].symbols))});
fees and execution identical for every curve ({html.escape(str(summary["portfolio"]))}).</p>
<img src="stitched.png" alt="stitched equity">
<p>The full tearsheet of these stitched curves (rolling and yearly figures, drawdown table, costs):
<a href="tearsheet/report.html">tearsheet/report.html</a>.</p>
<h2>Stitched out-of-sample curves</h2>
<table>{head}{"".join(body)}</table>
<p>Agent: probabilistic Sharpe ratio {fmt("sharpe", agent["probabilistic_sharpe"])} (P[true Sharpe &gt; 0]);
deflated Sharpe ratio {fmt("sharpe", agent["deflated_sharpe"])} over <b>n_trials = {agent["n_trials"]}</b>
(configurations tried &times; seeds). Intervals: stationary bootstrap ({summary["bootstrap_samples"]} draws,
percentile, paired for differences), {round(100 * level)}% two-sided. An interval that contains 0 is no
evidence of a difference.</p>
{mix_note}
<h2>Per fold</h2>
<table><tr>{fold_head}</tr>{"".join(fold_body)}</table>
</body></html>
"""
    (out_dir / "report.html").write_text(page)


# ----------------------------------------------------------------------------------------------
# The whole walk-forward
# ----------------------------------------------------------------------------------------------


@dataclass
class WalkForwardResult:
    paths: WalkForwardPaths
    summary: dict[str, Any]  # metrics.json
    records: dict[str, Any]  # stitched curves: agent first, then the benchmarks
    fold_rows: list[dict[str, Any]]  # folds.csv
    seconds: float


def prepare(cfg: Mapping[str, Any], paths: WalkForwardPaths, resume: bool) -> None:
    """Create the output folders and save the config; refuse to overwrite or to resume a different plan."""
    saved = paths.out_dir / "config.yaml"
    if resume:
        if not saved.exists():
            raise ConfigError(f"--resume: {paths.out_dir} holds no walk-forward to resume (no config.yaml)")
        old = yaml.safe_load(saved.read_text())
        for key in ("data", "folds", "seeds", "warm_start", "train_config", "train", "train_overrides"):
            if old.get(key) != cfg.get(key):
                raise ConfigError(
                    f"--resume: {key} differs from the saved walk-forward's; resume with the saved "
                    f"config (no --config) or start another --run-id"
                )
    elif saved.exists() or paths.saved_dir.exists():
        raise ConfigError(
            f"{paths.out_dir} or {paths.saved_dir} already holds a walk-forward; pass --resume "
            "or pick another --run-id"
        )
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    paths.saved_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))


def write_fold_info(paths: WalkForwardPaths, fold: Fold, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """fold.json: the fold's ranges, seeds, their validation scores, the combine rule and the runs
    each seed's training started from (warm start; null: random weights)."""
    seeds = list(cfg["seeds"]["values"])
    fold_dir = paths.fold_dir(fold)
    done = {str(s): json.loads((d / DONE_FILE).read_text()) for s, d in zip(seeds, seed_dirs(fold_dir, seeds),
                                                                             strict=True)}  # fmt: skip
    # JSON has no infinities: an undefined score (e.g. the Sharpe of a flat curve) is null.
    scores = {s: None if d["best_validation_score"] is None else _finite(d["best_validation_score"])
              for s, d in done.items()}  # fmt: skip
    info = {**fold.as_row(), "seeds": seeds, "combine": cfg["seeds"]["combine"],
            "selected_seed": best_seed(fold_dir, seeds), "validation_scores": scores,
            "warm_from": {s: d.get("warm_from") for s, d in done.items()}}  # fmt: skip
    write_json(fold_dir / "fold.json", info)
    return info


def run_walk_forward(
    cfg: Mapping[str, Any],
    paths: WalkForwardPaths,
    *,
    address: str | None = None,
    resume: bool = False,
    data: MarketData | None = None,
) -> WalkForwardResult:
    """Plan, train (Ray), backtest the chained test segments, compute the statistics, write the outputs."""
    from performance import portfolio_config, run_benchmarks

    started = time.monotonic()
    plan = folds_mod.plan_folds(cfg["folds"])
    train_cfg = training_config(cfg)
    data = load_data(cfg) if data is None else data
    folds_mod.check_coverage(plan, int(data.open_time_ms[0]), int(data.open_time_ms[-1]) + bar_ms(data))
    for fold in plan:
        fold_splits(data, fold)  # every range holds bars, before any training starts
    prepare(cfg, paths, resume)
    write_json(paths.out_dir / "plan.json", [f.as_row() for f in plan])
    print(
        f"walk-forward {paths.run_id}: {len(plan)} folds x {len(cfg['seeds']['values'])} seeds, "
        f"{data.n_pairs} pairs, test {format_ms(plan[0].test_start_ms)} .. "
        f"{format_ms(plan[-1].test_end_ms)}",
        flush=True,
    )

    units = make_units(cfg, plan, paths)
    run_units(units, data, paths.out_dir, address=address, max_concurrent=cfg["parallel"]["max_concurrent"])
    infos = [write_fold_info(paths, fold, cfg) for fold in plan]

    import torch

    # The networks are tiny and run one bar at a time: a second torch thread only spins against the
    # other processes (measured by performance.py on this machine: 4.5 ms instead of 25 us a layer).
    torch.set_num_threads(1)
    portfolio_cfg = portfolio_config(train_cfg)
    policies = [load_fold_policy(paths.fold_dir(fold)) for fold in plan]
    chain = chain_folds(policies, data, plan, portfolio_cfg)
    for fold, state, info in zip(plan, chain.end_states, infos, strict=True):
        write_json(paths.fold_dir(fold) / "fold.json", {**info, "end_state": state})
    market, rows = stitched_market(data, plan)
    if rows != chain.fold_rows:
        raise AssertionError(f"stitched rows {rows} != chained rows {chain.fold_rows}")
    records = {"agent": chain.record, **run_benchmarks(market, portfolio_cfg)}
    for name, rec in records.items():
        if not np.array_equal(rec.open_time_ms, market.open_time_ms):
            raise AssertionError(f"{name} does not trade the stitched bars")

    seeds = list(cfg["seeds"]["values"])
    trials = [chain.record]
    if len(seeds) > 1:  # each seed's own stitched curve: the trials behind the deflated Sharpe ratio
        import decision

        trials = [
            chain_folds(
                [EnsemblePolicy([decision.load_policy(paths.fold_dir(f) / f"seed_{s}")]) for f in plan],
                data,
                plan,
                portfolio_cfg,
                name=f"seed_{s}",
            ).record
            for s in seeds
        ]
    stats_cfg = cfg["statistics"]
    n_trials = int(stats_cfg["configurations_tried"]) * len(seeds)
    periods = metrics.periods_per_year(data.timeframe)
    variance = trials_variance(trials, len(chain.record.equity) - 1)
    curves = curve_statistics(records, periods, stats_cfg, n_trials, variance)
    invested = float(curves["agent"]["exposure"])
    mix = exposure_matched_mix(market, invested, portfolio_cfg)
    diagnostic = {"invested": invested, **curve_row(mix, metrics.simple_returns(chain.record.equity), periods,
                                                    stats_cfg)}  # fmt: skip
    fold_info = [{"seeds": " ".join(map(str, seeds)),
                  "decision": "mean" if cfg["seeds"]["combine"] == "mean" else f"seed {i['selected_seed']}",
                  "validation_scores": i["validation_scores"],
                  "warm_start": any(i["warm_from"].values())} for i in infos]  # fmt: skip
    table = fold_table(plan, records, chain.fold_rows, periods, fold_info)
    summary = {
        "run_id": paths.run_id,
        "periods_per_year": periods,
        "confidence": float(stats_cfg["confidence"]),
        "bootstrap_samples": int(stats_cfg["bootstrap_samples"]),
        "mode": cfg["folds"]["mode"],
        "folds": len(plan),
        "seeds": seeds,
        "combine": cfg["seeds"]["combine"],
        "warm_start": bool(cfg["warm_start"]),
        "n_trials": n_trials,
        "test_start": format_ms(plan[0].test_start_ms),
        "test_end": format_ms(plan[-1].test_end_ms),
        "bars": len(chain.record.equity) - 1,
        "portfolio": portfolio_cfg,
        "agent_beats_share": beat_shares(table, list(records)),
        "seed_curves": {
            r.name: float(np.log(r.equity[-1] / r.equity[0])) for r in trials if r.name != "agent"
        },
        "curves": curves,
        "exposure_matched_mix": diagnostic,
    }
    from performance import write_equity_csv

    write_json(paths.out_dir / "metrics.json", summary)
    write_folds_csv(paths.out_dir / "folds.csv", table)
    write_equity_csv(paths.out_dir / "equity.csv", records)
    write_report(
        paths.out_dir, f"Walk-forward {paths.run_id}", summary, records, table, chain.fold_rows, plan
    )
    write_tearsheet(paths.out_dir / "tearsheet", records, periods, market, cfg, portfolio_cfg, paths.run_id)
    return WalkForwardResult(paths, summary, records, table, time.monotonic() - started)


def write_tearsheet(
    out_dir: Path,
    records: Mapping[str, Any],
    periods: float,
    market: MarketData,
    cfg: Mapping[str, Any],
    portfolio_cfg: Mapping[str, Any],
    run_id: str,
) -> None:
    """The project's full tearsheet (tearsheet.py) of the stitched curves, beside report.html."""
    import market_data
    import tearsheet

    folds_note = f"{cfg['folds']['mode']}, seeds {cfg['seeds']['values']} ({cfg['seeds']['combine']})"
    notes = {"walk-forward": run_id, "folds": folds_note, "portfolio": dict(portfolio_cfg)}
    tearsheet.write(
        out_dir,
        records,
        periods,
        market.close,
        title=f"Walk-forward {run_id}: stitched out of sample",
        notes=notes,
        data_source=market_data.describe_source(dict(cfg["data"]["source"])),
        n_boot=int(cfg["statistics"]["bootstrap_samples"]),
    )


def format_summary(result: WalkForwardResult) -> str:
    """The console table: one line per curve."""
    s = result.summary
    ci, diff = interval_key("sharpe_ci", s["confidence"]), interval_key("sharpe_diff_ci", s["confidence"])
    lines = [
        f"{'curve':<26}{'log growth':>11}{'Sharpe':>8}{'Sharpe CI':>18}{'diff CI (agent-x)':>20}"
        f"{'max DD':>9}{'beaten':>8}"
    ]
    def pair(p: Any) -> str:
        return "" if not p or p[0] is None else f"[{p[0]:.2f}, {p[1]:.2f}]"

    for name, row in s["curves"].items():
        sharpe = row["sharpe"]
        share = s["agent_beats_share"].get(name)
        lines.append(
            f"{name:<26}{row['log_growth']:>11.3f}{'n/a' if sharpe is None else f'{sharpe:.2f}':>8}"
            f"{pair(row[ci]):>18}{pair(row.get(diff)):>20}{100 * row['max_drawdown']:>8.1f}%"
            f"{'' if share is None else f'{100 * share:.0f}%':>8}"
        )
    mix = s.get("exposure_matched_mix")
    if mix is not None:
        sharpe = "n/a" if mix["sharpe"] is None else f"{mix['sharpe']:.2f}"
        lines.append(
            f"{'exposure-matched mix':<26}{mix['log_growth']:>11.3f}{sharpe:>8}{pair(mix[ci]):>18}"
            f"{pair(mix[diff]):>20}{100 * mix['max_drawdown']:>8.1f}%   (diagnostic: "
            f"{100 * mix['invested']:.0f}% invested, the agent's average)"
        )
    agent = s["curves"]["agent"]
    lines.append(
        f"agent: probabilistic Sharpe {agent['probabilistic_sharpe']}, deflated Sharpe "
        f"{agent['deflated_sharpe']} (n_trials {agent['n_trials']}); {s['folds']} folds x "
        f"{len(s['seeds'])} seeds, {s['bars']} bars; {result.seconds:.0f} s"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML laid over configs/walk_forward.yaml")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one value, e.g. --set budget.iterations=10 or --set train.ppo.lr=1e-4",
    )
    parser.add_argument("--run-id", default=None, help="name of the walk-forward (default: wf-<UTC time>)")
    parser.add_argument(
        "--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the walk-forward --run-id: finished runs are kept, interrupted ones resume",
    )
    parser.add_argument("--saved-models", type=Path, default=SAVED_MODELS, help="root of saved runs")
    parser.add_argument("--logs", type=Path, default=LOGS, help="root of logs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.resume:
            if not args.run_id:
                raise ConfigError("--resume needs --run-id ID")
            paths = WalkForwardPaths.make(args.run_id, args.saved_models, args.logs)
            saved = paths.out_dir / "config.yaml"
            if not saved.exists():
                raise ConfigError(f"--resume: no walk-forward at {paths.out_dir}")
            cfg = load_config(args.config or saved, args.set)
        else:
            cfg = load_config(args.config, args.set)
            paths = WalkForwardPaths.make(args.run_id or default_run_id(), args.saved_models, args.logs)
        result = run_walk_forward(cfg, paths, address=args.address, resume=args.resume)
    except ConfigError as exc:
        print(f"walk_forward.py: config error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(result))
    print(
        f"outputs: {paths.out_dir} (report.html, metrics.json, folds.csv, equity.csv); "
        f"runs: {paths.saved_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
