"""Train.py: config validation, a smoke run that performance.py can load, resume, and a Ray cluster.

The training tests run the real CLI in a subprocess (real RLlib, real Ray) on configs/smoke.yaml.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _ports import free_port

import backtest
import decision
import Train
import training
from settings import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))


def run_cli(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [PYTHON, str(ROOT / "Train.py"), *args, "--saved-models", str(tmp_path / "saved"),
           "--logs", str(tmp_path / "logs")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ---------------------------------------------------------------------------------------------
# Configuration errors (no Ray)
# ---------------------------------------------------------------------------------------------


def write_yaml(path: Path, payload: dict) -> Path:
    path.write_text(yaml.safe_dump(payload))
    return path


def test_smoke_config_resolves():
    cfg = Train.load_config(ROOT / "configs" / "smoke.yaml", ["ppo.lr=1e-4", "model.meta_hiddens=[8, 8]"])
    assert cfg["ppo"]["lr"] == pytest.approx(1e-4)
    assert cfg["model"]["meta_hiddens"] == [8, 8]
    assert cfg["run"]["iterations"] == 2  # from smoke.yaml
    assert cfg["ppo"]["gamma"] == 0.5  # default from train.yaml


@pytest.mark.parametrize(
    ("payload", "overrides", "message"),
    [
        ({"ppo": {"learning_rate": 1e-3}}, [], "learning_rate"),
        ({"bogus": 1}, [], "bogus"),
        ({}, ["ppo.lrr=1"], "lrr"),
        ({}, ["ppo.lr"], "KEY=VALUE"),
        ({"data": {"splits": {"train": {"start": "2020-13-01", "end": "2021-01-01"}}}}, [], "not a date"),
        ({"data": {"splits": {"train": {"start": "2021-01-01", "end": "2020-01-01"}}}}, [], "before end"),
        ({"data": {"splits": {"validation": {"start": "2020-06-01", "end": "2021-04-01"}}}}, [], "overlap"),
        ({"data": {"splits": {"test": {"start": "2020-12-01", "end": "2021-07-01"}}}}, [], "overlap"),
        ({"ppo": {"gamma": 1.5}}, [], "gamma"),
        ({"ppo": {"train_batch_size": 0}}, [], "train_batch_size"),
        ({"validation": {"metric": "profit"}}, [], "validation.metric"),
        ({"model": {"meta_hiddens": []}}, [], "meta_hiddens"),
        ({"model": {"meta_log_std_clip": 0}}, [], "meta_log_std_clip"),
        ({"model": {"meta_network": "transformer"}}, [], "meta_network"),
        ({"resources": {"env_infos": "yes"}}, [], "env_infos"),
        ({"model": {"meta_log_std_init": -2.0, "meta_log_std_clip": 1.0}}, [], "outside"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, payload, overrides, message):
    path = write_yaml(tmp_path / "bad.yaml", payload)
    with pytest.raises(ConfigError, match=message):
        Train.load_config(path, overrides)


def test_empty_split_is_a_clear_error(tmp_path):
    cfg = Train.load_config(ROOT / "configs" / "smoke.yaml")
    cfg = Train.set_path(cfg, "data.splits.test", {"start": "2035-01-01", "end": "2035-02-01"})
    with pytest.raises(ConfigError, match=r"split test holds no bars.*covers 2020-01-01"):
        training.load_splits(cfg)


def test_cli_reports_config_errors(tmp_path, capsys):
    code = Train.main(["--config", "configs/smoke.yaml", "--set", "ppo.nope=1", "--saved-models",
                       str(tmp_path), "--logs", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
    assert Train.main(["--run-id", "missing", "--resume", "--saved-models", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------
# Training (real RLlib)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_is_loadable_and_resumes(tmp_path):
    run_cli(tmp_path, "--config", "configs/smoke.yaml", "--run-id", "smoke")
    run_dir, log_dir = tmp_path / "saved" / "smoke", tmp_path / "logs" / "smoke"
    for name in ("config.yaml", "manifest.json", "metrics.json", "state.json", "checkpoint", "latest"):
        assert (run_dir / name).exists(), name
    assert (log_dir / "progress.log").read_text().count("agent-steps/s") == 2
    assert list((log_dir / "tensorboard").glob("events.*"))
    assert (log_dir / "ray").exists()  # Ray's own session logs stay with the run

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] > 0 and len(manifest["train_hash"]) == 64
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["iterations"] == 2 and final["best_iteration"] in (1, 2)

    # What performance.py does: load the run (no Ray) and play the deterministic policy on the test
    # split, warm from the bars before it; the policy acts as RLlib's own modules do.
    policy = decision.load_policy(run_dir)
    cfg, manifest2 = decision.load_run_files(run_dir)
    assert manifest2 == manifest
    splits = training.load_splits(cfg)
    assert Train.data_hash(splits.train) == manifest["train_hash"]
    assert_actions_match_rllib(run_dir, policy, splits)
    market, first_bar = splits.warm("test", policy.history_bars)
    records = [decision.play_policy(policy, market, first_bar) for _ in range(2)]
    assert len(records[0].equity) == splits.test.n_bars
    assert np.all(np.isfinite(records[0].equity))
    np.testing.assert_array_equal(records[0].equity, records[1].equity)  # deterministic

    # Resume: continues from iteration 2 to 3, keeps the log and the run's identity.
    run_cli(tmp_path, "--run-id", "smoke", "--resume", "--set", "run.iterations=3")
    state = json.loads((run_dir / "state.json").read_text())
    assert state["iteration"] == 3
    assert "resuming at iteration 2" in (log_dir / "progress.log").read_text()
    rows = (log_dir / "progress.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]
    assert json.loads((run_dir / "metrics.json").read_text())["iterations"] == 3


@pytest.mark.slow
def test_mlp_meta_trains_on_a_runner_and_reloads(tmp_path):
    from meta_module import PairSharedAllocator

    run_cli(tmp_path, "--config", "configs/smoke.yaml", "--run-id", "mlp", "--set", "run.iterations=1",
            "--set", "model.meta_network=mlp", "--set", "resources.num_env_runners=1")  # fmt: skip
    run_dir = tmp_path / "saved" / "mlp"
    policy = decision.load_policy(run_dir)
    cfg, _ = decision.load_run_files(run_dir)
    assert cfg["model"]["meta_network"] == "mlp"
    splits = training.load_splits(cfg)
    meta = assert_actions_match_rllib(run_dir, policy, splits)
    assert hasattr(meta, "pi") and not isinstance(meta, PairSharedAllocator)
    market, first_bar = splits.warm("test", policy.history_bars)
    records = [decision.play_policy(policy, market, first_bar) for _ in range(2)]
    assert len(records[0].equity) > 1 and np.all(np.isfinite(records[0].equity))
    np.testing.assert_array_equal(records[0].equity, records[1].equity)  # deterministic


def assert_actions_match_rllib(run_dir: Path, policy: decision.Policy, splits: training.Splits):
    """The decision core's policy (rebuilt with torch from the checkpoint files) gives RLlib's own
    deterministic actions on fixed observations; returns RLlib's meta module."""
    import torch
    from ray.rllib.core import Columns
    from ray.rllib.core.rl_module.rl_module import RLModule

    market, first_bar = splits.warm("test", policy.history_bars)
    observed = decision.MarketObservations(market, policy.env_config)
    rng = np.random.default_rng(0)
    n = len(policy.symbols)
    weights = [rng.dirichlet(np.ones(n + 1)) for _ in range(40)]
    calls = [rng.integers(-1, 2, n) for _ in range(40)]
    modules = {}
    for module_id in decision.MODULE_IDS:
        path = decision.module_state_path(run_dir, module_id).parent
        module = modules[module_id] = RLModule.from_checkpoint(str(path.resolve()))
        module.eval()
        if module_id == "specialist":
            obs = np.stack([observed.specialist(k % n, first_bar + k, weights[k][k % n]) for k in range(40)])
        else:
            obs = np.stack([observed.meta(first_bar + k, calls[k], weights[k]) for k in range(40)])
        # One observation per forward pass, as the policy decides (a batch of 40 may round the last
        # bit differently in the matrix products).
        rllib = []
        for row in obs:
            with torch.no_grad():
                out = module.forward_inference({Columns.OBS: torch.as_tensor(row[None])})
            dist = module.get_inference_action_dist_cls().from_logits(out[Columns.ACTION_DIST_INPUTS])
            rllib.append(dist.to_deterministic().sample().numpy()[0])
        rllib = np.stack(rllib)
        if module_id == "specialist":
            ours = np.concatenate([policy.specialist_actions(row[None]) for row in obs])
            np.testing.assert_array_equal(ours, rllib)
        else:
            space = module.action_space
            ours = np.stack([policy.meta_action(o) for o in obs])
            np.testing.assert_array_equal(ours, np.clip(rllib, space.low, space.high))
            assert np.ptp(ours, axis=0).max() > 0  # the observations really differ in their actions
    return modules["meta"]


