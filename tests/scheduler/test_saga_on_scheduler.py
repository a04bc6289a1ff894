"""dbt_project_create on a real scheduler: the paths ``dag.test()`` cannot take.

A task process killed by SIGKILL, a step that hangs past its ``execution_timeout``, a run that hits
``dagrun_timeout`` (only the DAG's failure callback fires) and a run marked failed by hand (no
callback at all: the recovery DAG finishes it). Triggered through the REST API, like a portal would.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from devstack.airflow import component_pid
from devstack.observability import ports_for, prometheus_binary, prometheus_running
from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.runtime import scheduler_wakeup
from include.dbt_platform.saga import journal as j
from tests.harness import STACK, build_manifest, dag_run_lineage, query, wait_for
from tests.saga_support import admin, inventory, journal, request, undo_completed_sagas, uniq
from tests.scheduler.live import LIVE_ENV, LIVE_SAGA_TIMEOUTS, LIVE_TARGET

DAG_ID = "dbt_project_create"
ALL_STEPS = [s.name for s in project_saga.definition().steps]


@pytest.fixture(scope="module")
def client(live_airflow):
    live_airflow.wait_for_dag(DAG_ID)
    live_airflow.wait_for_dag("saga_recovery")
    return live_airflow


def trigger(client, conf: dict) -> tuple[str, str]:
    run_id = f"test__{uuid.uuid4().hex[:10]}"
    status, body = client.trigger(DAG_ID, run_id, conf)
    assert status == 200, body
    return run_id, j.saga_id_for(DAG_ID, run_id)


def wait_for_saga(saga_id: str, states: set[str], timeout: float = 180) -> j.SagaRecord:
    def reached():
        saga = journal().get(saga_id)
        return saga if saga is not None and saga.state in states else None

    def describe():
        saga = journal().get(saga_id)
        return f"saga {saga_id} to be {states} (it is {saga.state if saga else 'missing'})"

    return wait_for(reached, timeout, describe)


def wait_for_task_state(client, run_id: str, task_id: str, state: str, timeout: float = 120) -> None:
    wait_for(
        lambda: client.task_states(DAG_ID, run_id).get(task_id) == state,
        timeout,
        lambda: f"{task_id} to reach {state}: {client.task_states(DAG_ID, run_id)}",
    )


def _maps_dbt(pid: int) -> bool:
    """dbt is loaded in process ``pid``: its parser's extension module (nothing else loads it) is mapped."""
    return "dbt_extractor" in Path(f"/proc/{pid}/maps").read_text()


def test_rest_trigger_completes_and_a_reused_run_id_is_refused(client):
    name = uniq("live_ok")
    run_id, saga_id = trigger(client, request(name))
    run = client.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", client.explain(DAG_ID, run_id)
    assert journal().get(saga_id).state == j.COMPLETED

    # The steps ran on warm workers: the scheduler (LocalExecutor) loaded dbt once at start through
    # plugins/airflow_local_settings.py, its executor workers were forked from it; the API server did
    # not load it; and the step that runs dbt (forked from a worker) did not warm it up again.
    scheduler = component_pid(STACK, LIVE_TARGET, "scheduler")
    workers = [
        pid
        for pid in map(int, Path(f"/proc/{scheduler}/task/{scheduler}/children").read_text().split())
        if "LocalExecutor" in Path(f"/proc/{pid}/cmdline").read_text()  # Airflow's title for them
    ]
    assert _maps_dbt(scheduler) and workers and all(_maps_dbt(w) for w in workers), workers
    assert not _maps_dbt(component_pid(STACK, LIVE_TARGET, "api-server"))
    _, log = client.request(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/register_transformations/logs/1"
    )
    assert "register_transformations" in json.dumps(log), log
    assert "dbt preloaded" not in json.dumps(log)

    # Lineage: the run's own START and COMPLETE, no task events (sagas.py: lineage_emission_policy).
    run_events, task_jobs = wait_for(
        lambda: found if "COMPLETE" in (found := dag_run_lineage(DAG_ID, run_id))[0] else None,
        30,
        lambda: f"the run's COMPLETE lineage event (got {dag_run_lineage(DAG_ID, run_id)})",
    )
    assert run_events == ["START", "COMPLETE"] and task_jobs == [], (run_events, task_jobs)

    # The scheduler wakes when a task ends (runtime/scheduler_wakeup.py): one session of it listens.
    with admin() as conn:
        listening = query(
            conn,
            "select count(*) from pg_stat_activity where datname = %s and application_name = %s",
            (LIVE_TARGET.metadata_db, scheduler_wakeup.APPLICATION_NAME),
        )
    assert listening == [(1,)]

    status, _ = client.trigger(DAG_ID, run_id, request(uniq("live_again")))
    assert status == 409
    status, body = client.trigger(DAG_ID, f"bad__{uuid.uuid4().hex[:8]}", request("Bad Name"))
    assert status == 400, body


