-- Every candle ingested up to the newest one the table has processed has its feature row
-- (catches an incremental run that skipped a batch). Candles still being written are ignored.
select c.exchange, c.symbol, c.timeframe, c.open_time_ms
from {{ source('market', 'ohlcv') }} as c
where c.ingested_at <= (select max(source_ingested_at) from {{ ref('indicators') }})
  and not exists (
      select 1 from {{ ref('indicators') }} as f
      where f.exchange = c.exchange and f.symbol = c.symbol and f.timeframe = c.timeframe
        and f.open_time_ms = c.open_time_ms
  )
