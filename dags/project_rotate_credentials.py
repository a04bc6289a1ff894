"""
# `dbt_project_rotate_credentials` — new passwords for a project's login roles (a saga)

Trigger with the form (or `POST /api/v2/dags/dbt_project_rotate_credentials/dagRuns`): the project and
the environments to rotate (empty: all). Each Airflow connection gets a new password, then its role; the old
password stops working. A run already connected keeps its session; one starting in the instant
between the two statements is refused once and retried. A failure puts the old passwords back.

Declared in `include/dbt_platform/project_lifecycle/rotate_credentials.py`.
"""

from include.dbt_platform.config import REQUESTER_ROLE
from include.dbt_platform.project_lifecycle.requests import rotate_credentials_params
from include.dbt_platform.project_lifecycle.rotate_credentials import definition
from include.dbt_platform.saga.tasks import saga_dag

dag = saga_dag(
    definition(),
    params=rotate_credentials_params(),
    doc_md=__doc__,
    tags=["dbt", "self-service", "saga"],
    triggered_by=REQUESTER_ROLE,
)
