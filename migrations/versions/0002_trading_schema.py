"""trading schema: accounts, decisions, orders, fills, position snapshots and equity per bar

Revision ID: 0002_trading
Revises: 0001
"""

from alembic import op

revision = "0002_trading"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE SCHEMA IF NOT EXISTS trading")
    # One account per (mode, run): what it trades and, once tripped, why it stopped.
    op.execute(
        """
        CREATE TABLE trading.accounts (
            account        text             PRIMARY KEY,
            mode           text             NOT NULL CHECK (mode IN ('paper', 'testnet', 'live')),
            run_id         text             NOT NULL,
            symbols        text[]           NOT NULL,
            timeframe      text             NOT NULL,
            initial_cash   double precision NOT NULL,
            halted_reason  text,
            created_at     timestamptz      NOT NULL DEFAULT now()
        )
        """
    )
    # A decision taken after the close of bar_open_time_ms; weights are pairs (symbols order) then cash.
    # status: open = its orders are not all settled yet; done = settled (filled, rejected or skipped).
    op.execute(
        """
        CREATE TABLE trading.decisions (
            account           text             NOT NULL REFERENCES trading.accounts,
            bar_open_time_ms  bigint           NOT NULL,
            run_id            text             NOT NULL,
            calls             smallint[]       NOT NULL,
            target_weights    double precision[] NOT NULL,
            weights_before    double precision[] NOT NULL,
            limit_scale       double precision NOT NULL DEFAULT 1,
            limit_reason      text,
            status            text             NOT NULL CHECK (status IN ('open', 'done')),
            created_at        timestamptz      NOT NULL DEFAULT now(),
            PRIMARY KEY (account, bar_open_time_ms)
        )
        """
    )
    # status: new (recorded, maybe not sent yet) | unknown (sent, outcome not known) | filled |
    # rejected (the exchange refused it) | canceled | not_sent (the exchange never got it; may be resent)
    op.execute(
        """
        CREATE TABLE trading.orders (
            client_order_id    text             PRIMARY KEY,
            account            text             NOT NULL,
            bar_open_time_ms   bigint           NOT NULL,
            symbol             text             NOT NULL,
            side               text             NOT NULL CHECK (side IN ('buy', 'sell')),
            amount             double precision NOT NULL,
            ref_price          double precision NOT NULL,
            status             text             NOT NULL
                CHECK (status IN ('new', 'unknown', 'filled', 'rejected', 'canceled', 'not_sent')),
            exchange_order_id  text,
            filled_qty         double precision NOT NULL DEFAULT 0,
            avg_price          double precision,
            error              text,
            created_at         timestamptz      NOT NULL DEFAULT now(),
            updated_at         timestamptz      NOT NULL DEFAULT now(),
            FOREIGN KEY (account, bar_open_time_ms) REFERENCES trading.decisions
        )
        """
    )
    op.execute("CREATE INDEX orders_open_idx ON trading.orders (account) WHERE status IN ('new', 'unknown')")
    op.execute(
        """
        CREATE TABLE trading.fills (
            client_order_id  text             NOT NULL REFERENCES trading.orders,
            trade_id         text             NOT NULL,
            account          text             NOT NULL,
            symbol           text             NOT NULL,
            side             text             NOT NULL,
            qty              double precision NOT NULL,
            price            double precision NOT NULL,
            fee              double precision NOT NULL,
            fee_asset        text             NOT NULL,
            slippage         double precision NOT NULL DEFAULT 0,
            ts_ms            bigint           NOT NULL,
            PRIMARY KEY (client_order_id, trade_id)
        )
        """
    )
    op.execute("CREATE INDEX fills_account_ts_idx ON trading.fills (account, ts_ms)")
    # Holdings at a bar's close: cash and base quantities (symbols order), exchange balances when live.
    op.execute(
        """
        CREATE TABLE trading.snapshots (
            account           text               NOT NULL REFERENCES trading.accounts,
            bar_open_time_ms  bigint             NOT NULL,
            cash              double precision   NOT NULL,
            qty               double precision[] NOT NULL,
            prices            double precision[] NOT NULL,
            balances          jsonb,
            created_at        timestamptz        NOT NULL DEFAULT now(),
            PRIMARY KEY (account, bar_open_time_ms)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE trading.equity (
            account           text               NOT NULL REFERENCES trading.accounts,
            bar_open_time_ms  bigint             NOT NULL,
            equity            double precision   NOT NULL,
            weights           double precision[] NOT NULL,
            fees              double precision   NOT NULL DEFAULT 0,
            PRIMARY KEY (account, bar_open_time_ms)
        )
        """
    )


def downgrade() -> None:
    for table in ("equity", "snapshots", "fills", "orders", "decisions", "accounts"):
        op.execute(f"DROP TABLE trading.{table}")
    op.execute("DROP SCHEMA trading")
