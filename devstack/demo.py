"""What ``make run`` shows once the stack is up: a transformation run and a project created by the saga."""

from __future__ import annotations

import time

from devstack import observability
from devstack.airflow import AirflowTarget
from devstack.client import AirflowClient, client_for
from devstack.settings import StackError, StackSettings, airflow_user_password_file


def describe(stack: StackSettings, target: AirflowTarget) -> str:
    return (
        f"Airflow UI:   {target.api_url}  (user: admin, password: {airflow_user_password_file(stack, 'admin')})\n"
        f"              requester (the lifecycle DAGs only): requester, password: "
        f"{airflow_user_password_file(stack, 'requester')}\n"
        f"              read-only: viewer, password: {airflow_user_password_file(stack, 'viewer')}\n"
        f"Sagas:        {target.api_url}/plugin/sagas\n"
        f"PostgreSQL:   postgresql://postgres:$(cat {stack.secrets_dir / 'pg_admin_password'})"
        f"@127.0.0.1:{stack.pg_port}/postgres\n"
        f"Databases:    {target.metadata_db} (Airflow metadata), {target.warehouse_db} (dbt), "
        f"{target.platform_db} (saga journal)\n"
        f"PG data:      {stack.pg_data_dir}\n"
        f"OpenBao:      {stack.openbao_url}  (connections under the KV mount '{target.secrets_mount}'; "
        f"root token and unseal key: {stack.secrets_dir / 'openbao_init.json'})\n"
        f"git server:   {stack.git_url}/{target.git_org}/<project>.git  (user dbt-platform, password: "
        f"{stack.secrets_dir / 'git_password'})\n"
        f"Logs:         {target.home / 'component-logs'}\n" + "\n".join(observability.describe(stack, target))
    )


def run_and_report(client: AirflowClient, dag_id: str, conf: dict | None, label: str, order=sorted) -> dict:
    """Trigger a run through the REST API, wait for it, print every task's state; return the run."""
    client.wait_for_dag(dag_id)
    run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
    status, body = client.trigger(dag_id, run_id, conf)
    if status not in (200, 201):
        raise StackError(f"triggering {dag_id} failed: HTTP {status} {body}")
    print(f"Triggered {dag_id}{label} (run {run_id}) through the REST API; waiting…", flush=True)
    started = time.monotonic()
    run = client.wait_for_run(dag_id, run_id)
    states = client.task_states(dag_id, run_id)
    print(f"Run {run_id}: {run['state']} in {time.monotonic() - started:.0f}s")
    for task_id in order(states):
        print(f"  {states[task_id] or 'none':<16} {task_id}")
    return {**run, "task_states": states}


def demo(stack: StackSettings, target: AirflowTarget, dag_id: str = "inventory_transforms") -> int:
    run = run_and_report(client_for(stack, target), dag_id, None, "")
    print(f"See it in the UI: {target.api_url}/dags/{dag_id}/runs/{run['dag_run_id']}")
    return 0 if run["state"] == "success" else 1


DEMO_PROJECT = "demo_analytics"


def demo_project_saga(stack: StackSettings, target: AirflowTarget, name: str = DEMO_PROJECT) -> int:
    """Create one dbt project through the saga. A fixed idempotency key: re-running creates nothing."""
    dag_id = "dbt_project_create"
    conf = {
        "project_name": name,
        "owner": "analytics@example.com",
        "description": "Created by the make run demo",
        "environments": ["dev", "prod"],
        "database_mode": "new",
        "database_name": None,
        "readers": [],
        "idempotency_key": f"make-run-demo-{name}",
    }
    print()
    run = run_and_report(client_for(stack, target), dag_id, conf, f" for project '{name}'", order=list)
    run_id = run["dag_run_id"]
    states = run["task_states"]
    if states.get("validate_request") == "skipped":
        print(f"  (idempotency key already used: an earlier make run created '{name}'; nothing new was made)")
    print(
        f"See it in the UI:  {target.api_url}/dags/{dag_id}/runs/{run_id}\n"
        f"Its DAG:           {target.api_url}/dags/{name} (appears within a minute of the first run)\n"
        f"Its database:      dbt_{name} (schemas {name}_dev, {name}_prod), connections dbt_{name}_dev/_prod\n"
        f"Its repository:    {stack.git_url}/{target.git_org}/{name}.git (push to main: `project_sync`\n"
        "                   deploys it within a few minutes)\n"
        f"The saga journal:  database {target.platform_db}, schema saga (`make dsn` prints the admin URL):\n"
        "                   select saga_id, state, created_at from saga.sagas order by created_at desc;"
    )
    return 0 if run["state"] == "success" else 1