def test_a_requester_with_no_turn_free_waits_at_the_first_step_and_begins_nothing(client):
    """The first step's task waits for a turn (rescheduled, no separate sensor task): here the
    requester's turns are all held (fake turns of runs that do not exist), the run waits without
    recording a saga, and goes through once they are given back."""
    limit = int(LIVE_ENV["DBT_PLATFORM_SAGAS_PER_REQUESTER"])
    held = [(DAG_ID, f"held__{uuid.uuid4().hex[:10]}", "admin") for _ in range(limit)]
    dsn = journal().dsn
    with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
        cur.executemany("insert into saga.turns (dag_id, run_id, requester) values (%s, %s, %s)", held)
    try:
        run_id, saga_id = trigger(client, request(uniq("live_turn")))
        wait_for_task_state(client, run_id, ALL_STEPS[0], "up_for_reschedule", timeout=60)
        assert journal().get(saga_id) is None, "a run waiting for a turn begins nothing"
        assert client.task_states(DAG_ID, run_id).get(ALL_STEPS[1]) is None
    finally:
        with closing(psycopg2.connect(dsn)) as conn, conn, conn.cursor() as cur:
            cur.execute("delete from saga.turns where run_id = any(%s)", ([r for _, r, _ in held],))
    run = client.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", client.explain(DAG_ID, run_id)
    saga = journal().get(saga_id)
    assert (saga.state, saga.requester) == (j.COMPLETED, "admin")
    assert run_id not in [r for _, r, _ in journal().turns()], "the verdict gave the turn back"


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_saga_counters_move_on_the_metrics_endpoint_and_in_prometheus(client):
    """Airflow's StatsD (in every task process) -> the stack's exporter -> /metrics, with labels."""
    ports = ports_for(STACK, LIVE_TARGET)
    metrics_url = f"http://127.0.0.1:{ports.exporter}/metrics"
    saga = 'saga="dbt_project_create"'
    started = f"dbt_platform_sagas_started_total{{{saga}}}"
    compensated = f'dbt_platform_sagas_finished_total{{{saga},state="compensated"}}'
    provisioned = f'dbt_platform_saga_steps_total{{outcome="succeeded",{saga},step="provision_database"}}'
    rejected = f'dbt_platform_saga_steps_total{{outcome="failed",{saga},step="notify_owner"}}'
    undone = (
        f'dbt_platform_saga_compensations_total{{outcome="compensated",{saga},step="provision_database"}}'
    )
    step_time = f'dbt_platform_saga_step_duration_seconds_count{{{saga},step="provision_database"}}'
    before = scrape(metrics_url)

    fault = {"step": "notify_owner", "mode": "permanent"}
    run_id, saga_id = trigger(client, request(uniq("live_metrics"), fault_injection=fault))
    client.wait_for_run(DAG_ID, run_id, timeout=300)
    wait_for_saga(saga_id, {j.COMPENSATED})

    def moved():
        now = scrape(metrics_url)
        return now if now.get(compensated, 0) > before.get(compensated, 0) else None

    after = wait_for(moved, 30, "the compensated counter to move")
    for name in (started, compensated, provisioned, rejected, undone, step_time):
        assert after.get(name, 0) >= before.get(name, 0) + 1, name
    assert after[f"dbt_platform_saga_duration_seconds_count{{{saga}}}"] >= 1
    assert f"dbt_platform_sagas_active{{{saga}}}" in after, "the gauge of sagas going now"
    assert any(k.startswith("airflow_ti_finish_total{") for k in after), "Airflow's own metrics too"

    if not prometheus_binary():
        pytest.skip("Prometheus is not installed (apt-get install prometheus; .ci/run does): not scraped")
    if not prometheus_running(LIVE_TARGET):
        pytest.fail(
            "Prometheus is installed but did not start: see its log in the live Airflow's component-logs"
        )

    def in_prometheus():
        query = urllib.parse.quote(compensated)
        url = f"http://127.0.0.1:{ports.prometheus}/api/v1/query?query={query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            result = json.loads(response.read())["data"]["result"]
        return result and float(result[0]["value"][1]) >= after[compensated]

    wait_for(in_prometheus, 30, "Prometheus to scrape the compensated counter")


