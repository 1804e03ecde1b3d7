"""Run the dbt project in ``dbt_project/`` against the project database.

The connection comes from :func:`db.database_url` (``DATABASE_URL`` or the embedded pgserver,
whose URL names a Unix-socket folder in its query string). It is handed to dbt as the
``DBT_PG_*`` variables that ``dbt_project/profiles.yml`` reads, so dbt and ``db.py`` always
talk to the same database. dbt runs in-process (``dbtRunner``); its console output is shown as
usual and a failure raises :class:`DbtError` carrying dbt's own report.

Usage:
    python -m dbt_runner build                      # what `make dbt` runs
    python -m dbt_runner build --full-refresh
    python -m dbt_runner source freshness
    python -m dbt_runner test --select indicators
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import make_url

from settings import PROJECT_ROOT

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
DBT_LOG_DIR = PROJECT_ROOT / "logs" / "dbt"
# Commands that take --project-dir/--profiles-dir (all the ones this project uses).
_PROJECT_COMMANDS = {"build", "run", "test", "seed", "snapshot", "compile", "source", "debug", "parse",
                     "ls", "list", "run-operation", "show", "docs", "clean"}
# dbt keeps global state (flags, adapters): one invocation at a time per process.
_dbt_lock = threading.Lock()


class DbtError(RuntimeError):
    """dbt failed; ``report`` holds dbt's own account (failed nodes, errors, summary)."""

    def __init__(self, args: Sequence[str], report: str) -> None:
        super().__init__(f"dbt {' '.join(args)} failed:\n{report}")
        self.args_run = list(args)
        self.report = report


def dbt_env(url: str | None = None) -> dict[str, str]:
    """The ``DBT_PG_*`` variables profiles.yml reads, derived from a SQLAlchemy URL.

    The embedded server's URL has no host but ``?host=/socket/dir``; libpq (and so dbt-postgres)
    takes a directory as host and connects through the socket in it.
    """
    if url is None:
        import db

        url = db.database_url()
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host") or "localhost"
    if isinstance(host, tuple):  # repeated query parameter
        host = host[0]
    return {
        "DBT_PG_HOST": str(host),
        "DBT_PG_PORT": str(parsed.port or parsed.query.get("port") or 5432),
        "DBT_PG_USER": parsed.username or "postgres",
        "DBT_PG_PASSWORD": parsed.password or "",
        "DBT_PG_DBNAME": parsed.database or "postgres",
    }


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _with_project_dirs(args: Sequence[str]) -> list[str]:
    args = list(args)
    if args and args[0] in _PROJECT_COMMANDS:
        if "--project-dir" not in args:
            args += ["--project-dir", str(DBT_PROJECT_DIR)]
        if "--profiles-dir" not in args:
            args += ["--profiles-dir", str(DBT_PROJECT_DIR)]
    return args


def _report(result, lines: list[str]) -> str:
    """dbt's account of a failed invocation: errors of failed nodes plus its logged errors."""
    parts: list[str] = []
    if result.exception is not None:
        parts.append(f"{type(result.exception).__name__}: {result.exception}")
    run_results = getattr(result.result, "results", None) or []
    for node_result in run_results:
        status = str(getattr(node_result, "status", ""))
        if status in ("error", "fail", "runtime error"):
            name = getattr(getattr(node_result, "node", None), "unique_id", "?")
            failures = getattr(node_result, "failures", None)
            extra = f" ({failures} failing rows)" if failures else ""
            parts.append(f"{status.upper()} {name}{extra}: {node_result.message}")
    if lines:
        parts.append("dbt log (warnings and errors):\n" + "\n".join(lines[-40:]))
    return "\n".join(parts) or "dbt reported failure without details"


def run_dbt(args: Sequence[str], url: str | None = None, quiet: bool = False) -> object:
    """Run ``dbt <args>`` on the project database; return dbt's result object.

    ``args`` is the dbt command line without ``dbt`` (e.g. ``["build"]``,
    ``["build", "--full-refresh"]``); ``--project-dir``/``--profiles-dir`` are added.
    ``url`` defaults to :func:`db.database_url`. ``quiet`` hides dbt's console output
    (errors still end up in the exception). Raises :class:`DbtError` on any failure,
    including a failed data test.
    """
    from dbt.cli.main import dbtRunner
    from dbt_common.events.base_types import EventLevel

    full_args = _with_project_dirs(args)
    if full_args and full_args[0] in _PROJECT_COMMANDS and "--log-path" not in full_args:
        DBT_LOG_DIR.mkdir(parents=True, exist_ok=True)
        full_args += ["--log-path", str(DBT_LOG_DIR)]
    if quiet and "--quiet" not in full_args and "-q" not in full_args:
        full_args.insert(0, "--quiet")
    collected: list[str] = []

    def collect(event) -> None:
        if event.info.level in (EventLevel.WARN, EventLevel.ERROR) and event.info.msg:
            collected.append(str(event.info.msg))

    environment = dbt_env(url)
    environment.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    # No ANSI colour codes in logs/dbt/dbt.log, nor on a console that is not a terminal.
    environment.setdefault("DBT_USE_COLORS_FILE", "false")
    environment.setdefault("DBT_USE_COLORS", "true" if sys.stdout.isatty() else "false")
    # One target folder (compiled SQL, manifest, partial-parse cache) per database, and runs on a
    # database serialized across processes: concurrent invocations (Airflow tasks, tests) would
    # otherwise overwrite each other's artifacts mid-run.
    folder = re.sub(r"[^A-Za-z0-9_.-]", "_", environment["DBT_PG_DBNAME"])
    if full_args and full_args[0] in _PROJECT_COMMANDS and "--target-path" not in full_args:
        full_args += ["--target-path", str(DBT_PROJECT_DIR / "target" / folder)]
    lock_path = DBT_PROJECT_DIR / "target" / f"{folder}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _dbt_lock, open(lock_path, "w") as lock_file, _environment(environment):
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        result = dbtRunner(callbacks=[collect]).invoke(full_args)
    if not result.success:
        raise DbtError(list(args), _report(result, collected))
    return result.result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        run_dbt(argv)
    except DbtError as error:
        print(error.report, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
