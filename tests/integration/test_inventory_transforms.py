"""End to end: the inventory_transforms Cosmos DAG against a real PostgreSQL, run by Airflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.dbt_platform.transformations.factory import build_transformation_dag
from include.dbt_platform.transformations.projects import load_project
from tests.harness import (
    assert_model_lineage,
    assert_run_trace,
    build_manifest,
    copy_project,
    lineage_events,
    query,
    run_dag_test,
)

MODELS = ["stg_users", "stg_applications", "fct_users", "fct_applications"]


def test_inventory_transforms_builds_the_marts(projects_dir: Path, warehouse):
    schema = "inv_e2e"
    project_dir = copy_project("inventory_transforms", projects_dir, schema)
    build_manifest(project_dir)
    dag = build_transformation_dag(load_project(project_dir))

    run, states = run_dag_test(dag)

    assert run.state == "success", states
    # Every model ran as a task, with its tests (the default test behavior, build); a test of two
    # models (two relationships tests, app_owner_exists) has its own task after both.
    for model in MODELS:
        assert states[f"{model}_model_build"] == "success"
    assert states["raw_users_seed_build"] == states["raw_applications_seed_build"] == "success"
    detached = [t for t in states if t.endswith("_test")]
    assert len(detached) == 3 and all(states[t] == "success" for t in detached), states
    retried = {ti.task_id: ti.try_number for ti in run.get_task_instances() if ti.try_number != 1}
    assert not retried, f"no task may need a retry on the happy path: {retried}"
    # Lineage (OpenLineage provider, file transport): a START and a COMPLETE for every model's task,
    # with the model's table as output (Cosmos reports it from dbt's artefacts).
    events = lineage_events(dag.dag_id, run.run_id)
    assert_model_lineage(events, dag.dag_id, {m: f"{m}_model_build" for m in MODELS})
    (complete,) = [
        e
        for e in events
        if e["job"]["name"].endswith("fct_users_model_build") and e["eventType"] == "COMPLETE"
    ]
    assert {i["name"].rsplit(".", 1)[-1] for i in complete["inputs"]} >= {"stg_users", "stg_applications"}
    # Tracing: the run is one trace, with a span per task's dbt invocation and per model dbt ran.
    spans = assert_run_trace(dag.dag_id, run.run_id, MODELS)
    assert {s["name"] for s in spans} >= {"dbt build", "seed raw_users", "test app_owner_exists"}

    assert query(warehouse, f"select count(*) from {schema}.fct_users") == [(12,)]
    assert query(warehouse, f"select count(*) from {schema}.fct_applications") == [(10,)]
    # The macro mapped every code, whatever its case or padding; unknown and missing codes -> Unknown.
    departments = dict(
        query(
            warehouse, f"select email, department from {schema}.fct_users where user_id in (1, 6, 10, 11, 12)"
        )
    )
    assert departments == {
        "ada.lovelace@example.com": "Engineering",
        "barbara.liskov@example.com": "People",
        "frances.allen@example.com": "Marketing",
        "linus.torvalds@example.com": "Unknown",
        "radia.perlman@example.com": "Unknown",
    }
    # Relationships hold: every application has its owner, and ownership counts add up.
    assert query(
        warehouse,
        f"select count(*) from {schema}.fct_applications a "
        f"left join {schema}.fct_users u on u.user_id = a.owner_user_id where u.user_id is null",
    ) == [(0,)]
    assert query(warehouse, f"select sum(applications_owned) from {schema}.fct_users") == [(10,)]
    assert query(
        warehouse,
        f"select applications_owned, high_criticality_owned from {schema}.fct_users where user_id = 4",
    ) == [(2, 2)]


def test_duplicate_email_fails_at_the_stg_users_tests_and_a_fixed_rerun_succeeds(
    projects_dir: Path, warehouse
):
    schema = "inv_bad_data"
    project_dir = copy_project("inventory_transforms", projects_dir, schema)
    users_csv = project_dir / "seeds" / "raw_users.csv"
    clean = users_csv.read_text()
    # Same person, different case and padding: only the normalised email collides.
    users_csv.write_text(clean + "13, ADA.Lovelace@example.com,Ada Again,ENG,true,2024-06-01\n")
    build_manifest(project_dir)
    dag = build_transformation_dag(load_project(project_dir))
    for task in dag.tasks:  # retries are tested on the real scheduler; here the data error is for good
        task.retries = 0

    run, states = run_dag_test(dag)

    assert run.state == "failed"
    assert states["stg_users_model_build"] == "failed", "its unique test failed"
    # Nothing downstream of the failing test ran.
    for task_id in ("fct_users_model_build", "fct_applications_model_build"):
        assert states[task_id] == "upstream_failed", (task_id, states[task_id])
    # The independent branch is unaffected.
    assert states["stg_applications_model_build"] == "success"
    assert query(
        warehouse,
        "select count(*) from information_schema.tables where table_schema = %s and table_name like 'fct_%%'",
        (schema,),
    ) == [(0,)]

    users_csv.write_text(clean)
    rerun, states = run_dag_test(dag)
    assert rerun.state == "success", states
    assert query(warehouse, f"select count(*) from {schema}.fct_users") == [(12,)]


@pytest.fixture(autouse=True)
def _drop_test_schemas(warehouse):
    yield
    for schema in ("inv_e2e", "inv_e2e_raw", "inv_bad_data", "inv_bad_data_raw"):
        query_no_result(warehouse, f"drop schema if exists {schema} cascade")


def query_no_result(conn, sql: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql)