@dataclass
class Batch:
    """Sagas triggered together, one fault each, and waited for together.

    Each run is mostly waiting (retry delays, hung steps), so running a fault matrix side by side
    costs little more than its slowest run. ``before`` is the inventory before any of them started;
    once all have finished it must be unchanged.
    """

    before: dict
    runs: dict[str, tuple[str, str]]  # step -> (run_id, saga_id)
    finished: dict[str, dict]

    def inventory_unchanged(self) -> bool:
        return inventory() == self.before


def run_batch(client, prefix: str, faults: dict[str, dict], timeout: float) -> Batch:
    _, dag = client.request("GET", f"/dags/{DAG_ID}")
    assert len(faults) <= dag["max_active_runs"], "more would queue behind the others"
    before = inventory()
    runs = {
        step: trigger(client, request(uniq(f"{prefix}{i}"), fault_injection=fault))
        for i, (step, fault) in enumerate(faults.items())
    }
    deadline = time.monotonic() + timeout
    finished = {
        step: client.wait_for_run(DAG_ID, run_id, timeout=max(1.0, deadline - time.monotonic()))
        for step, (run_id, _) in runs.items()
    }
    for _, saga_id in runs.values():  # a timed-out run is compensated after it ended, by its callback
        wait_for_saga(saga_id, {j.COMPLETED, j.COMPENSATED, j.FAILED})
    return Batch(before, runs, finished)


@pytest.fixture(scope="module")
def killed_batch(client) -> Batch:
    # SIGKILL right after the step's side effect, before its result is recorded, on every attempt.
    faults = {step: {"step": step, "mode": "crash_after_effect", "times": 9} for step in ALL_STEPS}
    return run_batch(client, "live_kill", faults, timeout=600)


@pytest.mark.parametrize("step", ALL_STEPS)
def test_killed_task_process_after_its_effect_is_compensated(killed_batch, step):
    run_id, saga_id = killed_batch.runs[step]
    assert killed_batch.finished[step]["state"] == "failed"
    assert journal().get(saga_id).state == j.COMPENSATED
    record = journal().step(saga_id, step)
    step_def = project_saga.definition().step(step)
    assert record.attempts == step_def.retry.retries + 1, "every retry was killed too"
    # The kill left the step EXECUTING (outcome unknown); validate_request and notify_owner have
    # nothing to undo.
    assert record.state == (j.EXECUTING if step_def.compensate is None else j.STEP_COMPENSATED)
    assert killed_batch.inventory_unchanged(), "what each killed process made was found and removed"


