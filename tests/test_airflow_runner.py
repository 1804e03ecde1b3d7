"""`make airflow` (airflow_runner): Airflow standalone comes up with the DAGs loaded, metadata in
PostgreSQL and its log servers on the configured ports of 127.0.0.1 only, and Ctrl-C stops every
process it started, even when launched with SIGINT ignored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml
from _ports import free_port
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    return free_port()  # tests/_ports.py: outside the ephemeral range, where bind-then-release races


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait(condition, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"airflow_runner exited early ({proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_runner_serves_dags_and_ctrl_c_stops_everything(database_url, tmp_path):
    server = make_url(database_url)
    meta_db = f"{server.database}_runner_{uuid.uuid4().hex[:6]}"
    port, worker_logs, trigger_logs = _free_port(), _free_port(), _free_port()
    override = tmp_path / "pipeline.yaml"
    # Airflow's log servers default to 8793/8794: keep clear of any other Airflow on this machine.
    override.write_text(yaml.safe_dump({"runner": {
        "host": "127.0.0.1", "port": port, "metadata_database": meta_db, "stop_timeout_s": 30,
        "worker_log_server_port": worker_logs, "trigger_log_server_port": trigger_logs,
    }}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    environ.update({
        "DATABASE_URL": database_url,
        "AIRFLOW_PIPELINE_CONFIG": str(override),
        "AIRFLOW_RUNNER_HOME": str(tmp_path / "home"),
    })
    log = tmp_path / "runner.log"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")

    def ignore_sigint() -> None:  # what `cmd &` in a non-interactive script does to a job
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow_runner"], cwd=ROOT, env=environ, stdout=out,
            stderr=subprocess.STDOUT, preexec_fn=ignore_sigint,
        )
    try:
        _wait(lambda: _healthy(port), 300, "the API server", proc, log)  # slow under load
        meta = create_engine(server.set(database=meta_db))

        def dags_loaded() -> bool:
            with meta.connect() as conn:
                rows = conn.execute(text("SELECT dag_id FROM dag")).scalars().all()
            return {"market_data_ingest", "market_data_backfill"} <= set(rows)

        _wait(dags_loaded, 120, "the DAGs in the metadata database", proc, log)
        with meta.connect() as conn:
            pools = dict(conn.execute(text("SELECT pool, slots FROM slot_pool")).all())
        meta.dispose()
        assert pools["binance_api"] == 2 and pools["dbt"] == 1

        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 5  # standalone, scheduler, dag-processor, api-server, triggerer, ...

        def log_servers() -> dict[int, set[str]]:  # port -> addresses listening on it
            found: dict[int, set[str]] = {}
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port in (worker_logs, trigger_logs):
                    found.setdefault(conn.laddr.port, set()).add(conn.laddr.ip)
            return found

        _wait(lambda: len(log_servers()) == 2, 120, "both log servers", proc, log)
        # the configured ports, on the loopback address only (Airflow alone binds every interface)
        assert log_servers() == {worker_logs: {"127.0.0.1"}, trigger_logs: {"127.0.0.1"}}
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
        survivors = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert survivors == [], [p.cmdline() for p in survivors]
        assert not _healthy(port)
    finally:
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{meta_db}" WITH (FORCE)'))
        admin.dispose()
