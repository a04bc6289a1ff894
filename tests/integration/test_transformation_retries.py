"""A transformation task is retried only when retrying can help (include/dbt_platform/transformations/
failures.py): real dbt runs in LOCAL mode through ``dag.test()``, against the real PostgreSQL."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from include.dbt_platform.transformations.factory import build_transformation_dag
from include.dbt_platform.transformations.projects import load_project
from tests.harness import build_manifest, run_dag_test


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBT_PLATFORM_TRANSFORMATION_RETRY_DELAY_SECONDS", "1")


def write_project(root: Path, name: str, models: dict[str, str], tests: str = "", platform: str = "") -> Path:
    project = root / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {name}\n"
        "models:\n  +materialized: table\n"
    )
    for model, sql in models.items():
        (project / "models" / f"{model}.sql").write_text(sql)
    if tests:
        (project / "models" / "_models.yml").write_text(tests)
    (project / "platform.yml").write_text(f"schema: {name}\n{platform}")
    build_manifest(project)
    return project


def tries(run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}


def test_a_failed_test_or_sql_error_fails_once_and_a_missing_input_is_retried(projects_dir: Path, warehouse):
    name = "retry_classes"
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {name} cascade")
        cur.execute(f"drop schema if exists {name}_ext cascade")
    project = write_project(
        projects_dir,
        name,
        {
            "numbers": "select n from generate_series(1, 5) as n\n",
            "after_numbers": "select n * 2 as n from {{ ref('numbers') }}\n",
            "broken": "selec 1 as n\n",
            "after_broken": "select n from {{ ref('broken') }}\n",
            "needs_input": f"select n from {name}_ext.input\n",
            "independent": "select 1 as n\n",
        },
        tests=(
            "version: 2\nmodels:\n  - name: numbers\n    columns:\n      - name: n\n"
            "        data_tests: [{accepted_values: {values: [1, 2, 3]}}]\n"
        ),
    )
    dag = build_transformation_dag(load_project(project))
    assert all(task.retries == 2 for task in dag.tasks)

    run, _ = run_dag_test(dag)

    outcome = tries(run)
    assert run.state == "failed", outcome
    # Deterministic: the model's test fails (its rows stay the same), a syntax error stays one.
    assert outcome["numbers_model_build"] == ("failed", 1), outcome
    assert outcome["broken_model_build"] == ("failed", 1), outcome
    # ... and their downstream tasks never start.
    assert outcome["after_numbers_model_build"][0] == "upstream_failed", outcome
    assert outcome["after_broken_model_build"][0] == "upstream_failed", outcome
    # Upstream data not there yet (a relation that does not exist): every retry is used.
    assert outcome["needs_input_model_build"] == ("failed", 3), outcome
    assert outcome["independent_model_build"] == ("success", 1), outcome
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {name} cascade")


def test_a_connection_failure_is_retried(projects_dir: Path, monkeypatch: pytest.MonkeyPatch, warehouse):
    with socket.socket() as probe:  # a port nothing listens on: connection refused
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_UNREACHABLE_WAREHOUSE", f"postgres://nobody:x@127.0.0.1:{closed_port}/nothing"
    )
    project = write_project(
        projects_dir,
        "retry_connection",
        {"numbers": "select 1 as n\n", "after_numbers": "select n from {{ ref('numbers') }}\n"},
        platform="conn_id: unreachable_warehouse\n",
    )
    dag = build_transformation_dag(load_project(project))

    run, _ = run_dag_test(dag)

    outcome = tries(run)
    assert run.state == "failed", outcome
    assert outcome["numbers_model_build"] == ("failed", 3), "connection refused: every retry is used"
    assert outcome["after_numbers_model_build"][0] == "upstream_failed", outcome
