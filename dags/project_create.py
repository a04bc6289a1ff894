"""
# `dbt_project_create` — self-service dbt project creation (a saga)

Trigger with the form (or `POST /api/v2/dags/dbt_project_create/dagRuns` with the same fields in
`conf`). Nine steps provision the project; if one fails for good, `compensate` undoes, newest first,
exactly what this saga made. The run ends **success only when the saga COMPLETED** (`report_outcome`).

State lives in the saga journal (platform database, schema `saga`). A run that times out, is killed
or is marked failed is compensated by this DAG's failure callback or by `saga_recovery`.
The saga is declared in `include/dbt_platform/project_creation/definition.py`.
"""

from datetime import UTC, datetime

from airflow.sdk import DAG

from include.dbt_platform.project_creation.definition import definition
from include.dbt_platform.project_creation.request import dag_params
from include.dbt_platform.saga.tasks import build_tasks, failure_callback

saga = definition()

with DAG(
    dag_id="dbt_project_create",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=16,
    dagrun_timeout=saga.timeout,
    params=dag_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    default_args={"owner": "data-platform"},
    on_failure_callback=failure_callback(saga),
    render_template_as_native_obj=True,
):
    build_tasks(saga)
