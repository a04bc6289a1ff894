"""dbt_project_create tried as a careless or hostile requester would, on real PostgreSQL, OpenBao, a
git server, dbt and Airflow runs: least privilege, strict input, fenced and atomic steps, forward after
the pivot.

Each test compares the leak inventory (databases, roles, grants, schemas, registry rows, connections
in OpenBao, repositories on the git server, the registered-projects bundle, local files) before and
after where something must not be left.
"""

from __future__ import annotations

import email
import json
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.dbt_platform.adapters.postgres import connection_params
from include.dbt_platform.config import get_settings
from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.engine import OUTCOME_XCOM_KEY, run_step
from include.dbt_platform.saga.recovery import recover_run, recover_sagas
from tests.harness import TARGET, build_manifest, query, run_dag_test
from tests.saga_support import admin, inventory, journal, request, run_saga, undo_completed_sagas, uniq
from tests.smtp_server import smtp_server

DAG_ID = "dbt_project_create"


def outcome_of(run) -> dict:
    """What a REST caller reads: the XCom ``saga_outcome`` of ``report_outcome``."""
    ti = next(t for t in run.get_task_instances() if t.task_id == "report_outcome")
    return ti.xcom_pull(task_ids="report_outcome", key=OUTCOME_XCOM_KEY)


# ----------------------------------------------------------------------------- least privilege


def test_the_saga_runs_as_a_platform_role_that_is_not_a_superuser(saga_dag):
    params = connection_params(get_settings().platform_conn_id)
    with admin() as conn:
        ((superuser, createrole, createdb),) = query(
            conn,
            "select rolsuper, rolcreaterole, rolcreatedb from pg_roles where rolname = %s",
            (params["user"],),
        )
    assert params["user"] != "postgres" and not superuser
    assert createrole and createdb
    name = uniq("lp")
    run, states, _ = run_saga(saga_dag, request(name, environments=["dev"]))
    assert run.state == "success", states
    with admin() as conn:
        owner = query(
            conn, "select pg_get_userbyid(datdba) from pg_database where datname = %s", (f"dbt_{name}",)
        )
    assert owner == [(params["user"],)], "what the saga made, it made as the platform role"


def test_a_model_cannot_read_platform_secrets_from_its_environment(
    projects_dir: Path, warehouse, monkeypatch
):
    """Even where an operator left the platform's connection in the environment, dbt does not see it."""
    secret_uri = "postgres://dbt_platform:leaked-platform-pw@127.0.0.1:1/platform"
    monkeypatch.setenv("AIRFLOW_CONN_PLATFORM_COPY", secret_uri)
    monkeypatch.setenv("DBT_PLATFORM_PG_PASSWORD", "leaked-admin-pw")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "leaked-jwt")
    project = projects_dir / "env_probe"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: env_probe\nversion: '1.0.0'\nconfig-version: 2\nprofile: env_probe\n"
        "models:\n  +materialized: table\n"
    )
    (project / "models" / "probe.sql").write_text(
        "select '{{ env_var('AIRFLOW_CONN_PLATFORM_COPY', 'absent') }}' as platform_conn,\n"
        "       '{{ env_var('DBT_PLATFORM_PG_PASSWORD', 'absent') }}' as admin_password,\n"
        "       '{{ env_var('AIRFLOW__API_AUTH__JWT_SECRET', 'absent') }}' as jwt_secret\n"
    )
    build_manifest(project)
    from include.dbt_platform.transformations.factory import build_transformation_dag
    from include.dbt_platform.transformations.projects import load_project

    run, states = run_dag_test(build_transformation_dag(load_project(project)))
    assert run.state == "success", states
    assert query(warehouse, "select * from env_probe.probe") == [("absent", "absent", "absent")]
    with warehouse.cursor() as cur:
        cur.execute("drop schema env_probe cascade")