def _free_port() -> int:
    return free_port()  # tests/_ports.py: outside the ephemeral range, where bind-then-release races


@pytest.mark.slow
def test_training_joins_a_local_ray_cluster(tmp_path):
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayc_", dir="/tmp")  # short: Ray's socket paths are limited
    # --block keeps `ray start` in the foreground: ending that one process stops exactly this
    # cluster (a plain `ray stop` would also stop other Ray instances on a shared machine).
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--temp-dir",
            temp_dir,
            "--ray-client-server-port",
            str(_free_port()),
            "--dashboard-agent-listen-port",
            str(_free_port()),
            "--disable-usage-stats",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        # `ray start` turns on token auth (token in ~/.ray/auth_token); the health check must send it.
        check_env = {**os.environ, "RAY_AUTH_MODE": "token"}
        check = [RAY, "health-check", "--address", address]
        while subprocess.run(check, env=check_env, capture_output=True).returncode:
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(1)
        run_cli(tmp_path, "--config", "configs/smoke.yaml", "--run-id", "cluster", "--address", address,
                "--set", "run.iterations=1", "--set", "resources.num_env_runners=1")  # fmt: skip
        log = (tmp_path / "logs" / "cluster" / "progress.log").read_text()
        assert f"ray cluster {address}" in log
        assert not (tmp_path / "logs" / "cluster" / "ray").exists()  # the cluster keeps its own logs
        decision.load_policy(tmp_path / "saved" / "cluster")
    finally:
        head.terminate()  # `ray start --block` then shuts down the processes of its own cluster
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


