"""Integrity of every DAG in dags/ (the Astro template's test, extended).

Imports happen in a child process in which opening any socket raises, with the metadata database
pointed at a closed port: a DAG file that touches the database or the network at import time fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from include.dbt_platform.config import REPO_ROOT

DAGS_FOLDER = REPO_ROOT / "dags"

IMPORT_WITHOUT_NETWORK = r"""
import json, socket, sys

def refuse(*args, **kwargs):
    raise RuntimeError("DAG import tried to open a connection")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from airflow.dag_processing.dagbag import DagBag

# The one dbt build of the triggerer mode: Cosmos would skip a second try anyway (see transformations/watcher).
NO_RETRY_BY_DESIGN = {"AggregatingProducerOperator"}
bag = DagBag(dag_folder=sys.argv[1])
print("RESULT " + json.dumps({
    "errors": {str(k): v for k, v in bag.import_errors.items()},
    "dags": {
        dag_id: {
            "tags": sorted(dag.tags),
            "doc_md": bool(dag.doc_md),
            "owners": sorted({t.owner for t in dag.tasks}),
            "retries": sorted({t.retries for t in dag.tasks if type(t).__name__ not in NO_RETRY_BY_DESIGN}),
            "catchup": dag.catchup,
            "n_tasks": len(dag.tasks),
            "schedule": getattr(dag.timetable, "expression", None),
            "param_schemas": {name: dag.params.get_param(name).schema for name in dag.params},
        }
        for dag_id, dag in bag.dags.items()
    },
}))
"""


def _isolated(folder) -> dict:
    env = {
        **os.environ,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://nobody:nothing@127.0.0.1:1/none",
        "DBT_PLATFORM_EXECUTION_MODE": "triggerer",  # what deployments run (tests elsewhere use local)
        # Airflow's own StatsD client (UDP to the exporter, set up on its first metric) is not the DAG
        # files' doing, and sends no matter what they do: off here, so the test sees only theirs.
        "AIRFLOW__METRICS__STATSD_ON": "False",
    }
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_WITHOUT_NETWORK, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, f"DagBag subprocess failed:\n{result.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def isolated_dagbag() -> dict:
    return _isolated(DAGS_FOLDER)


def test_the_registered_projects_bundle_files_load_without_network_or_database(tmp_path):
    """The DAG files the platform writes into the registered-projects bundle (an empty one here)."""
    import shutil

    from include.dbt_platform.transformations import bundle

    shutil.copytree(bundle.DAG_FILES, tmp_path / "bundle")
    assert _isolated(tmp_path / "bundle") == {"errors": {}, "dags": {}}


def test_no_import_errors_without_network_or_database(isolated_dagbag):
    assert isolated_dagbag["errors"] == {}


def test_expected_dags_are_defined(isolated_dagbag):
    expected = {"inventory_transforms", "dbt_project_create", "dbt_project_add_environment",
                "dbt_project_rotate_credentials", "dbt_project_decommission", "saga_recovery",
                "warehouse_setup", "inventory_marts_report", "project_sync"}  # fmt: skip
    assert expected <= set(isolated_dagbag["dags"])


def test_every_platform_dag_id_is_reserved(isolated_dagbag):
    """A requester may never name a project like a platform DAG (PLATFORM_DAG_IDS): every DAG that
    is not a dbt project's transformation DAG must be in that list."""
    from include.dbt_platform.config import PLATFORM_DAG_IDS

    platform = {d for d, dag in isolated_dagbag["dags"].items() if "transformations" not in dag["tags"]}
    assert platform <= PLATFORM_DAG_IDS, platform - PLATFORM_DAG_IDS


def _dag_ids():
    # Collected in the parent process only to name the parametrized cases.
    from airflow.dag_processing.dagbag import DagBag

    return sorted(DagBag(dag_folder=str(DAGS_FOLDER)).dags)


@pytest.mark.parametrize("dag_id", _dag_ids())
def test_dag_has_tags_owner_retries_docs(isolated_dagbag, dag_id):
    dag = isolated_dagbag["dags"][dag_id]
    assert dag["tags"], f"{dag_id} has no tags"
    assert dag["doc_md"], f"{dag_id} has no doc_md"
    assert "airflow" not in dag["owners"], f"{dag_id} keeps Airflow's default owner"
    assert all(dag["owners"]), f"{dag_id} has tasks without an owner"
    assert min(dag["retries"]) >= 1, f"{dag_id} has tasks without retries"
    assert dag["catchup"] is False


def test_every_platform_form_names_the_cheap_json_schema_dialect(isolated_dagbag):
    """Airflow checks each param's schema against its dialect's metaschema every time a task builds
    its context (include/dbt_platform/forms.py): the platform's forms name draft-07, and are valid
    draft-07 schemas."""
    from jsonschema import Draft7Validator

    from include.dbt_platform.forms import DIALECT

    forms = {d: dag["param_schemas"] for d, dag in isolated_dagbag["dags"].items() if dag["param_schemas"]}
    assert {"dbt_project_create", "dbt_project_decommission", "warehouse_setup", "saga_recovery"} <= set(
        forms
    )
    for dag_id, schemas in forms.items():
        for name, schema in schemas.items():
            assert schema.get("$schema") == DIALECT, f"{dag_id}.{name} names no dialect"
            Draft7Validator.check_schema(schema)


def test_the_recovery_sweep_runs_every_ten_minutes_unless_switched_off(isolated_dagbag):
    assert isolated_dagbag["dags"]["saga_recovery"]["schedule"] == "*/10 * * * *"
    env = {**os.environ, "DBT_PLATFORM_RECOVERY_SCHEDULE": "none"}
    code = (
        "from airflow.dag_processing.dagbag import DagBag; import sys; "
        "print('TIMETABLE', type(DagBag(dag_folder=sys.argv[1]).dags['saga_recovery'].timetable).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(DAGS_FOLDER / "saga_recovery.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "TIMETABLE NullTimetable" in result.stdout, result.stderr[-2000:]
