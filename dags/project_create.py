"""
# `dbt_project_create` — self-service dbt project creation (a saga)

Trigger with the form (or `POST /api/v2/dags/dbt_project_create/dagRuns` with the same fields in
`conf`). Nine steps provision the project; if one fails for good, `compensate` undoes, newest first,
exactly what this saga made. The run ends **success only when the saga COMPLETED** (`report_outcome`,
whose XCom `saga_outcome` says the saga's state and, if it failed, its first cause).

State lives in the saga journal (platform database, schema `saga`). A run that times out, is killed
or is marked failed is compensated by this Airflow DAG's failure callback or by `saga_recovery`.
The saga is declared in `include/dbt_platform/project_creation/definition.py`.
"""

from include.dbt_platform.config import REQUESTER_ROLE
from include.dbt_platform.project_creation.definition import definition
from include.dbt_platform.project_creation.request import dag_params
from include.dbt_platform.saga.tasks import saga_dag

dag = saga_dag(
    definition(),
    params=dag_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    triggered_by=REQUESTER_ROLE,
)