@pytest.mark.slow
def test_tune_saves_the_best_trial_as_a_run(tmp_path):
    proc = run_cli(tmp_path, "--config", "configs/smoke.yaml", "--tune", "--run-id", "search",
                   "--set", "tune.max_iterations=1")  # fmt: skip
    assert "validation_score" in proc.stdout and "best trial" in proc.stdout
    run_dir = tmp_path / "saved" / "search"
    results = (tmp_path / "logs" / "search" / "tune_results.csv").read_text().splitlines()
    assert len(results) == 1 + 2  # header + num_samples trials
    cfg, _ = decision.load_run_files(run_dir)
    decision.load_policy(run_dir)
    best = max(float(line.rsplit(",", 1)[1]) for line in results[1:])
    assert json.loads((run_dir / "state.json").read_text())["best_score"] == pytest.approx(best)
    assert cfg["run"]["iterations"] == 1


def test_meta_log_std_clip_bounds_the_meta_exploration():
    import torch
    from ray.rllib.core import Columns

    overrides = ["model.meta_network=mlp", "model.meta_log_std_clip=0.5"]
    cfg = Train.load_config(ROOT / "configs" / "smoke.yaml", overrides)
    env = training.make_env(cfg, training.load_splits(cfg).train)
    spec = training.build_algo_config(cfg).rl_module_spec.rl_module_specs["meta"]
    spec.observation_space, spec.action_space = env.observation_space("meta"), env.action_space("meta")
    module = spec.build()
    last = [m for m in module.pi.modules() if isinstance(m, torch.nn.Linear)][-1]
    half = last.out_features // 2
    obs = torch.as_tensor(np.stack([env.observation_space("meta").sample() for _ in range(4)]))
    for wanted_log_std, expected in ((-3.0, -0.5), (0.2, 0.2), (3.0, 0.5)):
        with torch.no_grad():
            last.weight[half:].zero_()
            last.bias[half:].fill_(wanted_log_std)
            out = module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]
        np.testing.assert_allclose(out[:, half:].numpy(), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Best checkpoint and resume, checked on the weights themselves
# ---------------------------------------------------------------------------------------------


def weights_hash(states: dict) -> str:
    """sha256 over every module's state (sorted keys, float bytes)."""
    import hashlib

    digest = hashlib.sha256()
    for module_id in sorted(states):
        for key in sorted(states[module_id]):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(np.asarray(states[module_id][key])).tobytes())
    return digest.hexdigest()


