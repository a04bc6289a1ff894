"""The platform's trigger forms: :func:`param`, an Airflow ``Param`` whose JSON schema names its
dialect, draft-07.

Airflow validates a DAG's params with ``jsonschema.validate`` each time it builds a task's template
context, and that first checks each schema against its dialect's metaschema. A schema that names no
dialect is checked against draft 2020-12's, whose vocabularies (``allOf`` of ``$ref``\\ s, dynamic
references) make that check about three times as costly as draft-07's: 12.7 ms against 4.7 ms for
``dbt_project_create``'s nine params here, and a task builds its context several times (the task
runner, then OpenLineage's listener at the start and at the end): about 0.1 s of every saga step on
this 2-core machine. The forms use nothing newer than draft-07 (``type``, ``enum``, ``pattern``,
``minLength``/``maxLength``, ``items``, ``minItems``, ``uniqueItems``, ``examples``, ``format``), and
the trigger form ignores ``$schema``.
"""

from __future__ import annotations

from typing import Any

DIALECT = "http://json-schema.org/draft-07/schema#"


def param(default: Any, **schema: Any):
    """``airflow.sdk.Param(default, **schema)`` with ``$schema`` set to :data:`DIALECT`."""
    from airflow.sdk import Param

    return Param(default, **{"$schema": DIALECT}, **schema)
