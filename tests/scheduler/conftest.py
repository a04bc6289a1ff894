"""Scheduler tier: a real Airflow (api-server, scheduler, dag-processor, triggerer) on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psycopg2
import pytest

from devstack.airflow import (
    migrate_metadata_db,
    prepare_airflow_home,
    start_airflow,
    stop_airflow,
    wait_healthy,
)
from devstack.client import AirflowClient, client_for
from devstack.observability import observability_down, observability_up
from devstack.postgres import pg_up
from devstack.settings import admin_dsn
from include.dbt_platform.config import REPO_ROOT
from tests.harness import STACK, TARGET, build_manifest
from tests.scheduler.live import LIVE_ENV, LIVE_PROJECTS_DIR, LIVE_TARGET


@pytest.fixture(autouse=True, scope="session")
def _database(database) -> None:
    return None


@pytest.fixture(scope="session")
def live_airflow(database) -> Iterator[AirflowClient]:
    stop_airflow(STACK, LIVE_TARGET)  # a leftover from an aborted session has other settings
    stop_airflow(STACK, TARGET)  # (earlier sessions ran the live components on TARGET)
    # A fresh metadata database: an aborted session can leave runs unfinished there, and the
    # scheduler would resume them beside this session's runs (same DAGs, same schemas).
    admin = psycopg2.connect(admin_dsn(STACK))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f"drop database if exists {LIVE_TARGET.metadata_db} with (force)")
    finally:
        admin.close()
    pg_up(STACK, (LIVE_TARGET.metadata_db,))
    prepare_airflow_home(STACK, LIVE_TARGET)
    migrate_metadata_db(STACK, LIVE_TARGET)
    shutil.rmtree(LIVE_PROJECTS_DIR, ignore_errors=True)
    LIVE_PROJECTS_DIR.mkdir(parents=True)
    shipped = REPO_ROOT / "dbt_projects" / "inventory_transforms"
    shutil.copytree(
        shipped, LIVE_PROJECTS_DIR / shipped.name, ignore=shutil.ignore_patterns("target", "logs")
    )
    build_manifest(LIVE_PROJECTS_DIR / shipped.name)
    observability_down(LIVE_TARGET)  # an aborted session's exporter holds last session's counters
    try:
        observability_up(STACK, LIVE_TARGET)
        start_airflow(STACK, LIVE_TARGET, extra_env=LIVE_ENV)
        wait_healthy(STACK, LIVE_TARGET)
        yield client_for(STACK, LIVE_TARGET)
    finally:
        stop_airflow(STACK, LIVE_TARGET)
        observability_down(LIVE_TARGET)
