"""Test tiers: ``tests/unit`` (no server at all), ``tests/integration`` (a real PostgreSQL, real dbt,
a real Airflow metadata database, ``dag.test()``), ``tests/scheduler`` (a real Airflow scheduler,
dag-processor, triggerer and API server), ``tests/dags`` (every DAG file loads, offline).

The environment is set by :mod:`tests.harness` before anything imports Airflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.harness import STACK, TARGET, warehouse_dsn


@pytest.fixture(scope="session")
def database() -> None:
    """The project-local PostgreSQL, the test databases, and a migrated Airflow metadata database."""
    from devstack.airflow import migrate_metadata_db, prepare_airflow_home
    from devstack.postgres import pg_up

    pg_up(STACK, (TARGET.metadata_db, TARGET.warehouse_db, TARGET.platform_db))
    prepare_airflow_home(STACK, TARGET)
    migrate_metadata_db(STACK, TARGET)


@pytest.fixture(scope="session")
def stack():
    return STACK


@pytest.fixture(scope="session")
def target():
    return TARGET


@contextmanager
def warehouse_connection():
    import psycopg2

    conn = psycopg2.connect(warehouse_dsn())
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture(scope="module")
def warehouse_module(database) -> Iterator:
    with warehouse_connection() as conn:
        yield conn


@pytest.fixture
def warehouse(database) -> Iterator:
    with warehouse_connection() as conn:
        yield conn


@pytest.fixture
def projects_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty dbt projects folder that the factory reads instead of dbt_projects/."""
    folder = tmp_path / "dbt_projects"
    folder.mkdir()
    monkeypatch.setenv("DBT_PLATFORM_PROJECTS_DIR", str(folder))
    return folder
