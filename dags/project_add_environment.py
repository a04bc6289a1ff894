"""
# `dbt_project_add_environment` — a new environment for an active project (a saga)

Trigger with the form (or `POST /api/v2/dags/dbt_project_add_environment/dagRuns` with the same
fields in `conf`): the project and the environment (dev, staging or prod). It gets a schema, a login
role with its Airflow connection and the grants every environment has; if it becomes the primary one
(prod, else the highest), the project's transformation DAG targets it. A failure undoes, newest first,
what this saga made; the run ends success only when the saga COMPLETED.

Declared in `include/dbt_platform/project_lifecycle/add_environment.py`.
"""

from include.dbt_platform.config import REQUESTER_ROLE
from include.dbt_platform.project_lifecycle.add_environment import definition
from include.dbt_platform.project_lifecycle.requests import add_environment_params
from include.dbt_platform.saga.tasks import saga_dag

dag = saga_dag(
    definition(),
    params=add_environment_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    triggered_by=REQUESTER_ROLE,
)