def test_killed_once_then_retried_completes_without_duplicates(client):
    name = uniq("live_kill1")
    fault = {"step": "create_credentials", "mode": "crash_after_effect", "times": 1}
    run_id, saga_id = trigger(client, request(name, fault_injection=fault))
    run = client.wait_for_run(DAG_ID, run_id, timeout=300)

    assert run["state"] == "success", client.explain(DAG_ID, run_id)
    assert journal().step(saga_id, "create_credentials").attempts == 2
    after = inventory()
    # The killed attempt had created roles and stored connections; the retry reused them.
    assert {c for c in after["connections"] if name in c} == {
        f"dbt_{name}_dev",
        f"dbt_{name}_staging",
        f"dbt_{name}_prod",
    }
    assert {r for r in after["roles"] if r.startswith(f"{name}_") and r.endswith("_rw")} == {
        f"{name}_dev_rw",
        f"{name}_staging_rw",
        f"{name}_prod_rw",
    }


@pytest.fixture(scope="module")
def hung_batch(client) -> Batch:
    # Every step hangs on every attempt. register_transformations has a long step timeout (it runs dbt
    # parse), so its run hits the saga's dagrun_timeout instead.
    faults = {step: {"step": step, "mode": "timeout", "times": 9} for step in ALL_STEPS}
    return run_batch(client, "live_hang", faults, timeout=LIVE_SAGA_TIMEOUTS["saga"] + 300)


@pytest.mark.parametrize("step", [s for s in ALL_STEPS if s in LIVE_SAGA_TIMEOUTS])
def test_step_that_hangs_past_its_timeout_is_retried_then_compensated(client, hung_batch, step):
    run_id, saga_id = hung_batch.runs[step]
    assert hung_batch.finished[step]["state"] == "failed"
    states = client.task_states(DAG_ID, run_id)
    assert states[step] == "failed"
    assert states["compensate"] == "success"
    assert journal().get(saga_id).state == j.COMPENSATED
    record = journal().step(saga_id, step)
    assert record.attempts == project_saga.definition().step(step).retry.retries + 1
    assert "timed out" in (record.error or "")
    assert hung_batch.inventory_unchanged()


def test_whole_saga_timeout_is_compensated_by_the_failure_callback(client, hung_batch):
    # dagrun_timeout ends the run while register_transformations hangs. Airflow then marks unfinished
    # tasks skipped, so compensate never runs: only the DAG's failure callback can undo.
    run_id, saga_id = hung_batch.runs["register_transformations"]
    assert hung_batch.finished["register_transformations"]["state"] == "failed"
    assert client.task_states(DAG_ID, run_id)["compensate"] in {"skipped", None}
    saga = journal().get(saga_id)
    assert saga.state == j.COMPENSATED
    assert "run ended failed" in (saga.error or "")
    assert hung_batch.inventory_unchanged()


def test_run_marked_failed_by_hand_is_compensated_by_the_recovery_dag(client):
    before = inventory()
    fault = {"step": "register_transformations", "mode": "timeout", "times": 9}
    run_id, saga_id = trigger(client, request(uniq("live_mark"), fault_injection=fault))
    wait_for_task_state(client, run_id, "register_transformations", "running", timeout=180)
    status, body = client.request("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", {"state": "failed"})
    assert status == 200, body
    time.sleep(3)
    assert journal().get(saga_id).state == j.EXECUTING, "marking a run failed fires no callback"

    sweep = f"sweep__{uuid.uuid4().hex[:8]}"
    status, body = client.trigger("saga_recovery", sweep, {"saga_id": None})
    assert status == 200, body
    assert client.wait_for_run("saga_recovery", sweep, timeout=180)["state"] == "success"
    assert journal().get(saga_id).state == j.COMPENSATED
    assert inventory() == before


@pytest.fixture(autouse=True, scope="module")
def _clean_up_completed_projects():
    yield
    undo_completed_sagas()