# ----------------------------------------------------------------------------- strict input


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"project_name": "inventory_transforms"}, "bundled dbt project"),
        ({"readers": ["super_t"]}, "a superuser"),
        ({"readers": ["dbt_platform"]}, "may create roles"),
        ({"readers": ["airflow"]}, "owns a database"),
        ({"readers": ["warehouse"]}, "owns a database"),
    ],
)
def test_names_that_collide_with_the_platform_are_refused_and_change_nothing(saga_dag, override, message):
    with admin() as conn, conn.cursor() as cur:
        cur.execute("do $$ begin if not exists (select from pg_roles where rolname = 'super_t') "
                    "then create role super_t superuser; end if; end $$")  # fmt: skip
    before = inventory()
    run, states, saga_id = run_saga(saga_dag, request(uniq("coll"), environments=["dev"]) | override)
    assert run.state == "failed" and states["validate_request"] == "failed"
    step = journal().step(saga_id, "validate_request")
    assert message in step.error and step.attempts == 1
    assert inventory() == before


def test_a_misspelt_field_is_refused_not_ignored(saga_dag):
    before = inventory()
    conf = request(uniq("typo")) | {"database": {"mode": "existing", "name": "analytics"}}
    run, states, saga_id = run_saga(saga_dag, conf)
    assert run.state == "failed"
    assert "unknown field(s) ['database']" in journal().step(saga_id, "validate_request").error
    assert inventory() == before


@pytest.mark.parametrize(
    "kind", ["metadata", "platform", "warehouse", "postgres", "template1", "unlisted", "taken"]
)
def test_existing_mode_adopts_only_allow_listed_databases_of_no_other_project(saga_dag, monkeypatch, kind):
    other = uniq("owner")
    if kind == "taken":  # a database another project was created in
        run, states, _ = run_saga(saga_dag, request(other, environments=["dev"]))
        assert run.state == "success", states
    database = {
        "metadata": TARGET.metadata_db, "platform": TARGET.platform_db, "warehouse": TARGET.warehouse_db,
        "postgres": "postgres", "template1": "template1", "unlisted": "shared_unlisted", "taken": f"dbt_{other}",
    }[kind]  # fmt: skip
    if kind == "unlisted":
        with admin() as conn, conn.cursor() as cur:
            cur.execute("drop database if exists shared_unlisted")
            cur.execute("create database shared_unlisted owner dbt_platform")
        listed = "some_other_db"
    else:
        listed = database  # even listed by mistake, a platform's database is never adopted
    monkeypatch.setenv("DBT_PLATFORM_ADOPTABLE_DATABASES", listed)
    before = inventory()
    conf = request(uniq("adopt"), environments=["dev"], database_mode="existing", database_name=database)
    run, states, saga_id = run_saga(saga_dag, conf)
    assert run.state == "failed" and states["validate_request"] == "failed", states
    error = journal().step(saga_id, "validate_request").error
    expected = {"unlisted": "not one the platform may adopt", "taken": "belongs to project",
                "postgres": "reserved", "template1": "reserved"}  # fmt: skip
    assert expected.get(kind, "belongs to the platform") in error, error
    assert inventory() == before


def test_a_rejected_request_does_not_burn_its_idempotency_key_and_says_why(saga_dag):
    name, key = uniq("burn"), uniq("key")
    with admin() as conn, conn.cursor() as cur:  # the name's database exists: rejected at validation
        cur.execute(f"create database dbt_{name}")
    try:
        run, _, saga_id = run_saga(saga_dag, request(name, environments=["dev"], idempotency_key=key))
        assert run.state == "failed"
        outcome = outcome_of(run)
        assert outcome["saga_id"] == saga_id and outcome["state"] == j.COMPENSATED
        assert outcome["first_cause"].startswith("validate_request: Conflict: database 'dbt_")
    finally:
        with admin() as conn, conn.cursor() as cur:
            cur.execute(f"drop database dbt_{name}")
    run2, states2, saga2 = run_saga(saga_dag, request(name, environments=["dev"], idempotency_key=key))
    assert run2.state == "success", states2
    assert saga2 != saga_id and journal().get(saga2).state == j.COMPLETED
    assert outcome_of(run2) == {
        "saga_id": saga2,
        "state": j.COMPLETED,
        "duplicate_of": None,
        "first_cause": None,
        "requester": "dag_test",  # who triggered the run: dag.test() says so; the UI and REST give the user
    }


