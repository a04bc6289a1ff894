{#- Map an HR department code to its display name. Codes arrive in any case and
    with stray whitespace; anything unknown (or missing) becomes 'Unknown' so the
    marts never carry NULL departments. -#}
{% macro map_department(code_column) -%}
    case upper(trim({{ code_column }}))
        when 'ENG' then 'Engineering'
        when 'FIN' then 'Finance'
        when 'HR' then 'People'
        when 'MKT' then 'Marketing'
        when 'OPS' then 'Operations'
        else 'Unknown'
    end
{%- endmacro %}
