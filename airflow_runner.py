"""Run Airflow locally (`make airflow`): `airflow standalone` on this project's DAGs.

- AIRFLOW_HOME is ``airflow_home/`` (DAGs in ``airflow_home/dags/``; config, logs and the generated
  admin password file are created there and git-ignored).
- Airflow's metadata lives in PostgreSQL, in a database of its own (``runner.metadata_database``
  in configs/airflow.yaml, default ``airflow``) on the same server as the market data: the one named
  by ``DATABASE_URL``, else the embedded pgserver. It is created when missing. An explicit
  ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` wins.
- The exchange pool (``fetch.pool``/``fetch.pool_slots``) is created or resized before start.
- The UI is served on http://127.0.0.1:8080 (``runner.host``/``runner.port``). Airflow's two log
  servers (the scheduler's worker log server and the triggerer's) listen on ``runner.host`` too, on
  ``runner.worker_log_server_port`` (8793) and ``runner.trigger_log_server_port`` (8794): Airflow
  itself binds them to every interface, so ``airflow_home/site/sitecustomize.py`` (first on the
  PYTHONPATH of every Airflow process started here) rebinds them. ``AIRFLOW__LOGGING__*`` variables
  set in the environment win over the configured ports.
- Ctrl-C (SIGINT), SIGTERM or ``python -m airflow_runner stop`` stop Airflow and every process it
  started, even when this process was launched with SIGINT ignored (as background jobs from scripts
  are): the runner installs its own handlers, starts Airflow in its own process group with default
  signal dispositions, asks it to stop, and kills what is left after ``runner.stop_timeout_s``.

Usage:
    python -m airflow_runner            # start (blocks; Ctrl-C stops)
    python -m airflow_runner stop       # stop a runner started elsewhere (reads its pid file)
    python -m airflow_runner env        # print the Airflow environment it would use (URLs masked)
    python -m airflow_runner cli backfill create --dag-id market_data_ingest --from-date 2024-01-01 \
        --to-date 2024-01-03            # any `airflow ...` command, with the runner's environment
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, make_url, text

from orchestration import PipelineConfig, load_config
from settings import PROJECT_ROOT, env

log = logging.getLogger("airflow_runner")

# AIRFLOW_RUNNER_HOME moves it elsewhere (the tests do); a global AIRFLOW_HOME is deliberately ignored.
AIRFLOW_HOME = Path(env("AIRFLOW_RUNNER_HOME", str(PROJECT_ROOT / "airflow_home")))
DAGS_FOLDER = PROJECT_ROOT / "airflow_home" / "dags"
SITE_DIR = PROJECT_ROOT / "airflow_home" / "site"  # sitecustomize.py: log servers on runner.host
PID_FILE = AIRFLOW_HOME / "airflow_runner.pid"
_PR_SET_PDEATHSIG = 1


def metadata_url(config: PipelineConfig, create: bool = True) -> str:
    """SQLAlchemy URL of Airflow's own database, next to the market data; created if missing."""
    explicit = env("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    if explicit:
        return explicit
    import db

    name = str(config.runner["metadata_database"])
    server = make_url(db.database_url())
    if create:
        ensure_database(server.render_as_string(hide_password=False), name)
    return server.set(database=name).render_as_string(hide_password=False)


def ensure_database(server_url: str, name: str) -> bool:
    """Create database ``name`` on the server of ``server_url`` unless it exists; True if created."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                log.info("created database %s", name)
            return not exists
    finally:
        admin.dispose()


def airflow_env(
    config: PipelineConfig, sql_alchemy_conn: str, home: Path = AIRFLOW_HOME, base: dict | None = None
) -> dict[str, str]:
    """The environment Airflow's processes run with (also used by the tests, in-process)."""
    host, port = str(config.runner["host"]), int(config.runner["port"])
    venv_bin = str(Path(sys.executable).parent)
    environ = dict(os.environ if base is None else base)
    environ.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__API__HOST": host,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{host}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{host}:{port}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": environ.get(
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(int(config.runner["worker_log_server_port"]))
        ),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": environ.get(
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(int(config.runner["trigger_log_server_port"]))
        ),
        "AIRFLOW_RUNNER_LOG_SERVER_HOST": host,
        # Small laptops: one API worker and a few task slots (Airflow's defaults start 32 workers).
        "AIRFLOW__API__WORKERS": environ.get("AIRFLOW__API__WORKERS", "1"),
        "AIRFLOW__CORE__PARALLELISM": environ.get("AIRFLOW__CORE__PARALLELISM", "4"),
        # `standalone` spawns `airflow ...` from PATH: make that this venv's Airflow.
        "PATH": venv_bin + os.pathsep + environ.get("PATH", ""),
        # Task processes import the project's modules (orchestration, db, ...); SITE_DIR comes first
        # so its sitecustomize.py runs in every Airflow process.
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(SITE_DIR), str(PROJECT_ROOT), environ.get("PYTHONPATH")) if p
        ),
    })
    return environ


def _airflow_cli(args: list[str], environ: dict[str, str]) -> None:
    airflow = str(Path(sys.executable).parent / "airflow")
    log.info("airflow %s", " ".join(args))
    subprocess.run([airflow, *args], env=environ, check=True, stdout=subprocess.DEVNULL)


