"""data_fetch_job as a real process: SIGKILL mid-run then restart, and the embedded PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _data_support
import pandas as pd
import pytest
from _data_support import JAN1_2021, JUN1_2021, file_candles, stored
from sqlalchemy import create_engine, text

import db
from binance.fake_exchange import FakeExchange

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ["BTC/USDT", "ETH/USDT"]
fresh_db = _data_support.fresh_db  # a throwaway database per test (fixture)

pytestmark = pytest.mark.slow


def job_command(*extra: str) -> list[str]:
    return [
        sys.executable,
        "data_fetch_job.py",
        "--pairs",
        ",".join(PAIRS),
        "--timeframes",
        "1h",
        "--since",
        "2021-01-01",
        "--until",
        "2021-06-01",
        "--no-progress",
        *extra,
    ]


def job_env(**values: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in values.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def test_sigkill_mid_run_then_restart_gives_the_uninterrupted_table(fresh_db, shared_1h):
    with FakeExchange(shared_1h, symbols=PAIRS, latency_s=0.3) as fake:
        env = job_env(DATABASE_URL=fresh_db, BINANCE_BASE_URL=fake.url)
        probe = create_engine(fresh_db)
        process = subprocess.Popen(
            job_command("--batch-rows", "1000"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            count = 0
            while time.monotonic() < deadline:
                try:
                    with probe.connect() as conn:
                        count = conn.execute(text("SELECT count(*) FROM market.ohlcv")).scalar()
                except Exception:  # noqa: BLE001 - the job has not created the schema yet
                    count = 0
                if count >= 1000:
                    break
                time.sleep(0.05)
            assert process.poll() is None, "the job finished before it could be killed"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
        probe.dispose()
        engine = db.get_engine(fresh_db)
        total = sum(len(file_candles(shared_1h, s, JAN1_2021, JUN1_2021)) for s in PAIRS)
        killed_at = sum(len(stored(engine, s)) for s in PAIRS)
        assert 1000 <= killed_at < total  # whole batches only, and not finished
        assert "running" in set(db.fetch_runs(engine).status)  # the killed run shows as unfinished

        fake.latency_s = 0.0
        rerun = subprocess.run(job_command(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    for symbol in PAIRS:
        pd.testing.assert_frame_equal(
            stored(engine, symbol), file_candles(shared_1h, symbol, JAN1_2021, JUN1_2021)
        )


def test_without_database_url_the_job_uses_the_embedded_postgresql(shared_1h):
    data_dir = Path(tempfile.mkdtemp(prefix="pgserver-test-"))
    try:
        with FakeExchange(shared_1h, symbols=PAIRS) as fake:
            # DATABASE_URL="" (not removed) so a developer's .env cannot fill it in: "" counts as unset
            env = job_env(DATABASE_URL="", PGSERVER_DATA_DIR=str(data_dir), BINANCE_BASE_URL=fake.url)
            command = [
                sys.executable,
                "data_fetch_job.py",
                "--pairs",
                "BTC/USDT",
                "--timeframes",
                "1h",
                "--since",
                "2021-01-01",
                "--until",
                "2021-01-03",
                "--no-progress",
            ]
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
            assert "BTC/USDT" in result.stdout
        url = db.embedded_url(data_dir)  # the server the job started, still running
        engine = create_engine(url)
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT count(*) FROM market.ohlcv WHERE symbol = 'BTC/USDT'")).scalar()
                == 48
            )
        engine.dispose()
    finally:
        _stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _stop_embedded(data_dir: Path) -> None:
    """Stop the pgserver instance this test started (it outlives the job by design)."""
    from pgserver._commands import pg_ctl

    if (data_dir / "postmaster.pid").exists():
        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
