"""The connection layer: migrations create the market schema, and re-running them is harmless."""

from sqlalchemy import text

import db


def test_migrations_create_market_tables(engine):
    with engine.connect() as conn:
        tables = set(
            conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema='market'")
            ).scalars()
        )
        key = conn.execute(
            text(
                "SELECT string_agg(a.attname, ',' ORDER BY array_position(i.indkey, a.attnum)) "
                "FROM pg_index i JOIN pg_attribute a ON a.attrelid=i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid='market.ohlcv'::regclass "
                "AND i.indisprimary"
            )
        ).scalar_one()
    assert {"ohlcv", "fetch_runs"} <= tables
    assert key == "exchange,symbol,timeframe,open_time_ms"


def test_migrate_is_idempotent(engine):
    db.migrate_schema(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0001"


def test_masked_url_hides_password():
    assert "secret" not in db.masked("postgresql+psycopg2://u:secret@h:5432/d")
