"""
# `saga_recovery` — finish sagas that their runs left unfinished

Every 10 minutes (`DBT_PLATFORM_RECOVERY_SCHEDULE`): finds sagas (of every kind: creation, new environment, rotation, decommission)
still EXECUTING or COMPENSATING whose Airflow run is over (failed, timed out, killed, marked by hand)
or past the saga deadline, and compensates them (or, past their pivot, finishes them forward).

**Re-drive** a FAILED saga (a compensation that failed for good) once the cause is fixed: trigger this
DAG with conf `{"saga_id": "<id>"}`.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, task

from include.dbt_platform.config import get_settings
from include.dbt_platform.forms import param
from include.dbt_platform.saga.recovery import recover_all
from include.dbt_platform.sagas import definitions

with DAG(
    dag_id="saga_recovery",
    schedule=get_settings().recovery_schedule,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["saga", "operations"],
    params={
        "saga_id": param(
            None,
            type=["string", "null"],
            title="Saga to re-drive",
            description="Leave empty to sweep every unfinished saga.",
        )
    },
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(seconds=30)},
):

    @task
    def recover(params=None) -> dict:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        return recover_all(
            definitions(), RuntimeTaskInstance.get_dagrun_state, saga_id=(params or {}).get("saga_id")
        )

    recover()
