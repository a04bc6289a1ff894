"""Pushes take effect on a real Airflow: a project created through the REST API appears from the
registered-projects bundle (GitDagBundle on the git server); the owner pushes a new model;
``project_sync`` deploys it; the dag-processor picks the new bundle commit up, the DAG shows the
model as a task, and a run executes it on a worker that checked that bundle commit out. A push dbt
cannot parse leaves the last good version running, and the DAG's doc says why."""

from __future__ import annotations

import uuid

import pytest

from tests.harness import wait_for
from tests.saga_support import (
    BROKEN_MODEL,
    NEW_MODEL,
    admin,
    push,
    query,
    request,
    undo_completed_sagas,
    uniq,
)


@pytest.fixture(scope="module")
def client(live_airflow):
    live_airflow.wait_for_dag("dbt_project_create")
    live_airflow.wait_for_dag("project_sync")
    return live_airflow


def run(client, dag_id: str, conf: dict | None = None, timeout: float = 600) -> dict:
    run_id = f"test__{uuid.uuid4().hex[:10]}"
    status, body = client.trigger(dag_id, run_id, conf)
    assert status == 200, body
    return client.wait_for_run(dag_id, run_id, timeout=timeout)


def tasks_of(client, dag_id: str) -> set[str]:
    status, body = client.request("GET", f"/dags/{dag_id}/tasks")
    return {t["task_id"] for t in body.get("tasks", [])} if status == 200 else set()


def test_a_push_reaches_the_running_dag_and_a_bad_push_does_not(client):
    name = uniq("live_push")
    assert run(client, "dbt_project_create", request(name, environments=["dev"]))["state"] == "success"
    client.wait_for_dag(name, timeout=240)
    _, dag = client.request("GET", f"/dags/{name}")
    assert dag["bundle_name"] == "registered_projects"
    first_version = dag.get("bundle_version")

    commit = push(name, {"models/example/owner_model.sql": NEW_MODEL}, "Add owner_model")
    assert run(client, "project_sync", {"projects": [name]})["state"] == "success"
    new_tasks = wait_for(
        lambda: {t for t in tasks_of(client, name) if "owner_model" in t},
        240,
        "the dag-processor to show the pushed model as a task",
    )
    _, dag = client.request("GET", f"/dags/{name}/details")
    assert commit in dag["doc_md"] and dag["bundle_version"] != first_version
    outcome = run(client, name)
    assert outcome["state"] == "success" and outcome["bundle_version"] == dag["bundle_version"]
    states = client.task_states(name, outcome["dag_run_id"])
    assert all(states[t] == "success" for t in new_tasks), states
    with admin(f"dbt_{name}") as conn:
        assert query(conn, f"select note from {name}_dev.owner_model") == [("pushed by the owner",)]

    bad = push(name, {"models/example/broken.sql": BROKEN_MODEL}, "A broken model")
    assert run(client, "project_sync", {"projects": [name]})["state"] == "success"

    def warned():
        _, details = client.request("GET", f"/dags/{name}/details")
        return f"the latest push `{bad[:12]}` is not running" in (details.get("doc_md") or "")

    wait_for(warned, 240, "the DAG's doc to say the bad push is not running")
    assert not [t for t in tasks_of(client, name) if "broken" in t]
    assert run(client, name)["state"] == "success", "the last good version keeps running"


@pytest.fixture(autouse=True, scope="module")
def _clean_up_created_projects():
    yield
    undo_completed_sagas()