def learner_hash(algo) -> str:
    modules = algo.learner_group._learner.module
    return weights_hash({mid: {k: v.detach().cpu().numpy() for k, v in modules[mid].state_dict().items()}
                         for mid in decision.MODULE_IDS})  # fmt: skip


def checkpoint_hash(run_dir: Path, checkpoint: str) -> str:
    import pickle

    states = {}
    for mid in decision.MODULE_IDS:
        with decision.module_state_path(run_dir, mid, checkpoint).open("rb") as handle:
            states[mid] = pickle.load(handle)
    return weights_hash(states)


@pytest.mark.slow
def test_best_checkpoint_and_resume_keep_the_right_weights(tmp_path, monkeypatch):
    import ray
    from ray.rllib.algorithms.algorithm import Algorithm

    scores = iter([0.1, float("nan"), 0.3, 0.2, 0.25])
    seen: dict[int, str] = {}

    def fake_validate(cfg, algo, splits):  # the scores we feed, and the weights they were given for
        seen[len(seen) + 1] = learner_hash(algo)
        value = next(scores)
        return {"score": backtest.finite_score(value), cfg["validation"]["metric"]: value}

    monkeypatch.setattr(training, "validate", fake_validate)
    cfg = Train.load_config(ROOT / "configs" / "smoke.yaml", ["run.iterations=4"])
    paths = Train.RunPaths.make("weights", tmp_path / "saved", tmp_path / "logs")
    try:
        result = Train.train(cfg, paths)
        # nan ranks as the worst; 0.3 at iteration 3 is the best, so checkpoint/ holds its weights.
        assert (result.best_iteration, result.best_score) == (3, 0.3)
        assert len(set(seen.values())) == 4  # every iteration changed the weights
        assert checkpoint_hash(paths.run_dir, "checkpoint") == seen[3]
        assert checkpoint_hash(paths.run_dir, "latest") == seen[4]

        # Resume restores exactly latest/'s weights (a re-initialised algorithm has other weights).
        restored: dict[str, str] = {}
        original = Algorithm.restore_from_path

        def spy(self, path, *args, **kwargs):
            out = original(self, path, *args, **kwargs)
            restored["hash"] = learner_hash(self)
            return out

        monkeypatch.setattr(Algorithm, "restore_from_path", spy)
        result = Train.train(Train.set_path(cfg, "run.iterations", 5), paths, resume=True)
        assert restored["hash"] == seen[4]
        fresh = training.build_algo_config(cfg).build_algo()
        try:
            assert learner_hash(fresh) != seen[4]
        finally:
            fresh.stop()
        assert (result.iterations, result.best_iteration) == (5, 3)  # 0.25 does not beat 0.3
        assert checkpoint_hash(paths.run_dir, "checkpoint") == seen[3]
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# Starting from a saved run's weights (the walk-forward's warm start)
# ---------------------------------------------------------------------------------------------


