"""dbt_project_create: real PostgreSQL, real OpenBao, a real git server, real dbt, real Airflow runs
(dag.test()).

Every test takes an inventory of everything a saga can create (databases, roles, schemas,
repositories on the git server, entries of the registered-projects bundle, connections in OpenBao,
registry rows, files under the state folder) before and after.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.adapters import git
from include.dbt_platform.adapters.notifications import NotificationLog
from include.dbt_platform.adapters.postgres import platform_dsn
from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.project_creation import steps as saga_steps
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.engine import run_step
from include.dbt_platform.saga.recovery import recover_sagas
from tests.harness import STACK, TARGET, git_admin, query, registered_dagbag, secrets_admin
from tests.saga_support import (
    BAD_REQUESTS,
    admin,
    assert_trace_matches_journal,
    inventory,
    journal,
    request,
    run_saga,
    stored_password,
    undo_completed_sagas,
    undo_saga,
    uniq,
)

STEPS = [s.name for s in project_saga.definition().steps]


def test_happy_path_every_resource_exists_and_works(saga_dag, warehouse, tmp_path):
    with admin() as conn:
        query_exec(
            conn,
            "do $$ begin if not exists (select from pg_roles where rolname = 'analysts_t') "
            "then create role analysts_t; end if; end $$",
        )
    before = inventory()
    run, states, saga_id = run_saga(saga_dag, request("happy_one", readers=["analysts_t"]))

    assert run.state == "success", states
    assert states["compensate"] == "skipped"
    saga = journal().get(saga_id)
    assert saga.state == j.COMPLETED
    assert {s.step_name: s.state for s in journal().steps(saga_id)} == {s: j.SUCCEEDED for s in STEPS}
    assert not [e for e in journal().events(saga_id) if e["event"].startswith("compensation")]

    after = inventory()
    assert after["databases"] - before["databases"] == {"dbt_happy_one"}
    assert {
        "happy_one_dev_rw",
        "happy_one_staging_rw",
        "happy_one_prod_rw",
        "happy_one_owner",
        "happy_one_reader",
    } <= after["roles"]
    assert {"happy_one_dev", "happy_one_staging", "happy_one_prod"} <= after["schemas"]["dbt_happy_one"]
    assert "happy_one" in after["projects"] and "happy_one" in after["repositories"]
    assert "happy_one" in after["registered"], "in the registered-projects bundle"
    assert {f"dbt_happy_one_{e}" for e in ("dev", "staging", "prod")} <= after["connections"]
    assert after["local_state"] == before["local_state"], "nothing written to the local disk"
    # In OpenBao, each connection records the saga that made it; Airflow reads it (VaultBackend).
    assert secrets_admin().entry("dbt_happy_one_dev")["extra"]["created_by_saga"] == saga_id
    from airflow.sdk import BaseHook

    assert BaseHook.get_connection("dbt_happy_one_dev").login == "happy_one_dev_rw"

    # The dev role logs in to its database and creates a table in its schema...
    dev = psycopg2.connect(
        host="127.0.0.1",
        port=STACK.pg_port,
        dbname="dbt_happy_one",
        user="happy_one_dev_rw",
        password=stored_password("dbt_happy_one_dev"),
    )
    dev.autocommit = True
    query_exec(dev, "create table happy_one_dev.t (id int)")
    # ...but not in prod's schema.
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query_exec(dev, "create table happy_one_prod.t (id int)")
    dev.close()
    # The reader group sees through the reader role.
    assert query(warehouse, "select pg_has_role('analysts_t', 'happy_one_reader', 'member')") == [(True,)]

    # A second project; the first project's role cannot connect to its database.
    run2, states2, _ = run_saga(saga_dag, request("happy_two", environments=["dev"]))
    assert run2.state == "success", states2
    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        psycopg2.connect(
            host="127.0.0.1",
            port=STACK.pg_port,
            dbname="dbt_happy_two",
            user="happy_one_dev_rw",
            password=stored_password("dbt_happy_one_dev"),
        )
    # Every generated login role reaches its own project's database and no other on the server:
    # not Airflow's, not the platform's, not the warehouse, not postgres, not another project's.
    with admin() as conn:
        databases = [r[0] for r in query(conn, "select datname from pg_database where datallowconn")]
    logins = {
        f"happy_one_{e}_rw": ("dbt_happy_one", f"dbt_happy_one_{e}") for e in ("dev", "staging", "prod")
    }
    logins["happy_two_dev_rw"] = ("dbt_happy_two", "dbt_happy_two_dev")
    for role, (own, conn_id) in logins.items():
        reachable = [db for db in databases if can_connect(role, stored_password(conn_id), db)]
        assert reachable == [own], (role, reachable)

    # The repository on the git server holds a committed scaffold, marked with the saga.
    host = git_admin()
    assert host.repository("happy_one").saga_id == saga_id
    url = host.clone_url("happy_one")
    with git.fetched(url, host) as (tree, commit):
        assert (tree / "dbt_project.yml").exists()
        assert journal().step(saga_id, "setup_repository").result == {"repository": url, "commit": commit}

    # The project got its own transformation DAG (from the registered-projects bundle, at that
    # commit), which builds with the project's own credentials.
    bag = registered_dagbag(tmp_path / "bundle")
    assert "happy_one" in bag.dags and not bag.import_errors
    assert (
        f"running commit `{commit}`" in bag.dags["happy_one"].doc_md and url in bag.dags["happy_one"].doc_md
    )
    tr = bag.dags["happy_one"].test()
    assert tr.state == "success"
    with admin("dbt_happy_one") as conn:
        # Built by the project's own prod role, not by the platform's administrator.
        assert query(
            conn,
            "select viewowner from pg_views where schemaname = 'happy_one_prod' and viewname = 'platform_heartbeat'",
        ) == [("happy_one_prod_rw",)]

    # The owner was notified (recorded in the platform database; SMTP when configured), with the
    # repository's clone URL.
    note = NotificationLog(platform_dsn()).get("owner", saga_id)
    assert note["to"] == "ana@example.com" and "happy_one" in note["subject"]
    assert f"Repository: {url}" in note["body"]

    # No password in the journal, XCom, task logs, nor in any file of the project's repository or of
    # the registered-projects bundle (their whole history).
    passwords = [stored_password(f"dbt_happy_one_{e}") for e in ("dev", "staging", "prod")]
    assert_no_secrets(passwords)
    for repo in (url, host.clone_url("dbt-platform-projects")):
        history = git.run_git("log", "-p", "--all", cwd=_clone(repo, host, tmp_path))
        assert not any(p in history for p in passwords), f"a password in the history of {repo}"
    # Nor in PostgreSQL's log, which records every DDL statement (log_statement = ddl): only the SCRAM
    # verifier, computed by the saga, travelled.
    server_log = (STACK.pg_dir / "postgres.log").read_text(errors="ignore")
    assert 'alter role "happy_one_dev_rw" login password \'SCRAM-SHA-256$' in server_log
    assert not any(p in server_log for p in passwords), "a password reached the server in clear"


def _clone(url: str, host, tmp_path: Path) -> Path:
    dest = tmp_path / f"clone-{uuid.uuid4().hex[:6]}"
    git.run_git("clone", "-q", url, str(dest), host=host)
    return dest


def can_connect(role: str, password: str, database: str) -> bool:
    try:
        psycopg2.connect(
            host="127.0.0.1", port=STACK.pg_port, dbname=database, user=role, password=password
        ).close()
        return True
    except psycopg2.OperationalError as exc:
        assert "permission denied" in str(exc), exc
        return False


def query_exec(conn, statement: str) -> None:
    with conn.cursor() as cur:
        cur.execute(statement)


def assert_no_secrets(passwords: list[str]) -> None:
    with admin(TARGET.platform_db) as platform:
        dumps = [str(r) for r in query(platform, "select request::text, error from saga.sagas")]
        dumps += [str(r) for r in query(platform, "select result::text, error from saga.steps")]
        dumps += [str(r) for r in query(platform, "select detail::text from saga.events")]
    with admin(TARGET.metadata_db) as meta:
        dumps += [str(r) for r in query(meta, "select value::text from xcom")]
        dumps += [
            str(r) for r in query(meta, "select rendered_fields::text from rendered_task_instance_fields")
        ]
    logs = [p.read_text(errors="ignore") for p in (TARGET.home / "logs").rglob("*") if p.is_file()]
    for password in passwords:
        assert not any(password in d for d in dumps), "password found in journal, XCom or rendered fields"
        assert not any(password in log for log in logs), "password found in a task log"


@pytest.mark.parametrize("step", STEPS)
def test_permanent_fault_in_any_step_compensates_everything(saga_dag, step):
    name = f"perm_{STEPS.index(step)}"
    before = inventory()
    run, states, saga_id = run_saga(
        saga_dag, request(name, fault_injection={"step": step, "mode": "permanent"})
    )
    assert run.state == "failed"
    assert states[step] == "failed"
    assert states["compensate"] == "success"
    saga = journal().get(saga_id)
    assert saga.state == j.COMPENSATED
    steps = {s.step_name: s for s in journal().steps(saga_id)}
    assert steps[step].attempts == 1, "a permanent error is not retried"
    assert inventory() == before
    # One trace, whose spans are the journal's: the failed step and every compensation that ran.
    assert_trace_matches_journal(saga_id)


@pytest.mark.parametrize("step", STEPS)
def test_transient_fault_in_any_step_retries_then_completes(saga_dag, step):
    run, states, saga_id = run_saga(
        saga_dag,
        request(
            uniq(f"transient_{STEPS.index(step)}"),
            environments=["dev"],
            fault_injection={"step": step, "mode": "transient", "times": 2},
        ),
    )
    assert run.state == "success", states
    assert journal().get(saga_id).state == j.COMPLETED
    assert journal().step(saga_id, step).attempts == 3


def test_transient_fault_that_never_clears_is_compensated(saga_dag):
    before = inventory()
    run, states, saga_id = run_saga(
        saga_dag,
        request(
            "transient_bad",
            environments=["dev"],
            fault_injection={"step": "setup_repository", "mode": "transient", "times": 99},
        ),
    )
    assert run.state == "failed"
    assert journal().step(saga_id, "setup_repository").attempts == 4  # 1 + 3 retries
    assert journal().get(saga_id).state == j.COMPENSATED
    assert inventory() == before


def test_partial_environments_drop_exactly_what_was_created(saga_dag):
    before = inventory()
    run, states, saga_id = run_saga(
        saga_dag,
        request(
            "partial_env", fault_injection={"step": "create_environments", "mode": "permanent", "after": 1}
        ),
    )
    assert run.state == "failed"
    assert journal().step(saga_id, "create_environments").result == {
        "schemas": ["partial_env_dev"],
        "complete": False,
    }
    compensated = [e for e in journal().events(saga_id) if e["event"] == "compensation_compensated"]
    assert "create_environments" in {e["step_name"] for e in compensated}
    assert inventory() == before


@pytest.mark.parametrize(("override", "message"), BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_bad_requests_are_rejected_and_leave_nothing(saga_dag, override, message):
    """Rejected by Airflow's param schema (no run is created: a 400 on REST) or by validate_request."""
    from airflow.sdk.exceptions import ParamValidationError

    before = inventory()
    conf = {**request("bad_req"), **override}
    try:
        run, states, saga_id = run_saga(saga_dag, conf)
    except ParamValidationError as exc:
        assert next(iter(override)) in str(exc)  # the message names the offending field
    else:
        assert run.state == "failed"
        assert states["validate_request"] == "failed"
        assert journal().get(saga_id).state == j.COMPENSATED
        step = journal().step(saga_id, "validate_request")
        assert message in step.error and step.attempts == 1
    assert inventory() == before


