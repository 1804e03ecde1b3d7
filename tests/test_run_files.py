"""run_files.py: a saved run is used only when its files and data are what training recorded.

Issue #15 items 4 (checkpoint bit rot), 6 (damaged run files) and 11 (data changed after training):
the unit tests build run directories by hand; the slow ones train a real one-iteration run on CSV
candles with ``Train.py`` and meet it through ``performance.py`` and ``Train.py --resume`` as
subprocesses, the way a user does.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import run_config
import run_files
import synthetic
from run_files import RunIntegrityError

ROOT = Path(__file__).resolve().parents[1]
META_STATE = "learner_group/learner/rl_module/meta/module_state.pkl"


def cli(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Unit: hand-made run directories
# ---------------------------------------------------------------------------------------------


def small_splits():
    data = synthetic.generate(n_pairs=2, n_bars=300, start="2020-01-01", seed=3)
    bounds = {"train": (0, 200), "validation": (200, 250), "test": (250, 300)}
    return data, {name: data.slice_bars(a, b) for name, (a, b) in bounds.items()}


def make_run(tmp_path: Path) -> Path:
    """A run directory as Train.py writes it: config, manifest, checkpoint with checksums."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = run_config.load_config(ROOT / "configs" / "smoke.yaml")
    _, parts = small_splits()
    run_files.write_run_start(run_dir, cfg, run_files.build_manifest(cfg, parts))

    class FakeAlgo:  # what _save_checkpoint needs of an RLlib Algorithm
        def save_to_path(self, path: str) -> None:
            state = Path(path) / "learner_group" / "learner" / "rl_module" / "meta"
            state.mkdir(parents=True)
            (state / "module_state.pkl").write_bytes(pickle.dumps({"w": np.arange(64, dtype=np.float32)}))
            (Path(path) / "rllib_checkpoint.json").write_text("{}")

    run_files._save_checkpoint(FakeAlgo(), run_dir / "checkpoint")
    return run_dir


def test_intact_run_reads_back(tmp_path):
    run_dir = make_run(tmp_path)
    cfg, manifest = run_files.read_run(run_dir)
    assert cfg["run"]["iterations"] == 2 and len(manifest["config_sha256"]) == 64
    sums = json.loads((run_dir / "checkpoint" / run_files.CHECKSUMS).read_text())
    assert sorted(sums) == [META_STATE, "rllib_checkpoint.json"]
    assert not (run_dir / "checkpoint.tmp").exists()


def flip_exponent_bits(path: Path, count: int = 8) -> None:
    """Flip the top exponent bit of ``count`` float32 weights inside a pickled state, in place."""
    raw = bytearray(path.read_bytes())
    state = pickle.loads(bytes(raw))
    weights = next(v for v in _arrays(state) if v.dtype == np.float32 and v.size >= count)
    offset = bytes(raw).find(np.ascontiguousarray(weights).tobytes())
    assert offset >= 0, "weights not stored contiguously in the pickle"
    for i in range(count):
        raw[offset + 4 * i + 3] ^= 0x40  # little-endian float32: bit 30 is the exponent's top bit
    path.write_bytes(bytes(raw))


def _arrays(node):
    if isinstance(node, np.ndarray):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _arrays(value)


def test_bit_rot_names_the_file(tmp_path):
    run_dir = make_run(tmp_path)
    flip_exponent_bits(run_dir / "checkpoint" / META_STATE)
    pickle.loads((run_dir / "checkpoint" / META_STATE).read_bytes())  # still loads: only a checksum sees it
    with pytest.raises(RunIntegrityError, match=rf"checkpoint/{META_STATE} changed \(sha256 differs"):
        run_files.verify_run(run_dir)