# Where each step's effect can be cut by a crash (its statement boundaries, in order; see
# include/dbt_platform/boundaries.py). Some are inside one transaction (the crash must leave nothing),
# the others between two statements that cannot share one (the compensation must recognise the half).
# register_transformations has none: its effect is one push, which the git server makes atomic (a
# crash after it is the kill matrix's crash_after_effect).
BETWEEN_STATEMENTS = {
    "create_project": [1],  # the registry row is in, its result not recorded
    "provision_database": [1, 2, 3],  # created under its reserved name / marked / closed, not renamed
    "create_environments": [1, 2],  # schema created not marked (one transaction) / no environment row
    "setup_repository": [1],  # the repository made on the git server, the scaffold not yet pushed
    "create_credentials": [3, 4],  # role made, connection not stored / the next role begun (one transaction)
    "assign_entitlements": [1],  # roles and grants are one transaction
    "notify_owner": [1],  # sent, not recorded
}


@pytest.fixture(scope="module")
def between_statements_batch(client) -> Batch:
    faults = {
        f"{step}@{k}": {"step": step, "mode": "crash_between_statements", "after": k, "times": 9}
        for step, points in BETWEEN_STATEMENTS.items()
        for k in points
    }
    return run_batch(client, "live_cut", faults, timeout=600)


@pytest.mark.parametrize("cut", [f"{s}@{k}" for s, points in BETWEEN_STATEMENTS.items() for k in points])
def test_a_crash_between_two_statements_of_an_effect_is_compensated(between_statements_batch, cut):
    run_id, saga_id = between_statements_batch.runs[cut]
    step = cut.split("@")[0]
    assert between_statements_batch.finished[cut]["state"] == "failed"
    assert journal().get(saga_id).state == j.COMPENSATED
    assert journal().step(saga_id, step).attempts == project_saga.definition().step(step).retry.retries + 1
    assert between_statements_batch.inventory_unchanged(), "every half-done effect was found and removed"


def test_a_rest_caller_reads_why_a_run_failed(client):
    # The name is valid for the form, but its project database exists already: validate_request rejects it.
    name = uniq("live_why")
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f"create database dbt_{name}")
    try:
        run_id, saga_id = trigger(client, request(name, environments=["dev"], idempotency_key=name))
        assert client.wait_for_run(DAG_ID, run_id, timeout=180)["state"] == "failed"
    finally:
        with admin() as conn, conn.cursor() as cur:
            cur.execute(f"drop database dbt_{name}")
    status, entry = client.request(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/report_outcome/xcomEntries/saga_outcome"
    )
    assert status == 200, entry
    outcome = entry["value"]
    if isinstance(outcome, str):
        outcome = json.loads(outcome)
    assert outcome["saga_id"] == saga_id and outcome["state"] == j.COMPENSATED
    assert outcome["first_cause"].startswith(
        f"validate_request: Conflict: database 'dbt_{name}' already exists"
    )
    # The key was not burned: the same request, now valid, creates the project.
    run2, saga2 = trigger(client, request(name, environments=["dev"], idempotency_key=name))
    assert client.wait_for_run(DAG_ID, run2, timeout=300)["state"] == "success", client.explain(DAG_ID, run2)
    assert saga2 != saga_id


