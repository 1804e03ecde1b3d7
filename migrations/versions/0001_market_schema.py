"""market schema: ohlcv candles and fetch run records

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS market")
    op.execute(
        """
        CREATE TABLE market.ohlcv (
            exchange      text             NOT NULL,
            symbol        text             NOT NULL,
            timeframe     text             NOT NULL,
            open_time_ms  bigint           NOT NULL,
            open          double precision NOT NULL,
            high          double precision NOT NULL,
            low           double precision NOT NULL,
            close         double precision NOT NULL,
            volume        double precision NOT NULL,
            ingested_at   timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (exchange, symbol, timeframe, open_time_ms)
        )
        """
    )
    # Incremental dbt models select by ingestion time.
    op.execute("CREATE INDEX ohlcv_ingested_at_idx ON market.ohlcv (ingested_at)")
    op.execute(
        """
        CREATE TABLE market.fetch_runs (
            run_id         bigserial   PRIMARY KEY,
            job_id         text,
            exchange       text        NOT NULL,
            symbol         text        NOT NULL,
            timeframe      text        NOT NULL,
            since_ms       bigint,
            until_ms       bigint,
            rows_fetched   bigint      NOT NULL DEFAULT 0,
            rows_inserted  bigint      NOT NULL DEFAULT 0,
            gaps           integer     NOT NULL DEFAULT 0,
            status         text        NOT NULL,
            error          text,
            started_at     timestamptz NOT NULL DEFAULT now(),
            finished_at    timestamptz
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE market.fetch_runs")
    op.execute("DROP TABLE market.ohlcv")
    op.execute("DROP SCHEMA market")