def test_the_first_cause_survives_a_failing_compensation(saga_dag):
    fault = {
        "step": "register_transformations",
        "mode": "permanent",
        "fail_compensation_of": "setup_repository",
    }
    run, _, saga_id = run_saga(saga_dag, request(uniq("cause"), environments=["dev"], fault_injection=fault))
    assert run.state == "failed" and journal().get(saga_id).state == j.FAILED
    outcome = outcome_of(run)
    assert outcome["first_cause"] == (
        "register_transformations: PermanentError: injected permanent fault in register_transformations"
    )
    recover_sagas(project_saga.definition(), lambda d, r: "failed", saga_id=saga_id)  # clean up
    assert journal().get(saga_id).first_cause == outcome["first_cause"], "never overwritten"


# ----------------------------------------------------------------------------- fenced


def _ti(run_id: str, try_number: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id=DAG_ID, run_id=run_id, try_number=try_number, task=SimpleNamespace(retries=3)
    )


def test_a_timeout_callback_racing_a_running_step_waits_and_nothing_leaks():
    """dagrun_timeout fires the failure callback while create_credentials is still running. The
    callback may not compensate under the running step: it waits for the saga's fence, and once the
    step has made (and recorded) its roles and connections, compensation removes them."""
    definition = project_saga.definition()
    in_effect, release = threading.Event(), threading.Event()
    step = definition.step("create_credentials")

    def slow_credentials(ctx):
        in_effect.set()
        assert release.wait(60)
        return step.action(ctx)

    racing = replace(
        definition, steps=[replace(s, action=slow_credentials) if s is step else s for s in definition.steps]
    )
    before = inventory()
    run_id = f"race_{uuid.uuid4().hex[:8]}"
    params = request(uniq("race"), environments=["dev", "prod"])
    for forward in racing.steps[:5]:
        run_step(racing, forward, {"ti": _ti(run_id), "params": params})
    saga_id = j.saga_id_for(DAG_ID, run_id)
    errors = []

    def run_slow_step():
        try:
            run_step(racing, racing.step("create_credentials"), {"ti": _ti(run_id), "params": params})
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=run_slow_step)
    worker.start()
    assert in_effect.wait(60)
    threading.Timer(3, release.set).start()  # the step finishes its effect while the callback waits
    started = time.monotonic()
    failures = recover_run(racing, DAG_ID, run_id, reason="run ended failed: timed out")
    worker.join(60)
    assert not errors, errors
    assert failures == []
    assert time.monotonic() - started >= 2, "the callback waited for the running step"
    steps = {s.step_name: s.state for s in journal().steps(saga_id)}
    assert steps["create_credentials"] == j.STEP_COMPENSATED, steps
    assert journal().get(saga_id).state == j.COMPENSATED
    assert inventory() == before, "the roles and connections made under the callback were removed"


# ----------------------------------------------------------------------------- after the pivot


