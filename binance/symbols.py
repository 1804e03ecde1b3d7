"""Symbol and timeframe helpers (ccxt unified symbols ``BTC/USDT``, ccxt timeframe strings ``1h``)."""

from __future__ import annotations

_MINUTE_MS = 60_000
_HOUR_MS = 60 * _MINUTE_MS
_DAY_MS = 24 * _HOUR_MS

# Binance spot kline intervals with a fixed length. "1M" (calendar month) is deliberately absent:
# its length varies, so neither the fetcher's grid checks nor the fake exchange's aggregation apply.
BINANCE_INTERVALS: dict[str, int] = {
    "1s": 1_000,
    "1m": _MINUTE_MS,
    "3m": 3 * _MINUTE_MS,
    "5m": 5 * _MINUTE_MS,
    "15m": 15 * _MINUTE_MS,
    "30m": 30 * _MINUTE_MS,
    "1h": _HOUR_MS,
    "2h": 2 * _HOUR_MS,
    "4h": 4 * _HOUR_MS,
    "6h": 6 * _HOUR_MS,
    "8h": 8 * _HOUR_MS,
    "12h": 12 * _HOUR_MS,
    "1d": _DAY_MS,
    "3d": 3 * _DAY_MS,
    "1w": 7 * _DAY_MS,
}

# Binance's weekly candles open on Monday 00:00 UTC; the epoch (1970-01-01) was a Thursday.
_WEEK_OFFSET_MS = 4 * _DAY_MS

# Quote assets tried (longest first) when turning a Binance market id back into BASE/QUOTE.
KNOWN_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "DAI", "EUR", "TRY", "BTC", "ETH", "BNB")


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle in milliseconds, e.g. ``timeframe_ms("1h") == 3_600_000``."""
    try:
        return BINANCE_INTERVALS[timeframe]
    except KeyError:
        raise ValueError(
            f"unsupported timeframe {timeframe!r}; use one of {', '.join(BINANCE_INTERVALS)}"
        ) from None


def grid_offset_ms(timeframe: str) -> int:
    """Offset of the timeframe's candle grid from the epoch (non-zero only for ``1w``)."""
    return _WEEK_OFFSET_MS if timeframe == "1w" else 0


def floor_to_timeframe(ts_ms: int, timeframe: str) -> int:
    """Open time of the candle that contains ``ts_ms``."""
    step, offset = timeframe_ms(timeframe), grid_offset_ms(timeframe)
    return (ts_ms - offset) // step * step + offset


def on_grid(ts_ms: int, timeframe: str) -> bool:
    """Whether ``ts_ms`` is a candle open time of ``timeframe``."""
    return (ts_ms - grid_offset_ms(timeframe)) % timeframe_ms(timeframe) == 0


def parse_symbol(symbol: str) -> tuple[str, str]:
    """Split a ccxt unified spot symbol ``BASE/QUOTE`` into ``(BASE, QUOTE)``; ValueError otherwise."""
    parts = symbol.split("/")
    if len(parts) != 2 or not all(p and p.isalnum() and p.upper() == p for p in parts):
        raise ValueError(f"bad symbol {symbol!r}: expected a ccxt spot symbol such as 'BTC/USDT'")
    return parts[0], parts[1]


def market_id(symbol: str) -> str:
    """Binance's market id for a unified symbol: ``BTC/USDT`` -> ``BTCUSDT``."""
    base, quote = parse_symbol(symbol)
    return base + quote


def symbol_from_market_id(market: str, quotes: tuple[str, ...] = KNOWN_QUOTES) -> str:
    """Unified symbol for a Binance market id: ``BTCUSDT`` -> ``BTC/USDT``."""
    for quote in sorted(quotes, key=len, reverse=True):
        if market.endswith(quote) and len(market) > len(quote):
            return f"{market[: -len(quote)]}/{quote}"
    raise ValueError(f"cannot split market id {market!r}: quote asset not one of {quotes}")


def file_stem(symbol: str) -> str:
    """Candle file stem for a symbol: ``BTC/USDT`` -> ``BTC_USDT`` (files are ``BTC_USDT.csv[.gz]``)."""
    base, quote = parse_symbol(symbol)
    return f"{base}_{quote}"


def symbol_from_file_stem(stem: str) -> str:
    """Unified symbol for a candle file stem: ``BTC_USDT`` -> ``BTC/USDT``."""
    symbol = stem.replace("_", "/", 1)
    parse_symbol(symbol)
    return symbol