def test_name_already_taken_is_rejected_without_touching_the_owner(saga_dag):
    name = uniq("taken")
    run, states, _ = run_saga(saga_dag, request(name, environments=["dev"]))
    assert run.state == "success", states
    before = inventory()
    run, states, saga_id = run_saga(saga_dag, request(name, environments=["dev"]))
    assert run.state == "failed"
    assert "already taken" in journal().step(saga_id, "validate_request").error
    assert inventory() == before


def test_existing_database_mode_uses_and_keeps_it(saga_dag, monkeypatch):
    # Adoption, as the README says: the platform role owns it, PUBLIC may not connect, it is listed.
    with admin() as conn:
        query_exec(conn, "drop database if exists shared_existing")
        query_exec(conn, "create database shared_existing owner dbt_platform")
        query_exec(conn, "revoke connect, temporary on database shared_existing from public")
    monkeypatch.setenv("DBT_PLATFORM_ADOPTABLE_DATABASES", "some_other_db, shared_existing")
    before = inventory()
    run, states, _ = run_saga(
        saga_dag,
        request(
            "in_existing",
            environments=["dev"],
            database_mode="existing",
            database_name="shared_existing",
            fault_injection={"step": "notify_owner", "mode": "permanent"},
        ),
    )
    assert run.state == "failed"
    assert states["provision_database"] == "success", "it was adopted"
    after = inventory()
    assert "shared_existing" in after["databases"], "an existing database is never dropped"
    assert after == before


