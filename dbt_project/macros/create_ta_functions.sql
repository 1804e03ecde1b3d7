{#
  Recursive smoothing for the indicators, as custom aggregates used as window functions
  (frame: ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW, so PostgreSQL advances one state per row).

  Both aggregates take (x, init, param) and keep one float8 state:
    - init IS NOT NULL: the state becomes init (seed with the SMA of the first n values at the
      first output bar, or with the stored state of the anchor row in an incremental run);
    - otherwise, state NULL stays NULL (not seeded yet), else one recursion step.
  The arithmetic is written exactly as TA-Lib's C code, so results agree to the last bits:
    ta_ema:    s + k*(x - s) written as ((x - s) * k) + s, k = 2 / (n + 1)     (TA_INT_EMA)
    ta_wilder: ((s * (n - 1)) + x) / n                                          (TA_RSI, TA_ATR)
  float8_moments / float8_pair_moments return the {N, Sx, Sxx[, Sy, Syy, Sxy]} states of the
  built-in float8 aggregates (avg/stddev, regr_*), so one frame pass gives a mean and a deviation
  (of two columns): rolling frames are re-aggregated for every row, the costly part of the model.
  Created in one DO block under an advisory lock so concurrent dbt runs do not race on the catalog.
#}
{% macro create_ta_functions() %}
do $do$
begin
    perform pg_advisory_xact_lock(727003);
    create schema if not exists features;

    create or replace function features.ta_ema_step(s float8, x float8, init float8, k float8)
    returns float8 language plpgsql immutable parallel safe as $fn$
    begin
        if init is not null then return init; end if;
        return ((x - s) * k) + s;
    end
    $fn$;

    create or replace aggregate features.ta_ema(float8, float8, float8) (
        sfunc = features.ta_ema_step, stype = float8
    );

    create or replace function features.ta_wilder_step(s float8, x float8, init float8, n float8)
    returns float8 language plpgsql immutable parallel safe as $fn$
    begin
        if init is not null then return init; end if;
        return ((s * (n - 1)) + x) / n;
    end
    $fn$;

    create or replace aggregate features.ta_wilder(float8, float8, float8) (
        sfunc = features.ta_wilder_step, stype = float8
    );

    -- {N, Sx, Sxx} of a window with PostgreSQL's own float8_accum (the state avg, stddev_pop and
    -- stddev_samp share): one pass gives mean Sx/N and the variances Sxx/N, Sxx/(N-1), equal to
    -- the built-in aggregates bit for bit.
    create or replace aggregate features.float8_moments(float8) (
        sfunc = float8_accum, stype = float8[], initcond = '{0,0,0}'
    );

    -- {N, Sx, Sxx, Sy, Syy, Sxy} of (y, x) pairs with float8_regr_accum (the regr_* state):
    -- moments of two columns over the same window for the price of one frame pass.
    create or replace aggregate features.float8_pair_moments(float8, float8) (
        sfunc = float8_regr_accum, stype = float8[], initcond = '{0,0,0,0,0,0}'
    );
end
$do$;
{% endmacro %}
