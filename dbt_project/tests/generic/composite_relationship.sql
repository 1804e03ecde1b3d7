{# Rows of the model with no row in `to` sharing all `columns` (relationships over a composite key). #}
{% test composite_relationship(model, to, columns) %}
select m.*
from {{ model }} as m
where not exists (
    select 1 from {{ to }} as t
    where {% for column in columns %}t.{{ column }} = m.{{ column }}{% if not loop.last %} and {% endif %}{% endfor %}
)
{% endtest %}
