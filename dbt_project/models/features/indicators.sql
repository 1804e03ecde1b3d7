{#
  features.indicators: one row per candle with TA-Lib-equal indicators (see indicators.yml).

  Gap rule: a series is cut into segments of consecutive bars; a new segment starts at the first
  candle, and wherever open_time_ms - previous open_time_ms <> timeframe_ms (any missing bar).
  Every indicator restarts in a new segment exactly as TA-Lib would on that segment alone;
  bar_index counts bars since the segment start and warm = bar_index >= 33 (MACD signal, the
  longest TA-Lib lookback; every column is non-null from there).

  Incremental runs: new candles (ingested since the newest processed one, minus a safety lag, and
  not yet in the table in that version) select the series to update. Per series the anchor is
  the last warm row before the earliest new candle; its stored recursive states (Wilder averages,
  ATR, both EMAs, MACD signal) seed the aggregates and `context_bars` candles before it feed the
  rolling windows, so every row after the anchor comes out bit-identical to a full refresh.
  Without an anchor (new series, or no warm row yet) the whole series is recomputed.
#}
{# Joins only occur in incremental runs, where a few series meet big tables: index lookups
   (nested loops; merge and hash joins off) beat sorting or hashing a million rows, and the
   small CTEs are materialized so the anchor lookup runs once per series, not once per candle.
   analyze: fresh statistics for the next incremental run (a rebuilt table has none until
   autovacuum gets to it). #}
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key=['exchange', 'symbol', 'timeframe', 'open_time_ms'],
    on_schema_change='fail',
    indexes=[
        {'columns': ['exchange', 'symbol', 'timeframe', 'open_time_ms'], 'unique': True},
        {'columns': ['source_ingested_at']},
    ],
    pre_hook="set local work_mem = '256MB'; set local enable_mergejoin = off; set local enable_hashjoin = off",
    post_hook="analyze {{ this }}",
) }}
{%- set warm_bars = 33 -%}

with
{% if is_incremental() %}
watermark as (
    select coalesce(max(source_ingested_at), '-infinity'::timestamptz)
           - interval '{{ var("ingest_lag_minutes") }} minutes' as since
    from {{ this }}
),

new_candles as materialized (
    -- candles whose current version has no feature row yet
    select c.exchange, c.symbol, c.timeframe, min(c.open_time_ms) as first_new_ms
    from {{ ref('stg_ohlcv') }} as c
    where c.ingested_at > (select since from watermark)
      and not exists (
          select 1
          from {{ this }} as f
          where f.exchange = c.exchange and f.symbol = c.symbol and f.timeframe = c.timeframe
            and f.open_time_ms = c.open_time_ms and f.source_ingested_at = c.ingested_at
      )
    group by c.exchange, c.symbol, c.timeframe
),

series as materialized (
    select
        n.exchange, n.symbol, n.timeframe,
        {{ timeframe_ms('n.timeframe') }} as series_timeframe_ms,
        a.open_time_ms as anchor_ms,
        a.bar_index as anchor_bar_index,
        a.rsi_avg_gain_14 as anchor_avg_gain,
        a.rsi_avg_loss_14 as anchor_avg_loss,
        a.atr_14 as anchor_atr,
        a.ema_12 as anchor_ema_12,
        a.ema_26 as anchor_ema_26,
        a.macd_signal as anchor_signal
    from new_candles as n
    left join lateral (
        select f.*
        from {{ this }} as f
        where f.exchange = n.exchange and f.symbol = n.symbol and f.timeframe = n.timeframe
          and f.open_time_ms < n.first_new_ms and f.bar_index >= {{ warm_bars }}
        order by f.open_time_ms desc
        limit 1
    ) as a on true
),

candles as (
    select
        c.*,
        s.anchor_ms, s.anchor_bar_index, s.anchor_avg_gain, s.anchor_avg_loss, s.anchor_atr,
        s.anchor_ema_12, s.anchor_ema_26, s.anchor_signal
    from series as s
    join {{ ref('stg_ohlcv') }} as c
      on c.exchange = s.exchange and c.symbol = s.symbol and c.timeframe = s.timeframe
     and c.open_time_ms >= coalesce(
            s.anchor_ms - {{ var('context_bars') }} * s.series_timeframe_ms, -9223372036854775807)
),
{% else %}
candles as (
    select
        c.*,
        null::bigint as anchor_ms,
        null::bigint as anchor_bar_index,
        null::float8 as anchor_avg_gain,
        null::float8 as anchor_avg_loss,
        null::float8 as anchor_atr,
        null::float8 as anchor_ema_12,
        null::float8 as anchor_ema_26,
        null::float8 as anchor_signal
    from {{ ref('stg_ohlcv') }} as c
),
{% endif %}

