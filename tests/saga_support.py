"""What the saga tests share: an inventory of everything a saga can create, and request builders."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from dataclasses import replace

import psycopg2

from include.dbt_platform.config import get_settings
from include.dbt_platform.project_creation import steps as saga_steps
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.recovery import recover_sagas
from tests.harness import TARGET, query
from tests.harness import admin as admin_dsn
from tests.saga_requests import BAD_REQUESTS, request  # noqa: F401 - shared with the saga tests


@contextmanager
def admin(database: str = "postgres"):
    conn = psycopg2.connect(admin_dsn(database))
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
        # Grants: role memberships, and who may connect to which database.
        grants = {
            ("member", r[0], r[1])
            for r in query(
                conn,
                "select r.rolname, m.rolname from pg_auth_members a join pg_roles r on r.oid = a.roleid "
                "join pg_roles m on m.oid = a.member",
            )
        }
        watched = sorted(
            databases | {TARGET.metadata_db, TARGET.warehouse_db, TARGET.platform_db, "postgres"}
        )
        grants |= {
            ("database", r[0], r[1])
            for r in query(
                conn, "select datname, datacl::text from pg_database where datname = any(%s)", (watched,)
            )
        }
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
        "grants": grants,
        "schemas": schemas,
        "projects": projects,
        "connections": set(conns),
        "repositories": listing(settings.repositories_dir),
        "registered": listing(settings.registry_dir),
        "secrets_files": listing(settings.state_dir / "secrets"),
        "archives": listing(settings.state_dir / "archives"),
    }


def run_saga(dag, conf: dict):
    """Run the saga's DAG in-process (``dag.test()``); the run, its task states, and its saga id."""
    run = dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    saga_id = j.saga_id_for(dag.dag_id, run.run_id)
    return run, states, saga_id


def stored_password(conn_id: str) -> str:
    data = json.loads((get_settings().state_dir / "secrets" / "connections.json").read_text())
    return data[conn_id]["password"]


def uniq(prefix: str) -> str:
    """A name no earlier session used (journals and idempotency keys outlive a session)."""
    return f"{prefix}_{uuid.uuid4().hex[:6]}"


def journal() -> j.Journal:
    return saga_steps.journal()


def teardown_definition(saga_name: str = "dbt_project_create"):
    """A saga without its pivot: what the tests use to take down what a completed saga made (the
    product itself never compensates a saga past its pivot)."""
    from include.dbt_platform.sagas import definitions

    return replace(definitions()[saga_name], pivot=None)


def undo_saga(saga_id: str) -> None:
    saga = journal().get(saga_id)
    journal().set_state(saga_id, j.EXECUTING)
    recover_sagas(teardown_definition(saga.saga_name), lambda d, r: "failed", saga_id=saga_id)


def undo_completed_sagas() -> None:
    """Leave the test databases as found: compensate every saga the tests completed."""
    for saga in reversed(journal().find((j.COMPLETED,))):  # newest first: lifecycle sagas, then creation
        undo_saga(saga.saga_id)


def _plain(value):
    """The inventory as JSON can carry it: sets and tuples as sorted lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset, list, tuple)):
        items = [_plain(v) for v in value]
        return items if isinstance(value, (list, tuple)) else sorted(items, key=json.dumps)
    return value


def main(argv: list[str]) -> int:
    """``python -m tests.saga_support inventory|undo-completed``: what `make chaos` and `make
    bench-saga` ask of their own stack (DBT_PLATFORM_TEST_TARGET names it): the leak inventory as
    JSON, or take down what its COMPLETED sagas made."""
    if argv == ["inventory"]:
        print(json.dumps(_plain(inventory())))
    elif argv == ["undo-completed"]:
        undo_completed_sagas()
    else:
        print("usage: python -m tests.saga_support inventory|undo-completed")
        return 2
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
