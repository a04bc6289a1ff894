"""What the saga tests share: an inventory of everything a saga can create, and request builders."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager

import psycopg2

from include.dbt_platform.config import get_settings
from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.project_creation import steps as saga_steps
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.recovery import recover_sagas
from tests.harness import TARGET, query, warehouse_dsn
from tests.saga_requests import BAD_REQUESTS, request  # noqa: F401 - shared with the saga tests


@contextmanager
def admin(database: str = "postgres"):
    conn = psycopg2.connect(warehouse_dsn(database))
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def inventory() -> dict:
    settings = get_settings()
    with admin() as conn:
        # Only the names a saga can create (dbt_<project>): other databases on this cluster (the
        # benchmark's, the dev stack's) may come and go while the tests run.
        databases = {
            r[0]
            for r in query(
                conn,
                "select datname from pg_database where datname like 'dbt\\_%' or datname = 'shared_existing'",
            )
        }
        roles = {r[0] for r in query(conn, "select rolname from pg_roles")}
    schemas = {}
    for db in sorted(d for d in databases if d.startswith("dbt_") or d == "shared_existing"):
        with admin(db) as c:
            schemas[db] = {r[0] for r in query(c, "select nspname from pg_namespace")}
    with admin(TARGET.platform_db) as platform:
        rows = query(platform, "select to_regclass('platform.projects') is not null")
        projects = (
            {r[0] for r in query(platform, "select project_name from platform.projects")}
            if rows[0][0]
            else set()
        )
    conns = json.loads((settings.state_dir / "secrets" / "connections.json").read_text() or "{}")
    listing = lambda p: sorted(x.name for x in p.iterdir()) if p.exists() else []  # noqa: E731
    return {
        "databases": databases,
        "roles": roles,
        "schemas": schemas,
        "projects": projects,
        "connections": set(conns),
        "repositories": listing(settings.repositories_dir),
        "registered": listing(settings.registry_dir),
    }


def uniq(prefix: str) -> str:
    """A name no earlier session used (journals and idempotency keys outlive a session)."""
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


def journal() -> j.Journal:
    return saga_steps.journal()


def undo_completed_sagas() -> None:
    """Leave the test databases as found: compensate every saga the tests completed."""
    definition = project_saga.definition()
    for saga in journal().find((j.COMPLETED,)):
        journal().set_state(saga.saga_id, j.EXECUTING)
        recover_sagas(definition, lambda d, r: "failed", saga_id=saga.saga_id)