islands as (
    -- Consecutive bars share open_time_ms / timeframe_ms - row_number(): the segment key
    -- (bars are aligned to multiples of the timeframe, as Binance's are; the gap_rule test
    -- would catch anything else). A timeframe without fixed length makes each row its own segment.
    select
        c.*,
        case when timeframe_ms is null then open_time_ms
             else open_time_ms / timeframe_ms - row_number() over w_series end as seg_no
    from candles as c
    window w_series as (partition by exchange, symbol, timeframe order by open_time_ms)
),

steps as (
    select
        i.*,
        row_number() over w_run - 1 as local_index,
        first_value(open_time_ms) over w_run as local_start_ms,
        lag(close) over w_run as prev_close,
        lag(volume) over w_run as prev_volume
    from islands as i
    window w_run as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                     rows between unbounded preceding and current row)
),

inputs as (
    select
        st.*,
        -- local_index counts from the first row this query sees; in the anchor's segment, which
        -- may start inside the context, the true index comes from the anchor's stored one.
        case when local_start_ms <= anchor_ms
             then anchor_bar_index + (open_time_ms - anchor_ms) / timeframe_ms
             else local_index end as bar_index,
        -- TA-Lib RSI: a rise adds to the gains, a fall (diff < 0) to the losses
        case when close - prev_close < 0 then 0.0::float8 else close - prev_close end as gain,
        case when close - prev_close < 0 then prev_close - close
             when prev_close is not null then 0.0::float8 end as loss,
        case when prev_close is not null
             then greatest(high - low, abs(prev_close - high), abs(prev_close - low)) end as true_range,
        ln(close / prev_close) as log_return_raw,
        coalesce((close <> prev_close)::int, 1) as close_changed,
        coalesce((volume <> prev_volume)::int, 1) as volume_changed
    from steps as st
),

windows as (
    select
        i.*,
        -- seeds: TA-Lib starts each recursion from the plain (sequential) sum of its first n inputs
        sum(close) over w_run as sum_close,
        sum(case when bar_index >= 14 then close end) over w_run as sum_close_fast,
        sum(gain) over w_run as sum_gain,
        sum(loss) over w_run as sum_loss,
        sum(true_range) over w_run as sum_true_range,
        -- rolling windows: {N, Sx, Sxx} moments, and how many bar-to-bar changes the window holds
        -- (zero = all values equal: the deviation is then exactly 0, not a rounding residue)
        features.float8_moments(close) over w_20 as close_moments,
        sum(close_changed) over w_20 - lag(close_changed, 19) over w_20 as close_changes_20,
        -- (log return, volume) pairs: x = log return, 0 at a segment start, a bar volatility_24
        -- never reaches (it needs bars 1..24, volume_z_24 bars 0..23)
        features.float8_pair_moments(volume, coalesce(log_return_raw, 0.0::float8)) over w_24
            as pair_moments_24,
        sum(volume_changed) over w_24 - lag(volume_changed, 23) over w_24 as volume_changes_24
    from inputs as i
    window
        w_run as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                  rows between unbounded preceding and current row),
        w_20 as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                 rows between 19 preceding and current row),
        w_24 as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                 rows between 23 preceding and current row)
),

