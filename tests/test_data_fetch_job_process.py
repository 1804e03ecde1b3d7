"""data_fetch_job as a real process: SIGKILL mid-run then restart, the embedded PostgreSQL, and what
the command line says when the exchange or the database is down, on bad arguments and on Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _data_support
import numpy as np
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
        db.stop_embedded(data_dir)  # the job's server outlives the job by design
        shutil.rmtree(data_dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# What a user meets at the command line when things go wrong (issue 15 items 5, 7, 8; issue 14).
# Synthetic market only: no ../shared data needed.
# --------------------------------------------------------------------------------------------------

FOUR = "BTC/USDT,ETH/USDT,BNB/USDT,ADA/USDT"


def refusing_port() -> socket.socket:
    """A bound socket that never listens: connecting to its port is refused, and no one else can
    take the port while the test holds it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def run_job(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "data_fetch_job.py", "--no-progress", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_exchange_down_one_message_naming_url_cause_and_fix(fresh_db):
    """Four pairs against an exchange that refuses connections: one line, exit 3, in seconds (the
    timeout guards against the old behaviour: 24 retries over 129 s)."""
    with refusing_port() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = run_job(job_env(DATABASE_URL=fresh_db, BINANCE_BASE_URL=url), "--pairs", FOUR,
                         "--since", "2021-01-01", "--until", "2021-02-01", timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    assert result.stdout == "" and len(lines(result.stderr)) == 1, result.stderr
    message = result.stderr
    assert f"cannot reach the exchange at {url}" in message and "Connection refused" in message
    assert "BINANCE_BASE_URL" in message and "python -m binance.fake_exchange" in message
    assert db.fetch_runs(db.get_engine(fresh_db)).empty  # nothing started


def test_database_down_one_line_instead_of_a_traceback():
    with refusing_port() as sock:
        port = sock.getsockname()[1]
        url = f"postgresql+psycopg2://postgres:secret@127.0.0.1:{port}/market"
        result = run_job(job_env(DATABASE_URL=url, BINANCE_BASE_URL="http://127.0.0.1:9"), "--pairs",
                         "BTC/USDT", "--since", "2021-01-01", "--until", "2021-01-02", timeout=60)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr and len(lines(result.stderr)) == 1, result.stderr
    assert f"cannot reach the database postgresql+psycopg2://postgres:***@127.0.0.1:{port}" in result.stderr
    assert "Connection refused" in result.stderr and "secret" not in result.stderr


def test_doubtful_arguments_are_refused_before_any_work(monkeypatch, capsys):
    """Defect 7: each of these used to run (from 1970, with the config's pairs, or 5000 rows)."""
    import data_fetch_job

    with refusing_port() as sock:  # a database that cannot be reached: exit 2 proves nothing was tried
        port = sock.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x")
        monkeypatch.setenv("BINANCE_BASE_URL", "http://127.0.0.1:9")
        cases = {
            ("--since", "1609459200"): "looks like epoch SECONDS",
            ("--since=-5",): "before 1970",
            ("--until", "1609459200"): "pass milliseconds (1609459200000) or a date such as 2021-01-01",
            ("--pairs", ""): "--pairs is empty",
            ("--timeframes", ""): "--timeframes is empty",
            ("--pairs", "BTC/USDT,,ETH/USDT"): "empty item",
            ("--pairs", "BTC/USDT,BTC/USDT"): "listed twice",
            ("--pairs", "BTCUSDT"): "bad symbol 'BTCUSDT'",
            ("--timeframes", "7h"): "unsupported timeframe '7h'",
            ("--since", "2021-02-01", "--until", "2021-01-01"): "is not before --until",
        }
        for args, message in cases.items():
            assert data_fetch_job.main(["--no-progress", *args]) == 2, args
            err = capsys.readouterr().err
            assert message in err, (args, err)
        with pytest.raises(SystemExit) as info:  # argparse's own refusal, exit 2
            data_fetch_job.main(["--batch-rows", "0"])
        assert info.value.code == 2 and "must be a whole number >= 1" in capsys.readouterr().err
        # and once as the process a user starts: the seconds mistake, one line, no traceback
        result = run_job(dict(os.environ), "--since", "1609459200", timeout=60)
    assert result.returncode == 2 and len(lines(result.stderr)) == 1, result.stderr
    expected = "--since 1609459200 looks like epoch SECONDS (as milliseconds it is 1970-01-19 15:04)"
    assert expected in result.stderr


def test_ctrl_c_marks_the_run_interrupted_and_exits_cleanly(fresh_db):
    """Defect 8: Ctrl-C left the fetch run `running` (with finished_at set) and printed a traceback."""
    with FakeExchange(latency_s=0.2) as fake:
        env = job_env(DATABASE_URL=fresh_db, BINANCE_BASE_URL=fake.url)
        process = subprocess.Popen(
            [sys.executable, "data_fetch_job.py", "--no-progress", "--pairs", "BTC/USDT,ETH/USDT",
             "--since", "2020-01-01", "--until", "2021-06-01", "--batch-rows", "1000"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        probe = create_engine(fresh_db)
        try:
            deadline = time.monotonic() + 90
            count = 0
            while count < 1000 and time.monotonic() < deadline and process.poll() is None:
                try:
                    with probe.connect() as conn:
                        count = conn.execute(text("SELECT count(*) FROM market.ohlcv")).scalar()
                except Exception:  # noqa: BLE001 - the job has not created the schema yet
                    count = 0
                time.sleep(0.05)
            assert process.poll() is None, "the job finished before it could be interrupted"
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
            probe.dispose()
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    engine = db.get_engine(fresh_db)
    runs = db.fetch_runs(engine)
    assert runs.status.tolist() == ["interrupted"]  # BTC in flight; ETH never started
    assert runs.finished_at.notna().all()
    assert "INTERRUPTED" in out  # the summary table still shows what happened
    btc = stored(engine, "BTC/USDT")
    assert len(btc) >= 1000 and runs.rows_inserted.iloc[0] == len(btc)
    series = fake.source.series("BTC/USDT")  # a contiguous prefix of the source: nothing lost or invented
    first = int(np.searchsorted(series.ts_ms, btc.open_time_ms.iloc[0]))
    np.testing.assert_array_equal(btc.open_time_ms.to_numpy(), series.ts_ms[first : first + len(btc)])
