-- Gap rule: bar_index restarts at 0 after any missing bar and otherwise counts up by one,
-- and warm is exactly bar_index >= 33.
with ordered as (
    select
        exchange, symbol, timeframe, open_time_ms, bar_index, warm,
        lag(open_time_ms) over w as prev_open_time_ms,
        lag(bar_index) over w as prev_bar_index,
        {{ timeframe_ms('timeframe') }} as timeframe_ms
    from {{ ref('indicators') }}
    window w as (partition by exchange, symbol, timeframe order by open_time_ms)
)
select *
from ordered
where warm <> (bar_index >= 33)
   or (prev_open_time_ms is not null and open_time_ms - prev_open_time_ms = timeframe_ms
       and bar_index <> prev_bar_index + 1)
   or ((prev_open_time_ms is null or open_time_ms - prev_open_time_ms <> timeframe_ms)
       and bar_index <> 0)
