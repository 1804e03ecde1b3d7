-- Candles with the bar length resolved; a view, so incremental filters reach market.ohlcv's indexes.
select
    exchange,
    symbol,
    timeframe,
    {{ timeframe_ms('timeframe') }} as timeframe_ms,
    open_time_ms,
    open,
    high,
    low,
    close,
    volume,
    ingested_at
from {{ source('market', 'ohlcv') }}