def module_hashes(modules, inference_only: bool = False) -> str:
    """weights_hash of RLlib modules' torch state; ``inference_only``: just the keys that sampling uses
    (what the learner sends to env runners; their value-function copies are never synced or used)."""
    states = {}
    for mid in decision.MODULE_IDS:
        state = modules[mid].state_dict()
        keys = modules[mid].get_state(inference_only=True) if inference_only else state
        states[mid] = {k: state[k].detach().cpu().numpy() for k in keys}
    return weights_hash(states)


@pytest.mark.slow
def test_init_from_starts_learner_and_sampler_at_the_saved_best_weights(tmp_path, monkeypatch):
    import ray

    cfg = Train.load_config(ROOT / "configs" / "smoke.yaml", ["run.iterations=1"])
    source = Train.RunPaths.make("source", tmp_path / "saved", tmp_path / "logs")
    try:
        Train.train(cfg, source)
        saved_best = checkpoint_hash(source.run_dir, "checkpoint")

        # A run of another model or other pairs is refused before anything is written or Ray starts.
        splits = training.load_splits(cfg)
        wider = Train.set_path(cfg, "model.meta_hiddens", [32])
        with pytest.raises(ConfigError, match="model"):
            training.read_init_weights(source.run_dir, wider, splits.train)
        two_pairs = {**cfg, "data": {**cfg["data"], "source": {**cfg["data"]["source"], "n_pairs": 2}}}
        other_pairs = training.load_splits(two_pairs)
        with pytest.raises(ConfigError, match="pairs"):
            training.read_init_weights(source.run_dir, cfg, other_pairs.train)
        with pytest.raises(ConfigError, match="not a saved run"):
            training.read_init_weights(tmp_path / "nothing", cfg, splits.train)

        seen: dict[str, str] = {}
        original = training.set_module_weights

        def spy(algo, states):  # the weights the learner and the sampling env runner start from
            original(algo, states)
            learner = algo.learner_group._learner.module
            sampler = algo.env_runner_group.local_env_runner.module
            seen["learner"] = module_hashes(learner)
            seen["sampler"] = module_hashes(sampler, inference_only=True)
            seen["learner_as_sampler"] = module_hashes(learner, inference_only=True)

        monkeypatch.setattr(training, "set_module_weights", spy)
        warm = Train.RunPaths.make("warm", tmp_path / "saved", tmp_path / "logs")
        result = Train.train(cfg, warm, init_from=source.run_dir)
        assert seen["learner"] == saved_best  # exactly the source's best checkpoint, every key
        assert seen["sampler"] == seen["learner_as_sampler"]  # the env runner samples with them too
        fresh = training.build_algo_config(cfg).build_algo()
        try:
            assert module_hashes(fresh.learner_group._learner.module) != saved_best  # not the default init
        finally:
            fresh.stop()
        assert result.iterations == 1
        final = json.loads((warm.run_dir / "metrics.json").read_text())
        assert final["init_from"] == str(source.run_dir)
        assert f"from {source.run_dir}: starting iteration 0" in (warm.log_dir / "progress.log").read_text()
        assert json.loads((source.run_dir / "metrics.json").read_text())["init_from"] is None
    finally:
        ray.shutdown()


def test_cli_refuses_init_from_with_resume_or_tune(tmp_path, capsys):
    for extra in (["--resume", "--run-id", "x"], ["--tune"]):
        roots = ["--saved-models", str(tmp_path / "saved"), "--logs", str(tmp_path / "logs")]
        code = Train.main(["--config", "configs/smoke.yaml", "--init-from", str(tmp_path), *extra, *roots])
        assert code == 2 and "--init-from" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()
