"""
# `dbt_project_create` — self-service dbt project creation (a saga)

Trigger with the form (or `POST /api/v2/dags/dbt_project_create/dagRuns` with the same fields in
`conf`). Nine steps provision the project; if one fails for good, `compensate` undoes, newest first,
exactly what this saga made. The run ends **success only when the saga COMPLETED** (`report_outcome`).

State lives in the saga journal (platform database, schema `saga`). A run that times out, is killed
or is marked failed is compensated by this DAG's failure callback or by `saga_recovery`.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG

from include.dbt_platform.config import get_settings
from include.dbt_platform.project_request import dag_params
from include.dbt_platform.project_saga import definition
from include.dbt_platform.saga.engine import build_tasks, recover_run


def _compensate_unfinished_saga(context) -> None:
    """DAG failure callback (run by the dag-processor): also fires on dagrun_timeout."""
    run = context["dag_run"]
    recover_run(
        definition(), run.dag_id, run.run_id, reason=f"run ended {run.state}: {context.get('reason')}"
    )


with DAG(
    dag_id="dbt_project_create",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=16,
    dagrun_timeout=definition().timeout,
    params=dag_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    default_args={"owner": "data-platform", "retries": 3, "retry_delay": timedelta(seconds=5)},
    on_failure_callback=_compensate_unfinished_saga,
    render_template_as_native_obj=True,
) as dag:
    retry_delay = get_settings().saga_retry_delay_seconds
    build_tasks(
        definition(), retry_delay_override=None if retry_delay is None else timedelta(seconds=retry_delay)
    )