def test_missing_and_added_checkpoint_files_are_named(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "checkpoint" / "rllib_checkpoint.json").unlink()
    (run_dir / "checkpoint" / "extra.bin").write_bytes(b"x")
    with pytest.raises(RunIntegrityError, match=r"rllib_checkpoint.json is missing.*extra.bin was added"):
        run_files.verify_run(run_dir)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_text(""), r"config.yaml differs from the config.yaml written at training \(empty"),
        (lambda p: p.write_text("".join(p.read_text().splitlines(True)[:30])), "truncated, damaged"),
        (lambda p: p.write_text(p.read_text().replace("iterations: 2", "iterations: 3")), "edited"),
    ],
    ids=["empty", "truncated", "edited"],
)
def test_damaged_config_yaml_is_named(tmp_path, damage, message):
    run_dir = make_run(tmp_path)
    damage(run_dir / "config.yaml")
    with pytest.raises(RunIntegrityError, match=message):
        run_files.read_run(run_dir)


def test_config_of_a_run_without_checksum_is_still_checked(tmp_path):
    """Runs saved before config_sha256 existed: an empty or truncated config is named as such."""
    run_dir = make_run(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["config_sha256"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    config = run_dir / "config.yaml"
    lines = config.read_text().splitlines(True)
    config.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(RunIntegrityError, match=r"lacks \d+ key\(s\) such as .*truncated or damaged"):
        run_files.read_run(run_dir)
    config.write_text("")
    with pytest.raises(RunIntegrityError, match="config.yaml is empty"):
        run_files.read_run(run_dir)
    config.write_text("run: [1, 2\n")
    with pytest.raises(RunIntegrityError, match=r"cannot parse it\): line 2"):
        run_files.read_run(run_dir)


@pytest.mark.parametrize("content", ["", '{"symbols": [', "[1, 2]"], ids=["empty", "truncated", "list"])
def test_damaged_manifest_is_named(tmp_path, content):
    run_dir = make_run(tmp_path)
    (run_dir / "manifest.json").write_text(content)
    with pytest.raises(RunIntegrityError, match="manifest.json is (empty|damaged)"):
        run_files.read_run(run_dir)


def test_manifest_hashes_every_split_and_names_changes():
    data, parts = small_splits()
    cfg = run_config.load_config(ROOT / "configs" / "smoke.yaml")
    manifest = run_files.build_manifest(cfg, parts)
    for name, part in parts.items():
        assert manifest["splits"][name]["sha256"] == run_files.data_hash(part)
        assert set(manifest["splits"][name]["arrays_sha256"]) == set(run_files.ARRAYS)
        assert run_files.compare_split(manifest, name, part) == []
    # One price of the test split changed (a re-ingest that corrected a candle).
    changed = data.slice_bars(250, 300)
    changed.close[10, 1] *= 1.01
    assert run_files.compare_split(manifest, "test", changed) == ["values of close changed"]
    # A backfill that filled a hole: one more row, a different first bar.
    longer = data.slice_bars(249, 300)
    changes = run_files.compare_split(manifest, "test", longer)
    assert changes[0] == "rows 50 -> 51" and changes[1].startswith("first bar ")
    assert "values of open_time_ms, open, high, low, close, volume, features changed" in changes
    # A manifest from before split hashes: nothing to compare with, nothing refused.
    del manifest["splits"]["test"]["sha256"]
    assert run_files.compare_split(manifest, "test", changed) == []


# ---------------------------------------------------------------------------------------------
# Real run: Train.py, performance.py and --resume as subprocesses
# ---------------------------------------------------------------------------------------------


def write_candles(directory: Path, data) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, symbol in enumerate(data.symbols):
        lines = ["ts_ms,open,high,low,close,volume"]
        for t in range(data.n_bars):
            row = (data.open[t, i], data.high[t, i], data.low[t, i], data.close[t, i], data.volume[t, i])
            lines.append(f"{data.open_time_ms[t]}," + ",".join(repr(float(v)) for v in row))
        with gzip.open(directory / f"{symbol.replace('/', '_')}.csv.gz", "wt") as handle:
            handle.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A one-iteration run trained by Train.py on CSV candles (2 pairs, smoke.yaml's splits)."""
    work = tmp_path_factory.mktemp("csv_run")
    candles = work / "candles"
    write_candles(candles, synthetic.generate(n_pairs=2, n_bars=720, start="2020-01-01", seed=11))
    config = work / "run.yaml"
    smoke = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    smoke["data"]["source"] = {"kind": "csv", "path": str(candles), "symbols": None, "timeframe": "1h"}
    smoke["run"]["iterations"] = 1
    config.write_text(yaml.safe_dump(smoke))
    proc = cli("Train.py", "--config", str(config), "--run-id", "csv", "--saved-models", str(work / "saved"),
               "--logs", str(work / "logs"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work / "saved" / "csv", candles


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / run_dir.name
    shutil.copytree(run_dir, target)
    return target


@pytest.mark.slow
def test_backtest_refuses_bit_rot_in_real_checkpoint(csv_run, tmp_path):
    from ray.rllib.core.rl_module.rl_module import RLModule

    import decision

    run_dir = copy_run(csv_run[0], tmp_path)
    assert sorted(json.loads((run_dir / "checkpoint" / run_files.CHECKSUMS).read_text()))  # recorded
    flip_exponent_bits(run_dir / "checkpoint" / META_STATE)
    # Without the checksums the damage is silent: RLlib loads the module and it answers.
    RLModule.from_checkpoint(str((run_dir / "checkpoint" / META_STATE).parent.resolve()))
    with pytest.raises(RunIntegrityError, match=META_STATE):
        decision.load_policy(run_dir)
    proc = cli("performance.py", "--run", str(run_dir), "--out", str(tmp_path / "report"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"checkpoint/{META_STATE} changed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_resume_refuses_damaged_latest(csv_run, tmp_path):
    run_dir = copy_run(csv_run[0], tmp_path / "saved")
    flip_exponent_bits(run_dir / "latest" / META_STATE)
    proc = cli("Train.py", "--run-id", run_dir.name, "--resume", "--saved-models", str(run_dir.parent),
               "--logs", str(tmp_path / "logs"))  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"latest/{META_STATE} changed" in proc.stderr and not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_backtest_names_damaged_run_files(csv_run, tmp_path):
    run_dir = copy_run(csv_run[0], tmp_path)
    config = run_dir / "config.yaml"
    text = config.read_text()
    config.write_text("")
    proc = cli("performance.py", "--run", str(run_dir), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "config.yaml differs" in proc.stderr and "(empty;" in proc.stderr
    assert "TypeError" not in proc.stderr and "Traceback" not in proc.stderr
    config.write_text(text[: len(text) // 2])
    proc = cli("performance.py", "--run", str(run_dir), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "truncated, damaged or edited" in proc.stderr
    assert "incompatible version" not in proc.stderr


@pytest.mark.slow
def test_backtest_refuses_changed_data_unless_allowed(csv_run, tmp_path):
    run_dir, candles = csv_run
    path = candles / "SYN1_USDT.csv.gz"
    original = path.read_bytes()
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    test_start_ms = int(run_config.split_ranges_ms(run_files.read_run(run_dir)[0])["test"][0])
    inside = test_start_ms + 5 * 3_600_000
    row = next(i for i, line in enumerate(lines[1:], 1) if int(line.split(",")[0]) >= inside)
    fields = lines[row].split(",")
    fields[4] = repr(float(fields[4]) * 1.02)  # one corrected close inside the test split
    lines[row] = ",".join(fields)
    try:
        with gzip.open(path, "wt") as handle:
            handle.write("\n".join(lines) + "\n")
        proc = cli("performance.py", "--run", str(run_dir), "--out", str(tmp_path / "refused"))
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "the test split's data differs from what the run recorded at training" in proc.stderr
        assert "values of close" in proc.stderr and "--allow-data-change" in proc.stderr
        assert not (tmp_path / "refused").exists()
        # The validation split is untouched: it backtests without the flag.
        proc = cli("performance.py", "--run", str(run_dir), "--split", "validation", "--out", str(tmp_path))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = str(tmp_path / "o")
        proc = cli("performance.py", "--run", str(run_dir), "--allow-data-change", "--out", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "values of close" in (tmp_path / "o" / "report.html").read_text()
    finally:
        path.write_bytes(original)
