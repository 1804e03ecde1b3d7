{# Milliseconds per bar of a ccxt timeframe string ('1m', '15m', '1h', '4h', '1d', '1w', ...).
   A plain CASE (not a regex): it is evaluated once per candle. NULL for anything else (monthly
   bars have no fixed length), which makes every row its own segment: indicators never bridge a
   step they cannot measure. #}
{% macro timeframe_ms(column) -%}
    (case {{ column }}
        {%- for tf, ms in [('1s', 1000), ('1m', 60000), ('3m', 180000), ('5m', 300000),
                           ('15m', 900000), ('30m', 1800000), ('1h', 3600000), ('2h', 7200000),
                           ('4h', 14400000), ('6h', 21600000), ('8h', 28800000), ('12h', 43200000),
                           ('1d', 86400000), ('3d', 259200000), ('1w', 604800000)] %}
        when '{{ tf }}' then {{ ms }}::bigint
        {%- endfor %}
    end)
{%- endmacro %}