def prepare(config: PipelineConfig, environ: dict[str, str]) -> None:
    """Migrate Airflow's metadata database and create (or resize) the exchange and dbt pools."""
    _airflow_cli(["db", "migrate"], environ)
    pools = {
        config.fetch.pool: {"slots": config.fetch.pool_slots, "include_deferred": False,
                            "description": "Concurrent requests to the exchange"},
        config.dbt_pool: {"slots": config.dbt_pool_slots, "include_deferred": False,
                          "description": "Concurrent dbt builds"},
    }
    home = Path(environ.get("AIRFLOW_HOME", AIRFLOW_HOME))
    home.mkdir(parents=True, exist_ok=True)
    pools_file = home / "pools.json"
    pools_file.write_text(json.dumps(pools, indent=2))
    _airflow_cli(["pools", "import", str(pools_file)], environ)  # creates or resizes, one CLI start


def _child_setup() -> None:  # runs in the child between fork and exec
    # Undo an inherited "ignore SIGINT" so Airflow reacts to Ctrl-C / our stop request.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:  # Linux: if the runner dies without cleaning up (SIGKILL), Airflow gets SIGTERM.
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _alive(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(process) -> str:
    try:
        return " ".join(process.cmdline()[:3])[-60:]
    except Exception:
        return "?"


def stop_process_tree(proc: subprocess.Popen, timeout_s: float) -> None:
    """Stop ``proc`` (a process group leader) and everything below it, escalating to SIGKILL.

    SIGINT goes to the whole group first (what a terminal's Ctrl-C does: `airflow standalone` then
    stops its components); whatever is left after ``timeout_s`` gets SIGTERM, then SIGKILL. Every
    process seen in the tree gets the signal directly too, so one that left the group is not missed.
    """
    import psutil

    # Remember the tree now: once the leader exits, orphans are re-parented and no longer found.
    tree = [psutil.Process(proc.pid), *_descendants(proc.pid)] if proc.poll() is None else []
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        tree += [d for p in tree if _alive(p) for d in _descendants(p.pid) if d not in tree]
        alive = [p for p in tree if _alive(p)]
        if proc.poll() is not None and not alive:
            break
        log.info("stopping Airflow: %s to %d process(es)", signal.Signals(sig).name, len(alive))
        log.info("still running: %s", sorted({_name(p) for p in alive}))
        try:
            if sig == signal.SIGINT:
                proc.send_signal(sig)
            else:
                os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if sig != signal.SIGINT:
            for p in alive:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not any(_alive(p) for p in tree):
                break
            time.sleep(0.2)
    proc.poll()


class _StopRequested(Exception):
    pass


def run(config: PipelineConfig | None = None) -> int:
    """Start `airflow standalone` and block until a stop signal; return Airflow's exit code."""

    def request_stop(signum, _frame):
        raise _StopRequested(signal.Signals(signum).name)

    # Our own handlers, installed first: an inherited SIG_IGN cannot make the runner deaf to Ctrl-C.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)

    config = config or load_config()
    proc: subprocess.Popen | None = None
    code = 0
    try:
        url = metadata_url(config)
        environ = airflow_env(config, url)
        AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
        prepare(config, environ)
        airflow = str(Path(sys.executable).parent / "airflow")
        proc = subprocess.Popen(
            [airflow, "standalone"], env=environ, cwd=PROJECT_ROOT, start_new_session=True,
            preexec_fn=_child_setup,
        )
        PID_FILE.write_text(str(os.getpid()))
        log.info(
            "Airflow starting: UI http://%s:%s (user admin, password in %s), metadata %s; Ctrl-C stops",
            config.runner["host"], config.runner["port"],
            AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated",
            make_url(url).render_as_string(hide_password=True),
        )
        code = proc.wait()
        log.warning("airflow standalone exited with code %s", code)
    except _StopRequested as exc:
        log.info("%s received", exc)
        if proc is not None:
            # A second Ctrl-C while stopping goes straight to SIGKILL.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, lambda *_: os.killpg(proc.pid, signal.SIGKILL))
            stop_process_tree(proc, float(config.runner["stop_timeout_s"]))
    finally:
        if proc is not None and proc.poll() is None:
            stop_process_tree(proc, 0)
        PID_FILE.unlink(missing_ok=True)
    log.info("Airflow stopped")
    return code


def stop_running() -> int:
    """Ask a runner started elsewhere (its pid file) to stop; wait until it has."""
    if not PID_FILE.exists():
        print("no airflow_runner is running (no pid file)")
        return 1
    pid = int(PID_FILE.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        PID_FILE.unlink(missing_ok=True)
        print(f"airflow_runner {pid} was not running")
        return 1
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("stopped")
            return 0
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", nargs="?", default="start", choices=["start", "stop", "env", "cli"])
    parser.add_argument("airflow_args", nargs=argparse.REMAINDER, help="for `cli`: the airflow arguments")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "stop":
        return stop_running()
    config = load_config()
    if args.command == "env":
        environ = airflow_env(config, metadata_url(config, create=False), base={})
        conn = environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = make_url(conn).render_as_string(hide_password=True)
        for key in sorted(environ):
            print(f"{key}={environ[key]}")
        return 0
    if args.command == "cli":
        environ = airflow_env(config, metadata_url(config))
        airflow = str(Path(sys.executable).parent / "airflow")
        return subprocess.run([airflow, *args.airflow_args], env=environ).returncode
    return run(config)


if __name__ == "__main__":
    raise SystemExit(main())