def test_same_idempotency_key_creates_nothing_and_reports_the_original_outcome(saga_dag):
    name, key = uniq("idem"), uniq("req")
    run1, states1, saga1 = run_saga(saga_dag, request(name, environments=["dev"], idempotency_key=key))
    assert run1.state == "success", states1
    before = inventory()
    run2, states2, saga2 = run_saga(saga_dag, request(name, environments=["dev"], idempotency_key=key))
    assert run2.state == "success"
    assert states2["validate_request"] == "skipped" and states2["create_project"] == "skipped"
    assert journal().get(saga2) is None
    assert journal().duplicate_of("dbt_project_create", run2.run_id) == saga1
    assert inventory() == before


def test_duplicate_of_a_failed_saga_fails_too(saga_dag):
    name, key = uniq("idemf"), uniq("req")
    run1, _, saga1 = run_saga(
        saga_dag,
        request(
            name,
            environments=["dev"],
            idempotency_key=key,
            fault_injection={"step": "create_project", "mode": "permanent"},
        ),
    )
    assert run1.state == "failed"
    run2, states2, _ = run_saga(saga_dag, request(name, environments=["dev"], idempotency_key=key))
    assert run2.state == "failed"
    assert states2["report_outcome"] == "failed"


def _fake_context(dag_id: str, run_id: str, params: dict, try_number: int = 1) -> dict:
    # The saga engine's task bodies take Airflow's context; here we drive them directly to leave a
    # saga half-done, as a killed scheduler would.
    ti = SimpleNamespace(dag_id=dag_id, run_id=run_id, try_number=try_number, task=SimpleNamespace(retries=3))
    return {"ti": ti, "params": params}