smoothed as (
    select
        w.*,
        features.ta_wilder(
            gain,
            case when open_time_ms = anchor_ms then anchor_avg_gain when bar_index = 14 then sum_gain / 14 end,
            14
        ) over w_run as avg_gain,
        features.ta_wilder(
            loss,
            case when open_time_ms = anchor_ms then anchor_avg_loss when bar_index = 14 then sum_loss / 14 end,
            14
        ) over w_run as avg_loss,
        features.ta_wilder(
            true_range,
            case when open_time_ms = anchor_ms then anchor_atr when bar_index = 14 then sum_true_range / 14 end,
            14
        ) over w_run as atr,
        -- TA-Lib's MACD starts the fast EMA at bar 26 - 12 = 14 so both EMAs seed at bar 25
        features.ta_ema(
            close,
            case when open_time_ms = anchor_ms then anchor_ema_12 when bar_index = 25 then sum_close_fast / 12 end,
            2::float8 / 13
        ) over w_run as ema_fast,
        features.ta_ema(
            close,
            case when open_time_ms = anchor_ms then anchor_ema_26 when bar_index = 25 then sum_close / 26 end,
            2::float8 / 27
        ) over w_run as ema_slow
    from windows as w
    window w_run as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                     rows between unbounded preceding and current row)
),

macd_sums as (
    select
        sm.*,
        sum(ema_fast - ema_slow) over w_run as sum_macd
    from smoothed as sm
    window w_run as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                     rows between unbounded preceding and current row)
),

signal as (
    select
        ms.*,
        features.ta_ema(
            ema_fast - ema_slow,
            case when open_time_ms = anchor_ms then anchor_signal when bar_index = 33 then sum_macd / 9 end,
            2::float8 / 10
        ) over w_run as signal_line
    from macd_sums as ms
    window w_run as (partition by exchange, symbol, timeframe, seg_no order by open_time_ms
                     rows between unbounded preceding and current row)
),

bands as (
    select
        sg.*,
        close_moments[2] / close_moments[1] as sma_20,
        case when close_changes_20 = 0 then 0.0::float8
             else sqrt(close_moments[3] / close_moments[1]) end as band_std,
        sqrt(pair_moments_24[3] / nullif(pair_moments_24[1] - 1.0::float8, 0)) as volatility_raw,
        pair_moments_24[4] / pair_moments_24[1] as volume_mean_24,
        sqrt(pair_moments_24[5] / nullif(pair_moments_24[1] - 1.0::float8, 0)) as volume_std_24
    from signal as sg
    where open_time_ms > coalesce(anchor_ms, -9223372036854775807)
)

select
    exchange,
    symbol,
    timeframe,
    open_time_ms,
    open,
    high,
    low,
    close,
    volume,
    case when bar_index >= 1 then log_return_raw end as log_return,
    case when bar_index >= 14 then
        case when avg_gain + avg_loss = 0 then 50.0::float8
             else 100 * (avg_gain / (avg_gain + avg_loss)) end
    end as rsi_14,
    case when bar_index >= 19 then sma_20 end as bb_middle_20,
    case when bar_index >= 19 then sma_20 + band_std * 2 end as bb_upper_20,
    case when bar_index >= 19 then sma_20 - band_std * 2 end as bb_lower_20,
    case when bar_index >= 19 then
        case when band_std > 0
             then (close - (sma_20 - band_std * 2)) / ((sma_20 + band_std * 2) - (sma_20 - band_std * 2))
             else 0.5::float8 end
    end as bb_pctb_20,
    case when bar_index >= 19 then ((sma_20 + band_std * 2) - (sma_20 - band_std * 2)) / sma_20 end
        as bb_width_20,
    case when bar_index >= {{ warm_bars }} then ema_fast - ema_slow end as macd,
    case when bar_index >= {{ warm_bars }} then signal_line end as macd_signal,
    case when bar_index >= {{ warm_bars }} then (ema_fast - ema_slow) - signal_line end as macd_hist,
    case when bar_index >= 14 then atr end as atr_14,
    case when bar_index >= 24 then volatility_raw end as volatility_24,
    case when bar_index >= 23 then
        case when volume_changes_24 = 0 or volume_std_24 = 0 then 0.0::float8
             else (volume - volume_mean_24) / volume_std_24 end
    end as volume_z_24,
    bar_index >= {{ warm_bars }} as warm,
    bar_index,
    case when bar_index >= 14 then avg_gain end as rsi_avg_gain_14,
    case when bar_index >= 14 then avg_loss end as rsi_avg_loss_14,
    case when bar_index >= 25 then ema_fast end as ema_12,
    case when bar_index >= 25 then ema_slow end as ema_26,
    ingested_at as source_ingested_at
from bands