def test_after_the_pivot_a_failing_completion_goes_forward_never_tears_down(saga_dag):
    name = uniq("fwd")
    fault = {"step": "complete_saga", "mode": "permanent", "times": 99}
    run, states, saga_id = run_saga(saga_dag, request(name, environments=["dev"], fault_injection=fault))
    # The last step's task completes the saga; its completion failed for good, so the task failed,
    # and `compensate`, finding the owner told (the pivot), went forward: completed the saga instead
    # of tearing anything down. (Without `compensate`, the failure callback or the sweep would.)
    assert states["notify_owner"] == "failed" and states["compensate"] == "success", states
    assert journal().get(saga_id).state == j.COMPLETED
    assert run.state == "success", "the saga completed: the run says so"
    assert [s.state for s in journal().steps(saga_id)] == [j.SUCCEEDED] * 9, "no step was compensated"
    kept = inventory()
    assert f"dbt_{name}" in kept["databases"] and name in kept["projects"]
    assert recover_run(project_saga.definition(), DAG_ID, run.run_id, reason="run ended failed") == []
    assert inventory() == kept, "finishing again changes nothing"
    with admin(TARGET.platform_db) as conn:
        assert query(conn, "select status from platform.projects where project_name = %s", (name,)) == [
            ("ACTIVE",)
        ]

    transient = {"step": "complete_saga", "mode": "transient", "times": 2}
    run2, states2, saga2 = run_saga(
        saga_dag, request(uniq("fwd2"), environments=["dev"], fault_injection=transient)
    )
    assert run2.state == "success", states2
    assert journal().get(saga2).state == j.COMPLETED


@pytest.mark.parametrize(
    ("refusal", "refused", "outcome"),
    [("421 4.3.2 try again later", 2, j.COMPLETED), ("550 5.1.1 no such mailbox", 1, j.COMPENSATED)],
)
def test_a_mail_server_hiccup_is_retried_and_only_a_rejection_compensates(
    saga_dag, monkeypatch, refusal, refused, outcome
):
    before = inventory()
    with smtp_server(refuse_sessions=refused, refusal=refusal) as server:
        port = server.server_address[1]
        # A plaintext relay on loopback, as an operator would declare it for SmtpNotifier; the
        # hook's own in-session retries off (the saga retries, classified).
        extra = {
            "disable_ssl": True,
            "disable_tls": True,
            "retry_limit": 0,
            "from_email": "platform@example.com",
        }
        conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_SMTP_TEST", json.dumps(conn))
        monkeypatch.setenv("DBT_PLATFORM_SMTP_CONN_ID", "smtp_test")
        run, states, saga_id = run_saga(saga_dag, request(uniq("mail"), environments=["dev"]))
    assert journal().get(saga_id).state == outcome, states
    step = journal().step(saga_id, "notify_owner")
    if outcome == j.COMPLETED:
        assert run.state == "success" and step.attempts == refused + 1
        (raw,) = server.received
        mail = email.message_from_string(raw)
        assert mail["From"] == "platform@example.com" and mail["Subject"].endswith("is ready")
        (part,) = [p for p in mail.walk() if p.get_content_type() == "text/html"]
        assert "is ready" in part.get_payload(decode=True).decode(), "sent by SmtpNotifier as HTML"
    else:
        assert run.state == "failed" and step.attempts == 1, "a definitive rejection is not retried"
        assert "550" in step.error
        assert inventory() == before


@pytest.fixture(autouse=True, scope="module")
def _clean_up_created_projects():
    yield
    undo_completed_sagas()


def test_registered_projects_cannot_take_a_platform_dags_id(tmp_path: Path):
    """Defence in depth: a project named like a platform DAG in the registered-projects bundle (put
    there by hand here, as a bug or a person could) never gets that id; it is reported as an import
    error of the bundle instead."""
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    from include.dbt_platform.transformations import bundle

    folder = tmp_path / "bundle"
    shutil.copytree(bundle.DAG_FILES, folder)
    for intruder in ("dbt_project_create", "warehouse_setup"):
        project = folder / "projects" / intruder
        (project / "models").mkdir(parents=True)
        (project / "dbt_project.yml").write_text(f"name: {intruder}\nprofile: {intruder}\n")
        (project / "models" / "m.sql").write_text("select 1 as id\n")
        build_manifest(project)
    bag = DagBag(dag_folder=str(folder))
    assert not {"dbt_project_create", "warehouse_setup"} & set(bag.dags), "the intruders got no DAG"
    (message,) = bag.import_errors.values()
    assert "dbt_project_create" in message and "warehouse_setup" in message and "platform DAG" in message
