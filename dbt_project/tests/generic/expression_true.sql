{# Rows where a boolean SQL expression is false (NULL counts as passing: columns may be unwarmed). #}
{% test expression_true(model, expression) %}
select *
from {{ model }}
where not ({{ expression }})
{% endtest %}