def test_concurrent_sagas_for_one_name_exactly_one_wins():
    definition = project_saga.definition()
    before = inventory()
    params = request("race_proj", environments=["dev"])
    outcomes = {}

    def drive(run_id: str) -> None:
        ctx = _fake_context("dbt_project_create", run_id, params)
        try:
            for step in definition.steps:
                run_step(definition, step, ctx)
            outcomes[run_id] = "completed"
        except Exception as exc:  # the loser fails at create_project
            outcomes[run_id] = f"failed: {exc}"

    threads = [threading.Thread(target=drive, args=(f"race_{i}_{uuid.uuid4().hex[:8]}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(v.split(":")[0] for v in outcomes.values()) == ["completed", "failed"], outcomes
    loser = next(r for r, v in outcomes.items() if v.startswith("failed"))
    winner = next(r for r, v in outcomes.items() if v == "completed")
    assert "already taken" in outcomes[loser]
    # The loser compensates only its own effects: the winner's project is intact.
    recover_sagas(definition, lambda d, r: "failed", saga_id=j.saga_id_for("dbt_project_create", loser))
    assert journal().get(j.saga_id_for("dbt_project_create", loser)).state == j.COMPENSATED
    after = inventory()
    assert "race_proj" in after["projects"] and "dbt_race_proj" in after["databases"]
    # Clean the winner up through the same compensation, then nothing is left.
    undo_saga(j.saga_id_for("dbt_project_create", winner))
    assert inventory() == before


def test_recovery_compensates_a_saga_its_dead_run_left_executing():
    definition = project_saga.definition()
    before = inventory()
    run_id = f"killed_run_{uuid.uuid4().hex[:8]}"
    ctx = _fake_context("dbt_project_create", run_id, request("orphan_proj"))
    for step in definition.steps[:6]:  # up to create_credentials, then the "scheduler dies"
        run_step(definition, step, ctx)
    saga_id = j.saga_id_for("dbt_project_create", run_id)
    journal().step_started(saga_id, "assign_entitlements", 1)  # intent recorded, effect half-made
    pg = saga_steps.postgres()
    pg.create_role("orphan_proj_owner", saga_id)
    assert journal().get(saga_id).state == j.EXECUTING

    # While the run is still running, recovery leaves the saga alone.
    assert recover_sagas(definition, lambda d, r: "running") == {}
    done = recover_sagas(definition, lambda d, r: "failed")
    assert done[saga_id] == j.COMPENSATED
    assert journal().step(saga_id, "assign_entitlements").state == j.STEP_COMPENSATED
    assert inventory() == before


def test_failing_compensation_leaves_saga_failed_alerted_and_redrivable(saga_dag):
    before = inventory()
    name = uniq("compfail")
    fault = {"step": "notify_owner", "mode": "permanent", "fail_compensation_of": "setup_repository"}
    run, states, saga_id = run_saga(saga_dag, request(name, fault_injection=fault))

    assert run.state == "failed"
    assert states["compensate"] == "failed"
    assert states["report_outcome"] == "failed"
    saga = journal().get(saga_id)
    assert saga.state == j.FAILED
    assert "setup_repository" in saga.error
    steps = {s.step_name: s.state for s in journal().steps(saga_id)}
    assert steps["setup_repository"] == j.COMPENSATION_FAILED
    # Every other compensation still ran.
    for step in (
        "create_project",
        "provision_database",
        "create_environments",
        "create_credentials",
        "assign_entitlements",
        "register_transformations",
    ):
        assert steps[step] == j.STEP_COMPENSATED, step
    left = inventory()
    assert left["repositories"] == sorted([*before["repositories"], name])
    assert left["databases"] == before["databases"]
    assert left["connections"] == before["connections"]
    alert = NotificationLog(platform_dsn()).get("alert", saga_id)
    assert saga_id in alert["subject"]
    assert f'"saga_id": "{saga_id}"' in alert["body"], "the alert says how to re-drive"

    # Re-drive: the documented way, the recovery DAG with the saga id.
    recovery = DagBag(dag_folder=str(REPO_ROOT / "dags" / "saga_recovery.py")).dags["saga_recovery"]
    redrive = recovery.test(run_conf={"saga_id": saga_id})
    assert redrive.state == "success"
    assert journal().get(saga_id).state == j.COMPENSATED
    assert journal().step(saga_id, "setup_repository").state == j.STEP_COMPENSATED
    assert inventory() == before

    # Its trace: one, its spans the journal's, the failed compensation and its re-drive included.
    spans = assert_trace_matches_journal(saga_id)
    (root,) = [s for s in spans if s["name"] == "saga dbt_project_create"]
    assert root["attributes"]["saga.state"] == j.FAILED, "the root ended when the saga first did"
    assert root["attributes"]["error.type"] == "PermanentError"
    (redrive,) = [s for s in spans if s["name"] == "re-drive"]
    assert redrive["attributes"]["saga.state"] == j.COMPENSATED
    undo_repository = [s for s in spans if s["name"] == "compensate setup_repository"]
    *failed_tries, redriven = undo_repository  # the compensate task's tries, then the re-drive's
    assert [s["attributes"]["saga.outcome"] for s in failed_tries] == ["compensation_failed"] * len(
        failed_tries
    )
    assert {s["parentSpanId"] for s in failed_tries} == {root["spanId"]}
    assert (
        redriven["parentSpanId"] == redrive["spanId"]
        and redriven["attributes"]["saga.outcome"] == "compensated"
    )


@pytest.fixture(autouse=True, scope="module")
def _clean_up_created_projects():
    yield
    undo_completed_sagas()
