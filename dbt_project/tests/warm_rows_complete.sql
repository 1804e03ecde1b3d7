-- A warm row must carry every indicator: the env reads warm rows only and cannot take NULLs.
select exchange, symbol, timeframe, open_time_ms
from {{ ref('indicators') }}
where warm and (
    log_return is null or rsi_14 is null or bb_middle_20 is null or bb_upper_20 is null
    or bb_lower_20 is null or bb_pctb_20 is null or bb_width_20 is null or macd is null
    or macd_signal is null or macd_hist is null or atr_14 is null or volatility_24 is null
    or volume_z_24 is null
    or 'NaN'::float8 in (log_return, rsi_14, bb_pctb_20, bb_width_20, macd, macd_signal, atr_14,
                         volatility_24, volume_z_24)
)
