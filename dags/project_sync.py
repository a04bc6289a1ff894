"""
# `project_sync` — what owners push is what their transformation DAGs run

Every minute: for each project the platform created, reads the head of `main` in its repository on
the git server and, if it is new, fetches that commit, builds its manifest (`dbt deps`, `dbt parse`)
and deploys it into the registered-projects DAG bundle. The dag-processor picks the new bundle commit
up within 30 s: the project's DAG shows the new models as tasks, and every worker runs that commit.

A push dbt cannot parse is **not** deployed: the last good version keeps running, the project DAG's
doc says why at its top, and this task's log has dbt's message. Trigger this DAG with conf
`{"projects": ["<name>"]}` to sync some projects at once instead of waiting.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, task

from include.dbt_platform.forms import param
from include.dbt_platform.transformations.sync import sync_projects

with DAG(
    dag_id="project_sync",
    schedule=timedelta(minutes=1),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["dbt", "operations"],
    params={
        "projects": param(
            [],
            type="array",
            items={"type": "string"},
            title="Projects",
            description="Only these projects (empty: every registered project).",
        )
    },
    default_args={"owner": "data-platform", "retries": 2, "retry_delay": timedelta(seconds=20)},
):

    @task(execution_timeout=timedelta(minutes=10))
    def sync(params=None) -> dict:
        return sync_projects((params or {}).get("projects") or None)

    sync()
