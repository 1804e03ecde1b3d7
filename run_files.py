"""A run's files: where they live, what the run was trained on, and whether that is still true.

Layout (``Train.py`` writes it, ``performance.py`` and ``decision.load_policy`` read it)::

    saved_models/<run_id>/config.yaml      resolved config
    saved_models/<run_id>/manifest.json    symbols, timeframe, features, source, per split: dates,
                                           rows, first/last bar, sha256 of its arrays (whole and per
                                           array); sha256 of config.yaml
    saved_models/<run_id>/checkpoint/      best checkpoint; checkpoint/checksums.json: sha256 of
    saved_models/<run_id>/latest/          every file in it (written before the checkpoint is moved
                                           into place, so the pair is atomic)

`verify_run` recomputes every checksum and raises `RunIntegrityError` naming each file that
changed (bit rot, an edit, a truncated copy); `read_run` also explains an empty, unparsable or
incomplete ``config.yaml``/``manifest.json``. `compare_split` names what differs between a split's
data now and at training time (rows, first/last bar, which arrays), so that a re-ingested or
backfilled database is never backtested silently.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import market_data
from market_data import MarketData
from settings import PROJECT_ROOT, ConfigError, format_ms, yaml_problem

log = logging.getLogger("run_files")

SAVED_MODELS = PROJECT_ROOT / "saved_models"
LOGS = PROJECT_ROOT / "logs"
CHECKSUMS = "checksums.json"  # inside each checkpoint directory
CHECKPOINT_DIRS = ("checkpoint", "latest")
LOAD_FILES = ("config.yaml", "manifest.json", "checkpoint")  # what loading a policy needs
RESUME_FILES = ("config.yaml", "manifest.json", "latest")  # what --resume needs
# The arrays a split's hash covers, in hashing order (MarketData attribute names).
ARRAYS = ("open_time_ms", "open", "high", "low", "close", "volume", "features")
_CHUNK = 1 << 20


class RunIntegrityError(ConfigError):
    """A saved run's files are damaged or differ from what training recorded; the message names them."""


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


# ----------------------------------------------------------------------------------------------
# Hashes
# ----------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def array_hashes(data: MarketData) -> dict[str, str]:
    """sha256 of each array of `ARRAYS` (so a change can be named: prices, times or features)."""
    return {name: _array_sha256(getattr(data, name)) for name in ARRAYS}


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def data_hash(data: MarketData) -> str:
    """sha256 over the arrays the agents learn from (times, OHLCV, features), in a fixed order."""
    digest = hashlib.sha256()
    for name in ARRAYS:
        digest.update(np.ascontiguousarray(getattr(data, name)).tobytes())
    digest.update(json.dumps([data.symbols, data.timeframe, data.feature_names]).encode())
    return digest.hexdigest()


def build_manifest(cfg: Mapping[str, Any], splits: Any) -> dict[str, Any]:
    """What the run was trained on (``splits[name]`` is each split's `MarketData`)."""
    from run_config import SPLITS

    train = splits["train"]
    out: dict[str, Any] = {
        "symbols": list(train.symbols),
        "timeframe": train.timeframe,
        "feature_names": list(train.feature_names),
        "source": cfg["data"]["source"],
        "data_source": market_data.describe_source(cfg["data"]["source"]),
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
            "sha256": data_hash(part),
            "arrays_sha256": array_hashes(part),
        }
    return out


def compare_split(manifest: Mapping[str, Any], split: str, data: MarketData) -> list[str]:
    """What differs between ``data`` (the bars of ``split`` now) and the manifest's record of it.

    Empty when they agree, or when the manifest predates split hashes (nothing to compare with).
    """
    record = (manifest.get("splits") or {}).get(split) or {}
    if "sha256" not in record or data_hash(data) == record["sha256"]:
        return []
    changes = []
    if data.n_bars != record.get("rows"):
        changes.append(f"rows {record.get('rows')} -> {data.n_bars}")
    if data.n_bars:
        ends = {"first": data.open_time_ms[0], "last": data.open_time_ms[-1]}
        for end, now in ends.items():
            then = record.get(f"{end}_open_time_ms")
            if int(now) != then:
                changes.append(f"{end} bar {format_ms(then)} -> {format_ms(now)}")
    before = record.get("arrays_sha256") or {}
    differ = [name for name, sha in array_hashes(data).items() if before.get(name) not in (None, sha)]
    if differ:
        changes.append("values of " + ", ".join(differ) + " changed")
    return changes or ["symbols, timeframe or feature names changed"]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)


def _write_text(path: Path, content: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)