def test_a_registry_entry_named_like_the_saga_dag_never_takes_its_id(client):
    """The defence in the DAG factory, on the real dag-processor: a project named like the saga DAG,
    pushed into the registered-projects bundle by hand (as a bug or a person could), is reported as an
    import error of the bundle, and the saga DAG keeps running the saga."""
    from include.dbt_platform.adapters import git
    from include.dbt_platform.transformations import bundle
    from tests.harness import git_admin

    host = git_admin()

    def add_intruder(tree):
        intruder = tree / bundle.PROJECTS / DAG_ID
        (intruder / "models").mkdir(parents=True, exist_ok=True)
        (intruder / "dbt_project.yml").write_text(f"name: {DAG_ID}\nprofile: {DAG_ID}\n")
        (intruder / "models" / "platform_heartbeat.sql").write_text("select 1 as id\n")
        build_manifest(intruder)
        return "An intruder named like the saga DAG"

    def remove_intruder(tree):
        shutil.rmtree(tree / bundle.PROJECTS / DAG_ID, ignore_errors=True)
        return "Remove the intruder"

    git.update(bundle.url(host), host, add_intruder)
    try:

        def reported():
            _, errors = client.request("GET", "/importErrors?limit=100")
            found = [
                e for e in errors.get("import_errors", []) if "registered_project_errors" in e["filename"]
            ]
            return any(DAG_ID in e["stack_trace"] and "platform DAG" in e["stack_trace"] for e in found)

        wait_for(reported, 240, "the dag-processor to report the intruding project")
        _, dag = client.request("GET", f"/dags/{DAG_ID}")
        assert dag["bundle_name"] == "dags-folder", "the saga DAG is still the platform's"
        run_id, saga_id = trigger(client, request(uniq("live_keep"), environments=["dev"]))
        assert client.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "success", client.explain(
            DAG_ID, run_id
        )
        tasks = set(client.task_states(DAG_ID, run_id))
        assert {"validate_request", "notify_owner", "report_outcome"} <= tasks
        assert not any("heartbeat" in t or "producer" in t for t in tasks)
        assert journal().get(saga_id).state == j.COMPLETED
    finally:
        git.update(bundle.url(host), host, remove_intruder)


def test_who_may_do_what_viewer_reads_requester_runs_the_lifecycle_admin_sets_up(client):
    """The FAB auth manager's roles: a viewer may not trigger a saga; a requester may trigger the
    project-lifecycle DAGs (and is journaled as the saga's requester) but not warehouse_setup, and
    sees no DAG but those."""
    from devstack.client import client_for
    from tests.harness import STACK
    from tests.scheduler.live import LIVE_TARGET

    viewer, requester = client_for(STACK, LIVE_TARGET, "viewer"), client_for(STACK, LIVE_TARGET, "requester")
    status, body = viewer.trigger(DAG_ID, f"viewer__{uuid.uuid4().hex[:8]}", request(uniq("live_viewer")))
    assert status == 403, body
    status, _ = viewer.request("GET", f"/dags/{DAG_ID}")
    assert status == 200, "a viewer reads"

    wait_until_readable(requester, DAG_ID)
    run_id, saga_id = trigger(requester, request(uniq("live_req"), environments=["dev"]))
    assert requester.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "success", client.explain(
        DAG_ID, run_id
    )
    assert journal().get(saga_id).requester == "requester", "the journal names who asked"

    status, body = requester.trigger(
        "warehouse_setup",
        f"req__{uuid.uuid4().hex[:8]}",
        {"project": "inventory_transforms", "mode": "status"},
    )
    assert status == 403, body
    _, dags = requester.request("GET", "/dags?limit=100")
    visible = {d["dag_id"] for d in dags["dags"]}
    lifecycle = {"dbt_project_create", "dbt_project_add_environment", "dbt_project_rotate_credentials",
                 "dbt_project_decommission"}  # fmt: skip
    # Besides those, only project DAGs of its own (owner:requester@example.com), none of another owner.
    assert lifecycle <= visible, visible
    assert all(journal_owner(dag_id) == REQUESTER_EMAIL for dag_id in visible - lifecycle), visible


REQUESTER_EMAIL = "requester@example.com"  # the stack's requester holds the role owner:<this>


def wait_until_readable(user_client, dag_id: str, timeout: float = 120) -> None:
    """The dag-processor grants a DAG's access_control just after it writes the DAG (and FAB caches a
    user's permissions for 30 s): wait until this user may read it."""
    wait_for(
        lambda: user_client.request("GET", f"/dags/{dag_id}")[0] == 200,
        timeout,
        lambda: f"{dag_id} to be readable by this user",
    )


