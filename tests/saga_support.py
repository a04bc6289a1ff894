"""What the saga tests share: an inventory of everything a saga can create, and request builders."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import psycopg2

from include.dbt_platform.adapters import git
from include.dbt_platform.config import get_settings
from include.dbt_platform.project_creation import steps as saga_steps
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.recovery import recover_sagas
from include.dbt_platform.transformations import bundle
from tests.harness import TARGET, git_admin, query, secrets_admin
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
    store, host = secrets_admin(), git_admin()
    registered = bundle.listing(host)
    return {
        "databases": databases,
        "roles": roles,
        "grants": grants,
        "schemas": schemas,
        "projects": projects,
        # OpenBao: every connection, and every rotation's kept password.
        "connections": set(store.conn_ids()),
        "rotations": set(store.rotation_ids()),
        # The git server: every repository of the target's org (archived ones too), and the
        # registered-projects bundle's entries (registered, and set aside by a decommission).
        "repositories": sorted(r.name for r in host.repositories()),
        "registered": registered[bundle.PROJECTS],
        "set_aside": registered[bundle.RETIRED],
        # Nothing of the sagas' on this machine's disk (the telemetry files are outputs, like logs).
        "local_state": sorted(
            str(p.relative_to(settings.state_dir))
            for p in settings.state_dir.rglob("*")
            if p.relative_to(settings.state_dir).parts[0] not in TELEMETRY_DIRS
        )
        if settings.state_dir.exists()
        else [],
    }


TELEMETRY_DIRS = ("lineage", "traces")  # OpenLineage events and the trace file (docs/observability.md)

NEW_MODEL = "select heartbeat_id, 'pushed by the owner' as note from {{ ref('platform_heartbeat') }}\n"
BROKEN_MODEL = "select * from {{ ref('platform_heartbeat' }}\n"  # a Jinja syntax error: dbt parse fails


def push(name: str, files: dict[str, str], message: str) -> str:
    """What the owner does: clone, change, commit, push (with the platform's git credentials here)."""
    host = git_admin()

    def change(tree: Path) -> str:
        for rel, content in files.items():
            target = tree / rel
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        return message

    return git.update(host.clone_url(name), host, change)


def run_saga(dag, conf: dict):
    """Run the saga's DAG in-process (``dag.test()``); the run, its task states, and its saga id."""
    run = dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    saga_id = j.saga_id_for(dag.dag_id, run.run_id)
    return run, states, saga_id


def stored_password(conn_id: str) -> str:
    return secrets_admin().entry(conn_id)["password"]


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


def saga_spans(saga_id: str) -> list[dict]:
    """The spans of one saga in the platform's trace file, in the order they ended."""
    from include.dbt_platform.observability.tracing import read_spans

    spans = [s for s in read_spans(get_settings().trace_file) if s["attributes"].get("saga.id") == saga_id]
    return sorted(spans, key=lambda s: int(s["endTimeUnixNano"]))


def assert_trace_matches_journal(saga_id: str) -> list[dict]:
    """The saga is one trace, under one root, whose spans are the journal's: a step span for every
    step that began, an attempt span for each of its attempts, a compensation span for each time a
    compensation ran; their parents and error classes as the journal has them. Returns the spans."""
    from include.dbt_platform.observability.ids import hex_trace_id, saga_trace_id

    spans = saga_spans(saga_id)
    saga = journal().get(saga_id)
    assert {s["traceId"] for s in spans} == {hex_trace_id(saga_trace_id(saga_id))}, "one trace per saga"
    (root,) = [s for s in spans if "parentSpanId" not in s]
    assert root["name"] == f"saga {saga.saga_name}" and root["attributes"]["saga.id"] == saga_id
    assert root["attributes"]["dbt_platform.project"] == saga.request.get("project_name")
    redrives = {s["spanId"] for s in spans if s["name"] == "re-drive"}
    assert all(s["parentSpanId"] == root["spanId"] for s in spans if s["name"] == "re-drive")
    with admin(TARGET.platform_db) as conn:
        rows = query(
            conn,
            "select step_name, state, attempts, compensation_attempts, error from saga.steps "
            "where saga_id = %s order by position",
            (saga_id,),
        )
    for step, state, attempts, compensations, error in rows:
        step_spans = [s for s in spans if s["name"] == f"step {step}"]
        tries = [s for s in spans if s["name"].startswith(f"{step} attempt ")]
        undos = [s for s in spans if s["name"] == f"compensate {step}"]
        assert len(step_spans) == (1 if attempts else 0), (step, state, [s["name"] for s in spans])
        assert len(tries) == attempts, (step, attempts, [s["name"] for s in tries])
        assert len(undos) == compensations, (step, compensations, len(undos))
        for span in step_spans:
            assert span["parentSpanId"] == root["spanId"]
        for span in tries:
            assert span["parentSpanId"] == step_spans[0]["spanId"]
        for span in undos:
            assert span["parentSpanId"] in {root["spanId"], *redrives}
        if state == j.STEP_FAILED and error and error.split(":")[0].isidentifier():
            assert step_spans[0]["attributes"]["error.type"] == error.split(":")[0], "its error class"
    final_undos = {s["name"].removeprefix("compensate "): s["attributes"]["saga.outcome"] for s in spans
                   if s["name"].startswith("compensate ")}  # fmt: skip
    assert final_undos == {r[0]: "compensated" for r in rows if r[1] == j.STEP_COMPENSATED} | {
        r[0]: "compensation_failed" for r in rows if r[1] == j.COMPENSATION_FAILED
    }, "the last run of each compensation ended as the journal says"
    return spans


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
