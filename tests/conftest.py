"""Test harness: a real PostgreSQL (the project-local cluster), a real Airflow metadata database.

Tests use their own databases (``*_test``) and Airflow home under ``.local/test`` so they never
touch the stack that ``make run`` started. The environment is set before anything imports Airflow.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from include.dbt_platform import devstack
from include.dbt_platform.config import REPO_ROOT, get_stack_settings
from include.dbt_platform.project_saga import definition

STACK = get_stack_settings()
TEST_ROOT = STACK.local_dir / "test"
TARGET = devstack.isolated_target(STACK, "test", port_offset=100)
TEST_ENV = {
    **devstack.airflow_env(STACK, TARGET),
    "SAGA_FAULT_INJECTION": "1",
    "DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS": "1",
    # dag.test() runs tasks one by one in this process: no triggerer, so the in-process tests use
    # Cosmos LOCAL; the triggerer mode is tested on the real scheduler (LIVE_ENV below).
    "DBT_PLATFORM_EXECUTION_MODE": "local",
}
os.environ.update(TEST_ENV)


def pytest_sessionstart(session: pytest.Session) -> None:
    devstack.pg_up(STACK, (TARGET.metadata_db, TARGET.warehouse_db, TARGET.platform_db))
    devstack.prepare_airflow_home(STACK, TARGET)
    devstack.migrate_metadata_db(STACK, TARGET)


@pytest.fixture(scope="session")
def stack():
    return STACK


@pytest.fixture(scope="session")
def target():
    return TARGET


def warehouse_dsn(database: str | None = None) -> str:
    return devstack.admin_dsn(STACK, database or TARGET.warehouse_db)


@contextmanager
def warehouse_connection() -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(warehouse_dsn())
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def warehouse_module() -> Iterator[psycopg2.extensions.connection]:
    with warehouse_connection() as conn:
        yield conn


@pytest.fixture
def warehouse() -> Iterator[psycopg2.extensions.connection]:
    with warehouse_connection() as conn:
        yield conn


def wait_for(predicate, timeout: float, what):
    """Poll ``predicate`` every second until it returns something truthy; return that.

    ``what`` names what is awaited in the failure message (a callable is asked at that time).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


@pytest.fixture
def projects_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty dbt projects folder that the factory reads instead of dbt_projects/."""
    folder = tmp_path / "dbt_projects"
    folder.mkdir()
    monkeypatch.setenv("DBT_PLATFORM_PROJECTS_DIR", str(folder))
    monkeypatch.setenv("DBT_PLATFORM_REGISTRY_DIR", str(tmp_path / "registered"))
    return folder


def copy_project(name: str, dest_root: Path, schema: str) -> Path:
    """Copy a shipped dbt project (without build artefacts) and point it at its own schema."""
    dest = dest_root / name
    shutil.copytree(REPO_ROOT / "dbt_projects" / name, dest, ignore=shutil.ignore_patterns("target", "logs"))
    (dest / "platform.yml").write_text(f"schema: {schema}\n")
    return dest


def build_manifest(project_dir: Path) -> None:
    from include.dbt_platform.manifests import build_manifest as build

    build(project_dir)


def run_dag_test(dag):
    """Run a DAG in-process with ``dag.test()`` and return the DagRun and its task states."""
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run, states


# Real-scheduler tests: Airflow's api-server, scheduler, dag-processor and triggerer for the test
# target, started once per session when a test first asks for them. DAGs start paused so that
# scheduled DAGs do not run behind the other tests' backs; AirflowClient.trigger unpauses one.
# Step timeouts are short so the hang tests finish in seconds (see DBT_PLATFORM_SAGA_TIMEOUTS), except
# register_transformations's: it runs dbt parse. The whole saga gets room for four hung attempts of its
# last step with eight other sagas running beside it; register_transformations hangs past it.
LIVE_STEP_TIMEOUT = 12
LIVE_SAGA_TIMEOUTS = {
    "saga": 150,
    **{s.name: LIVE_STEP_TIMEOUT for s in definition().steps if s.name != "register_transformations"},
}
LIVE_PROJECTS_DIR = TEST_ROOT / "live_projects"  # what the live scheduler's DAG factory reads
LIVE_STATSD_PORT = TARGET.api_port + 25  # the metrics test listens here (UDP, loopback)
LIVE_ENV = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "DBT_PLATFORM_SCHEDULE": "none",  # transformation DAGs of earlier sessions may be unpaused
    "DBT_PLATFORM_EXECUTION_MODE": "triggerer",
    "DBT_PLATFORM_PROJECTS_DIR": str(LIVE_PROJECTS_DIR),
    "DBT_PLATFORM_SAGA_TIMEOUTS": json.dumps(LIVE_SAGA_TIMEOUTS),
    "AIRFLOW__METRICS__STATSD_ON": "True",
    "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
    "AIRFLOW__METRICS__STATSD_PORT": str(LIVE_STATSD_PORT),
    "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
}


# Its own metadata database: a scheduler sharing airflow_test would pick up the runs dag.test()
# creates there and execute their tasks itself, with this environment.
LIVE_TARGET = devstack.AirflowTarget(
    home=TEST_ROOT / "live_airflow",
    metadata_db="airflow_live_test",
    warehouse_db=TARGET.warehouse_db,
    platform_db=TARGET.platform_db,
    api_port=TARGET.api_port,
    state_dir=TARGET.state_dir,
)


@pytest.fixture(scope="session")
def live_airflow() -> Iterator[devstack.AirflowClient]:
    devstack.stop_airflow(STACK, LIVE_TARGET)  # a leftover from an aborted session has other settings
    devstack.stop_airflow(STACK, TARGET)  # (earlier sessions ran the live components on TARGET)
    # A fresh metadata database: an aborted session can leave runs unfinished there, and the
    # scheduler would resume them beside this session's runs (same DAGs, same schemas).
    admin = psycopg2.connect(devstack.admin_dsn(STACK))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {LIVE_TARGET.metadata_db} with (force)")
    finally:
        admin.close()
    devstack.pg_up(STACK, (LIVE_TARGET.metadata_db,))
    devstack.prepare_airflow_home(STACK, LIVE_TARGET)
    devstack.migrate_metadata_db(STACK, LIVE_TARGET)
    shutil.rmtree(LIVE_PROJECTS_DIR, ignore_errors=True)
    LIVE_PROJECTS_DIR.mkdir(parents=True)
    shipped = REPO_ROOT / "dbt_projects" / "inventory_transforms"
    shutil.copytree(
        shipped, LIVE_PROJECTS_DIR / shipped.name, ignore=shutil.ignore_patterns("target", "logs")
    )
    build_manifest(LIVE_PROJECTS_DIR / shipped.name)
    devstack.start_airflow(STACK, LIVE_TARGET, extra_env=LIVE_ENV)
    try:
        devstack.wait_healthy(STACK, LIVE_TARGET)
        yield devstack.client_for(STACK, LIVE_TARGET)
    finally:
        devstack.stop_airflow(STACK, LIVE_TARGET)