def journal_owner(project_name: str) -> str | None:
    from include.dbt_platform.adapters.postgres import platform_dsn
    from include.dbt_platform.adapters.registry import Registry

    project = Registry(platform_dsn()).project(project_name)
    return project.owner if project else None


def test_an_owner_sees_their_project_and_no_one_elses_and_decommissioning_pauses_it_first(client):
    """Per-owner visibility through FAB's DAG-level access control, the project's state through
    REST, and decommissioning: paused through Airflow's API, then unregistered, then history."""
    from devstack.client import client_for
    from tests.harness import STACK
    from tests.scheduler.live import LIVE_TARGET

    viewer, requester = client_for(STACK, LIVE_TARGET, "viewer"), client_for(STACK, LIVE_TARGET, "requester")
    mine, theirs = uniq("live_mine"), uniq("live_theirs")
    runs = {
        mine: trigger(requester, request(mine, owner=REQUESTER_EMAIL, environments=["dev"])),
        theirs: trigger(client, request(theirs, owner="someone.else@example.com", environments=["dev"])),
    }
    for run_id, _ in runs.values():
        assert client.wait_for_run(DAG_ID, run_id, timeout=300)["state"] == "success", client.explain(
            DAG_ID, run_id
        )
    registered = journal().step(runs[mine][1], "register_transformations").result
    assert registered["access_roles"] == [f"owner:{REQUESTER_EMAIL}"], registered
    assert journal().step(runs[theirs][1], "register_transformations").result["access_roles"] == []
    client.wait_for_dag(mine, timeout=240)
    client.wait_for_dag(theirs, timeout=240)

    # DAGs: the owner's people see theirs (and may unpause it) and not another owner's; a viewer reads both.
    wait_until_readable(requester, mine)
    assert requester.request("PATCH", f"/dags/{mine}", {"is_paused": False})[0] == 200
    assert requester.request("GET", f"/dags/{theirs}")[0] == 403
    assert viewer.request("GET", f"/dags/{theirs}")[0] == 200
    # The project's state through REST, under the same rule.
    status, body = requester.call("GET", f"/sagas/api/projects/{mine}")
    assert status == 200, body
    project = body["project"]
    assert (project["state"], project["owner"]) == ("ACTIVE", REQUESTER_EMAIL), project
    assert [e["environment"] for e in project["environments"]] == ["dev"], project
    assert requester.call("GET", f"/sagas/api/projects/{theirs}")[0] == 403
    listed = {p["project_name"] for p in requester.call("GET", "/sagas/api/projects")[1]["projects"]}
    assert mine in listed and theirs not in listed, listed
    assert viewer.call("GET", f"/sagas/api/projects/{theirs}")[0] == 200

    # Decommissioned by its requester: the DAG is paused through Airflow's API before it goes.
    status, body = requester.trigger(
        "dbt_project_decommission", f"test__{uuid.uuid4().hex[:10]}",
        {"project_name": mine, "drop_database": True, "idempotency_key": None, "fault_injection": None},
    )  # fmt: skip
    assert status == 200, body
    run = client.wait_for_run("dbt_project_decommission", body["dag_run_id"], timeout=300)
    assert run["state"] == "success", client.explain("dbt_project_decommission", body["dag_run_id"])
    saga_id = j.saga_id_for("dbt_project_decommission", body["dag_run_id"])
    assert journal().step(saga_id, "pause_transformations").result == {"paused": True, "was_paused": False}
    assert client.request("GET", f"/dags/{mine}")[1]["is_paused"] is True
    status, body = requester.call("GET", f"/sagas/api/projects/{mine}")
    assert status == 200, body
    assert body["project"] is None
    assert [h["state"] for h in body["history"]] == ["DECOMMISSIONED"], body
