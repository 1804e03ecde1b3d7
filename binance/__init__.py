"""Exchange access: the only package that talks to an exchange.

- :func:`make_exchange` builds the ccxt Binance spot client (rate limiting on, keys from ``.env``,
  testnet switch, base-URL override for the local fake exchange).
- Timeframe and symbol helpers shared by the fetcher, the fake exchange and the database code.
- :mod:`binance.fake_exchange` serves Binance's market-data REST endpoints locally.
"""

from binance.client import FAKE_EXCHANGE_COMMAND, api_base_url, make_exchange, network_cause, unreachable_hint
from binance.symbols import (
    BINANCE_INTERVALS,
    file_stem,
    floor_to_timeframe,
    grid_offset_ms,
    market_id,
    on_grid,
    parse_symbol,
    symbol_from_file_stem,
    symbol_from_market_id,
    timeframe_ms,
)

__all__ = [
    "BINANCE_INTERVALS",
    "FAKE_EXCHANGE_COMMAND",
    "api_base_url",
    "network_cause",
    "unreachable_hint",
    "file_stem",
    "floor_to_timeframe",
    "grid_offset_ms",
    "make_exchange",
    "market_id",
    "on_grid",
    "parse_symbol",
    "symbol_from_file_stem",
    "symbol_from_market_id",
    "timeframe_ms",
]
