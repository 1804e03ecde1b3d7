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
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None and head != "0001"  # the trading schema (0002) follows the market one
    db.migrate_schema(engine)  # already at head: a second run changes nothing
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
        assert {"market", "trading"} <= set(
            conn.execute(text("SELECT schema_name FROM information_schema.schemata")).scalars()
        )


def test_masked_url_hides_password():
    assert "secret" not in db.masked("postgresql+psycopg2://u:secret@h:5432/d")
