"""
# `dbt_project_decommission` — take a project down (a saga); its name is free again afterwards

Trigger with the form (or `POST /api/v2/dags/dbt_project_decommission/dagRuns`): the project, and
whether to drop its database (a database adopted in `existing` mode is never dropped). Its Airflow
DAG is unregistered, its logins disabled, its repository archived; then (the pivot) its roles are
dropped, and the saga goes forward: connections, repository, database, registry row, owner told.
A failure before the pivot leaves the project as it was.

Declared in `include/dbt_platform/project_lifecycle/decommission.py`.
"""

from include.dbt_platform.config import REQUESTER_ROLE
from include.dbt_platform.project_lifecycle.decommission import definition
from include.dbt_platform.project_lifecycle.requests import decommission_params
from include.dbt_platform.saga.tasks import saga_dag

dag = saga_dag(
    definition(),
    params=decommission_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    triggered_by=REQUESTER_ROLE,
)
