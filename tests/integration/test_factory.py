"""The DAG factory: a dbt project dropped into the projects folder becomes a DAG; a broken one is an
import error naming it, while the others still load."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.transformations.projects import DbtProjectError, load_project
from tests.harness import build_manifest, query, run_dag_test

DAGS_FOLDER = REPO_ROOT / "dags"


def transformation_dags(bag: DagBag) -> set[str]:
    return {dag_id for dag_id, dag in bag.dags.items() if "transformations" in dag.tags}


def write_tiny_project(root: Path, name: str) -> Path:
    project = root / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        textwrap.dedent(
            f"""
            name: {name}
            version: "1.0.0"
            config-version: 2
            profile: {name}
            models:
              {name}:
                +materialized: table
            """
        )
    )
    (project / "models" / "numbers.sql").write_text("select n from generate_series(1, 5) as n\n")
    (project / "models" / "_models.yml").write_text(
        textwrap.dedent(
            """
            version: 2
            models:
              - name: numbers
                description: Five numbers.
                columns:
                  - name: n
                    data_tests: [unique, not_null]
            """
        )
    )
    return project


def test_new_project_becomes_a_dag_and_runs_green(projects_dir: Path, warehouse):
    project = write_tiny_project(projects_dir, "tiny_factory_project")
    build_manifest(project)

    bag = DagBag(dag_folder=str(DAGS_FOLDER))

    assert bag.import_errors == {}
    assert transformation_dags(bag) == {"tiny_factory_project"}
    dag = bag.dags["tiny_factory_project"]
    assert "numbers_model_build" in dag.task_ids, "the model and its tests: one task (build)"
    run, states = run_dag_test(dag)
    assert run.state == "success", states
    assert query(warehouse, "select sum(n) from tiny_factory_project.numbers") == [(15,)]
    with warehouse.cursor() as cur:
        cur.execute("drop schema tiny_factory_project cascade")


def test_broken_project_is_an_import_error_naming_it_while_others_load(projects_dir: Path):
    healthy = write_tiny_project(projects_dir, "healthy_project")
    build_manifest(healthy)
    write_tiny_project(projects_dir, "no_manifest_project")  # never parsed: no manifest
    bad_yaml = projects_dir / "bad_yaml_project"
    bad_yaml.mkdir()
    (bad_yaml / "dbt_project.yml").write_text("name: [unclosed\n")

    bag = DagBag(dag_folder=str(DAGS_FOLDER))

    assert transformation_dags(bag) == {"healthy_project"}
    assert len(bag.import_errors) == 1
    ((error_file, message),) = bag.import_errors.items()
    assert error_file.endswith("transformation_import_errors.py")
    assert "no_manifest_project" in message and "make manifests" in message
    assert "bad_yaml_project" in message


def test_manifest_build_reports_dbt_errors(projects_dir: Path):
    project = write_tiny_project(projects_dir, "broken_sql_project")
    (project / "models" / "bad.sql").write_text("select {{ ref('does_not_exist') }}\n")
    with pytest.raises(DbtProjectError, match="broken_sql_project"):
        build_manifest(project)


def test_test_behavior_after_each_gives_tests_their_own_task(tmp_path: Path):
    from include.dbt_platform.transformations.factory import build_transformation_dag

    project_dir = write_tiny_project(tmp_path, "tiny_after_each")
    (project_dir / "platform.yml").write_text("test_behavior: after_each\nexecution_mode: triggerer\n")
    build_manifest(project_dir)
    dag = build_transformation_dag(load_project(project_dir))
    assert {"numbers.run", "numbers.test"} <= set(dag.task_ids)
    assert "numbers_model_build" not in dag.task_ids


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("", None),  # the platform grants nothing of its own
        ("access_roles: []\n", {}),  # still synced: what an earlier DAG of the name granted is revoked
        (
            "access_roles: ['owner:ana@example.com']\n",
            {
                "owner:ana@example.com": {
                    "DAGs": {"can_read", "can_edit"},
                    "DAG Runs": {"can_read", "can_create"},
                }
            },
        ),
    ],
)
def test_a_project_dag_grants_its_access_roles_and_nothing_else(tmp_path: Path, platform: str, expected):
    from include.dbt_platform.transformations.factory import build_transformation_dag

    project_dir = write_tiny_project(tmp_path, "tiny_access")
    (project_dir / "platform.yml").write_text(platform)
    build_manifest(project_dir)
    assert build_transformation_dag(load_project(project_dir)).access_control == expected


@pytest.mark.parametrize(
    ("platform", "message"),
    [
        ("test_behavior: sometimes\n", "test behavior 'sometimes'; expected one of"),
        ("test_behavior: build\nexecution_mode: watcher\n", "not available in Cosmos' stock 'watcher'"),
    ],
)
def test_unknown_or_unsupported_test_behavior_is_a_clear_error(tmp_path: Path, platform: str, message: str):
    from include.dbt_platform.transformations.factory import build_transformation_dag

    project_dir = write_tiny_project(tmp_path, "tiny_bad_behavior")
    (project_dir / "platform.yml").write_text(platform)
    with pytest.raises(ValueError, match=message):
        build_transformation_dag(load_project(project_dir))


def test_a_task_process_renders_only_its_own_dag(projects_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from include.dbt_platform.transformations.factory import build_transformation_dags

    for name in ("first_project", "second_project"):
        build_manifest(write_tiny_project(projects_dir, name))
    assert set(build_transformation_dags()) == {"first_project", "second_project"}
    # Airflow sets the parsing context when a task process parses the file for one DAG's task.
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "second_project")
    assert set(build_transformation_dags()) == {"second_project"}
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "some_other_dag")
    assert set(build_transformation_dags()) == {"first_project", "second_project"}
