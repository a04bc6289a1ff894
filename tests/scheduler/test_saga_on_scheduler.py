"""dbt_project_create on a real scheduler: the paths ``dag.test()`` cannot take.

A task process killed by SIGKILL, a step that hangs past its ``execution_timeout``, a run that hits
``dagrun_timeout`` (only the DAG's failure callback fires) and a run marked failed by hand (no
callback at all: the recovery DAG finishes it). Triggered through the REST API, like a portal would.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from dataclasses import dataclass

import pytest

from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.saga import journal as j
from tests.harness import wait_for
from tests.saga_support import inventory, journal, request, undo_completed_sagas, uniq
from tests.scheduler.live import LIVE_SAGA_TIMEOUTS, LIVE_STATSD_PORT

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


def test_rest_trigger_completes_and_a_reused_run_id_is_refused(client):
    name = uniq("live_ok")
    run_id, saga_id = trigger(client, request(name))
    run = client.wait_for_run(DAG_ID, run_id, timeout=300)
    assert run["state"] == "success", client.task_states(DAG_ID, run_id)
    assert journal().get(saga_id).state == j.COMPLETED

    status, _ = client.trigger(DAG_ID, run_id, request(uniq("live_again")))
    assert status == 409
    status, body = client.trigger(DAG_ID, f"bad__{uuid.uuid4().hex[:8]}", request("Bad Name"))
    assert status == 400, body


def test_step_and_saga_durations_and_outcomes_are_emitted_as_metrics(client):
    # Airflow's StatsD client (configured in LIVE_ENV) sends to this loopback UDP port. The scheduler
    # sends many metrics too, so a thread drains the socket while the saga runs.
    received: list[str] = []
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", LIVE_STATSD_PORT))
        sock.settimeout(0.2)

        def drain() -> None:
            while not stop.is_set():
                try:
                    received.extend(sock.recv(65535).decode(errors="replace").splitlines())
                except TimeoutError:
                    continue

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        try:
            fault = {"step": "notify_owner", "mode": "permanent"}
            run_id, saga_id = trigger(client, request(uniq("live_metrics"), fault_injection=fault))
            client.wait_for_run(DAG_ID, run_id, timeout=300)
            wait_for_saga(saga_id, {j.COMPENSATED})
            time.sleep(2)
        finally:
            stop.set()
            reader.join()
    names = {line.split(":")[0] for line in received}
    prefix = "airflow.dbt_platform.saga.dbt_project_create"
    assert f"{prefix}.step.provision_database.succeeded" in names
    assert f"{prefix}.step.provision_database.duration" in names
    assert f"{prefix}.step.notify_owner.failed" in names
    assert f"{prefix}.compensated" in names
    assert f"{prefix}.duration" in names
    timing = next(m for m in received if m.startswith(f"{prefix}.step.provision_database.duration:"))
    assert timing.endswith("|ms") and float(timing.split(":")[1].split("|")[0]) > 0


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

    assert run["state"] == "success", client.task_states(DAG_ID, run_id)
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