def write_run_start(run_dir: Path, cfg: Mapping[str, Any], manifest: dict[str, Any]) -> None:
    """config.yaml, then manifest.json with config.yaml's sha256 (each written atomically)."""
    content = yaml.safe_dump(dict(cfg), sort_keys=False)
    _write_text(run_dir / "config.yaml", content)
    manifest["config_sha256"] = hashlib.sha256(content.encode()).hexdigest()
    _write_json(run_dir / "manifest.json", manifest)


def checkpoint_checksums(directory: Path) -> dict[str, str]:
    """{path relative to ``directory``: sha256} of every file in it but the checksum file itself."""
    return {
        path.relative_to(directory).as_posix(): file_sha256(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != CHECKSUMS
    }


def _save_checkpoint(algo: Any, target: Path) -> None:
    """Write to a sibling dir first so a crash never leaves a half-written checkpoint in place; the
    checksums are written inside it before the move, so checkpoint and checksums are one unit."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    algo.save_to_path(str(tmp.resolve()))
    _write_json(tmp / CHECKSUMS, checkpoint_checksums(tmp))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)


# ----------------------------------------------------------------------------------------------
# Reading and verifying
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    raw = path.read_text()
    if not raw.strip():
        raise RunIntegrityError(f"{path} is empty: the run's files are damaged (re-train, or restore a copy)")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RunIntegrityError(f"{path} is damaged (truncated or edited): {exc}") from None
    if not isinstance(data, dict):
        raise RunIntegrityError(f"{path} is damaged: it holds {type(data).__name__}, not a mapping")
    return data


def _read_config(path: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    raw = path.read_bytes()
    expected = manifest.get("config_sha256")
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        size = "empty" if not raw.strip() else f"{len(raw)} bytes"
        raise RunIntegrityError(
            f"{path} differs from the config.yaml written at training ({size}; sha256 differs): it was "
            "truncated, damaged or edited. Restore it from a copy or re-train; to change settings, "
            "train a new run"
        )
    if not raw.strip():
        raise RunIntegrityError(f"{path} is empty: the run's files are damaged (re-train, or restore a copy)")
    try:
        cfg = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as exc:
        raise RunIntegrityError(f"{path} is damaged (cannot parse it): {yaml_problem(exc)}") from None
    if not isinstance(cfg, dict):
        raise RunIntegrityError(f"{path} is damaged: it holds {type(cfg).__name__}, not a mapping")
    from run_config import SCHEMA

    missing = [key for key in SCHEMA if not _has_path(cfg, key)]
    if missing:
        raise RunIntegrityError(
            f"{path} lacks {len(missing)} key(s) such as {missing[:5]}: it is truncated or damaged, or it "
            "was saved by another version of Train.py (re-train the run with this version)"
        )
    return cfg


def _has_path(cfg: Mapping[str, Any], dotted: str) -> bool:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False
        node = node[key]
    return True


def verify_checkpoints(run_dir: Path) -> None:
    """Recompute the sha256 of every file of checkpoint/ and latest/ against their checksums.json."""
    problems = []
    for name in CHECKPOINT_DIRS:
        directory = run_dir / name
        if not directory.is_dir():
            continue
        if not (directory / CHECKSUMS).exists():
            log.warning("%s has no %s (saved before checksums were kept): not verified", directory, CHECKSUMS)
            continue
        recorded = _read_json(directory / CHECKSUMS)
        now = checkpoint_checksums(directory)
        for rel, sha in recorded.items():
            if rel not in now:
                problems.append(f"{name}/{rel} is missing")
            elif now[rel] != sha:
                problems.append(f"{name}/{rel} changed (sha256 differs from the one recorded at save)")
        problems.extend(f"{name}/{rel} was added after the save" for rel in now if rel not in recorded)
    if problems:
        raise RunIntegrityError(
            f"the checkpoint files of {run_dir} are corrupt or were modified: " + "; ".join(problems)
            + ". Restore the run from a copy or re-train it"
        )


def verify_run(run_dir: str | Path, required: tuple[str, ...] = LOAD_FILES) -> None:
    """Check every file of a saved run against what training recorded; `RunIntegrityError` names each
    damaged or changed file (manifest.json, config.yaml, checkpoint files)."""
    read_run(run_dir, required)


def read_run(
    run_dir: str | Path, required: tuple[str, ...] = LOAD_FILES
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, manifest) of a saved run, after `verify_checkpoints`; clear errors for damaged files.

    FileNotFoundError when a file of ``required`` is missing (not a saved run), `RunIntegrityError`
    when one is damaged or changed.
    """
    run_dir = Path(run_dir)
    for name in required:
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a saved run: {name} is missing")
    manifest = _read_json(run_dir / "manifest.json")
    cfg = _read_config(run_dir / "config.yaml", manifest)
    verify_checkpoints(run_dir)
    return cfg, manifest
