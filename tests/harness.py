"""What every test tier shares: the test stack's settings and environment, and small helpers.

Importing this module sets the environment the tests run with (before anything imports Airflow):
their own databases (``*_test``) and Airflow home under ``.local/test``, so they never touch the
stack that ``make run`` started. Nothing here starts a server: the integration and scheduler tiers
ask for the ``database`` fixture (root conftest), the unit tier never does.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from devstack.airflow import airflow_env, isolated_target, write_airflow_config
from devstack.distributed import profile
from devstack.settings import admin_dsn, get_stack_settings, role_dsn
from include.dbt_platform.config import REPO_ROOT

STACK = get_stack_settings()
TEST_ROOT = STACK.local_dir / "test"
# The tests' own target (API on +100). `make chaos` and `make bench-saga` read their own stacks
# through the same helpers (the leak inventory of tests/saga_support.py): DBT_PLATFORM_TEST_TARGET
# names their profile (devstack/distributed.py).
_PROFILE = os.environ.get("DBT_PLATFORM_TEST_TARGET", "test")
TARGET = (
    isolated_target(STACK, "test", port_offset=100) if _PROFILE == "test" else profile(STACK, _PROFILE).target
)
TEST_ENV = {
    **airflow_env(STACK, TARGET),
    "SAGA_FAULT_INJECTION": "1",
    "DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS": "1",
    # dag.test() runs tasks one by one in this process: no triggerer, so the in-process tests use
    # Cosmos LOCAL; the triggerer mode is tested on the real scheduler (tests/scheduler).
    "DBT_PLATFORM_EXECUTION_MODE": "local",
    # dag.test() runs one saga at a time; the per-requester gate is tested on its own (a run left
    # holding a turn by an aborted session must not make the next session wait).
    "DBT_PLATFORM_SAGAS_PER_REQUESTER": "0",
}
os.environ.update(TEST_ENV)
# Airflow reads airflow.cfg (the metadata database's DSN) when it is first imported: write it now.
write_airflow_config(STACK, TARGET)


def admin(database: str = "postgres") -> str:
    """The superuser's DSN: for setting up and inspecting, never what the code under test runs as."""
    return admin_dsn(STACK, database)


def warehouse_dsn() -> str:
    """The warehouse as the role the bundled projects' dbt runs as (it owns the warehouse database)."""
    return role_dsn(STACK, TARGET.warehouse_db)


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


def copy_project(name: str, dest_root: Path, schema: str) -> Path:
    """Copy a shipped dbt project (without build artefacts) and point it at its own schema."""
    dest = dest_root / name
    shutil.copytree(REPO_ROOT / "dbt_projects" / name, dest, ignore=shutil.ignore_patterns("target", "logs"))
    (dest / "platform.yml").write_text(f"schema: {schema}\n")
    return dest


def build_manifest(project_dir: Path) -> None:
    from include.dbt_platform.transformations.manifests import build_manifest as build

    build(project_dir)


def run_dag_test(dag):
    """Run a DAG in-process with ``dag.test()`` and return the DagRun and its task states."""
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run, states
