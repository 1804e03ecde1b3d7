"""PostgreSQL access: connection, migrations, candle storage and the market arrays read side.

Connection: ``DATABASE_URL`` (environment or ``.env``) names the server. When it is unset an
embedded PostgreSQL 16 (the ``pgserver`` package) is started in ``PGSERVER_DATA_DIR`` (default
``.pgdata/`` in the project), so a fresh machine needs no database install.

Usage:
    python db.py migrate        # apply Alembic migrations (also done automatically on first use)
    python db.py url            # print the resolved database URL (password masked)
"""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine

from settings import PROJECT_ROOT, env

log = logging.getLogger(__name__)

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
# One advisory-lock key for migrations, so concurrent first uses (Airflow mapped tasks) serialize.
_MIGRATION_LOCK_KEY = 727_001

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def embedded_url(data_dir: str | Path | None = None, database: str = "postgres") -> str:
    """Start (or reuse) the embedded PostgreSQL server and return its SQLAlchemy URL."""
    import pgserver  # imported lazily: only needed when no DATABASE_URL is configured

    logging.getLogger("pgserver").setLevel(logging.WARNING)

    folder = Path(data_dir or env("PGSERVER_DATA_DIR", str(PROJECT_ROOT / ".pgdata")))
    folder.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None keeps the server running for other processes (dbt, Airflow, tests).
    server = pgserver.get_server(folder, cleanup_mode=None)
    uri = server.get_uri(database)  # postgresql://postgres:@/db?host=/path/to/socket
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def database_url() -> str:
    """The SQLAlchemy URL of the project database: ``DATABASE_URL`` or the embedded server."""
    url = env("DATABASE_URL")
    if url:
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://"):]
        if url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        return url
    return embedded_url()


def masked(url: str) -> str:
    """The URL with its password hidden, safe for logs."""
    return make_url(url).render_as_string(hide_password=True)


def get_engine(url: str | None = None, migrate: bool = True) -> Engine:
    """A pooled engine for ``url`` (default: :func:`database_url`), migrated on first use."""
    url = url or database_url()
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True, future=True)
            if migrate:
                migrate_schema(engine)
            _engines[url] = engine
    return engine


def migrate_schema(engine: Engine) -> None:
    """Apply every pending Alembic migration (idempotent, safe to call from many processes)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("command", choices=["migrate", "url"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    url = database_url()
    if args.command == "migrate":
        get_engine(url)
        print(f"migrated {masked(url)}")
    else:
        print(masked(url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
