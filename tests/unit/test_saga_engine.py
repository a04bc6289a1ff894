"""The saga engine's ordering and policies, on an in-memory journal (no database, no Airflow DB).

One test per outcome: completion, a permanent failure (no retry, compensation newest first, only
what began), a transient failure (retried), a compensation that fails (the others still run; FAILED
and alerted on the last attempt only), idempotent re-runs, duplicate requests, and the task graph.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from include.dbt_platform.errors import PermanentError, TransientError
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.definition import RetryPolicy, SagaDefinition, Step
from include.dbt_platform.saga.engine import compensate_saga, complete_saga, report_outcome, run_step
from tests.unit.fake_journal import FakeJournal

DAG_ID = "unit_saga"
NAMES = ["check", "first", "second", "third"]


class Recorder:
    """Steps that record what they did; any step can be told to fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.alerts: list[tuple[str, list[str]]] = []
        self.completed: list[tuple[str, dict]] = []

    def action(self, name: str):
        def act(ctx) -> dict:
            self.calls.append(f"do {name}")
            if name in self.fail:
                raise self.fail[name]
            return {"did": name, "request_seen": ctx.request}

        return act

    def compensation(self, name: str):
        def undo(ctx) -> None:
            self.calls.append(f"undo {name}")
            if f"undo {name}" in self.fail:
                raise self.fail[f"undo {name}"]

        return undo


@pytest.fixture
def saga():
    journal = FakeJournal()
    rec = Recorder()
    definition = SagaDefinition(
        name="unit",
        journal=lambda: journal,
        timeout=timedelta(minutes=5),
        parse_request=lambda request: ("parsed", request["who"]),
        idempotency_key=lambda params: params.get("key"),
        on_alert=lambda saga, failures: rec.alerts.append((saga.saga_id, failures)),
        on_completed=lambda saga_id, request: rec.completed.append((saga_id, request)),
        steps=[
            Step("check", rec.action("check"), retry=RetryPolicy(retries=0)),
            *(Step(n, rec.action(n), rec.compensation(n), retry=RetryPolicy(retries=2)) for n in NAMES[1:]),
        ],
    )
    return SimpleNamespace(definition=definition, journal=journal, rec=rec)


def context(run_id: str, try_number: int = 1, **params) -> dict:
    ti = SimpleNamespace(dag_id=DAG_ID, run_id=run_id, try_number=try_number, task=SimpleNamespace(retries=3))
    return {"ti": ti, "params": {"who": "ana", **params}}


def drive(saga, run_id: str, **params) -> str:
    """Run the forward steps in order, as the DAG would, until one fails for good."""
    ctx = context(run_id, **params)
    for step in saga.definition.steps:
        try:
            run_step(saga.definition, step, ctx)
        except AirflowFailException:
            break
    return j.saga_id_for(DAG_ID, run_id)


def test_every_step_runs_in_order_with_the_parsed_request_then_completes(saga):
    saga_id = drive(saga, "r1")
    assert saga.rec.calls == [f"do {n}" for n in NAMES]
    assert {s.step_name: s.state for s in saga.journal.steps(saga_id)} == {n: j.SUCCEEDED for n in NAMES}
    assert saga.journal.step(saga_id, "first").result["request_seen"] == ("parsed", "ana")
    complete_saga(saga.definition, context("r1"))
    assert saga.journal.get(saga_id).state == j.COMPLETED
    assert saga.rec.completed == [(saga_id, ("parsed", "ana"))]
    assert report_outcome(saga.definition, context("r1"))["state"] == j.COMPLETED


def test_a_permanent_error_is_not_retried_and_undoes_newest_first_only_what_began(saga):
    saga.rec.fail["second"] = PermanentError("no")
    ctx = context("r2")
    run_step(saga.definition, saga.definition.step("check"), ctx)
    run_step(saga.definition, saga.definition.step("first"), ctx)
    with pytest.raises(AirflowFailException, match="second: no"):
        run_step(saga.definition, saga.definition.step("second"), ctx)
    saga_id = j.saga_id_for(DAG_ID, "r2")
    assert saga.journal.step(saga_id, "second").state == j.STEP_FAILED
    assert saga.journal.step(saga_id, "second").attempts == 1

    assert compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test") == []
    # third never began: not undone. second began (its effect may be half made): undone, before first.
    assert saga.rec.calls[-2:] == ["undo second", "undo first"]
    assert saga.journal.get(saga_id).state == j.COMPENSATED
    assert saga.journal.step(saga_id, "third").state == j.PENDING
    with pytest.raises(AirflowFailException, match="COMPENSATED"):
        report_outcome(saga.definition, context("r2"))


def test_a_transient_error_is_retried_and_the_last_attempt_is_final(saga):
    saga.rec.fail["first"] = TransientError("flaky")
    ctx = context("r3")
    run_step(saga.definition, saga.definition.step("check"), ctx)
    for attempt in (1, 2):
        with pytest.raises(AirflowException, match="will retry") as raised:
            run_step(saga.definition, saga.definition.step("first"), context("r3", try_number=attempt))
        assert not isinstance(raised.value, AirflowFailException)
        assert saga.journal.step(j.saga_id_for(DAG_ID, "r3"), "first").state == j.EXECUTING
    with pytest.raises(AirflowException):  # 1 + 2 retries: the third attempt is the last
        run_step(saga.definition, saga.definition.step("first"), context("r3", try_number=3))
    assert saga.journal.step(j.saga_id_for(DAG_ID, "r3"), "first").state == j.STEP_FAILED


def test_a_failing_compensation_does_not_stop_the_others_and_only_the_last_attempt_alerts(saga):
    saga.rec.fail["third"] = PermanentError("no")
    saga.rec.fail["undo second"] = RuntimeError("stuck")
    saga_id = drive(saga, "r4")

    failures = compensate_saga(saga.definition, saga_id, final_attempt=False, reason="test")
    assert failures == ["second: RuntimeError: stuck"]
    assert saga.rec.calls[-3:] == ["undo third", "undo second", "undo first"]
    assert saga.journal.get(saga_id).state == j.COMPENSATING, "a retry of compensate may still succeed"
    assert saga.rec.alerts == []

    saga.rec.calls.clear()
    compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test")
    assert saga.rec.calls == ["undo second"], "what was compensated is not undone twice"
    assert saga.journal.get(saga_id).state == j.FAILED
    assert saga.journal.step(saga_id, "second").state == j.COMPENSATION_FAILED
    assert saga.rec.alerts == [(saga_id, ["second: RuntimeError: stuck"])]

    del saga.rec.fail["undo second"]  # the cause is fixed: a re-drive finishes it
    assert compensate_saga(saga.definition, saga_id, final_attempt=True, reason="re-drive") == []
    assert saga.journal.get(saga_id).state == j.COMPENSATED


def test_a_cleared_or_retried_step_that_already_succeeded_does_nothing(saga):
    saga_id = drive(saga, "r5")
    calls = list(saga.rec.calls)
    run_step(saga.definition, saga.definition.step("second"), context("r5", try_number=2))
    assert saga.rec.calls == calls
    assert saga.journal.step(saga_id, "second").state == j.SUCCEEDED


def test_a_compensated_saga_runs_no_further_step(saga):
    saga.rec.fail["first"] = PermanentError("no")
    saga_id = drive(saga, "r6")
    compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test")
    with pytest.raises(AirflowFailException, match="COMPENSATED"):
        run_step(saga.definition, saga.definition.step("second"), context("r6"))
    assert "do second" not in saga.rec.calls


def test_the_same_idempotency_key_starts_no_second_saga_and_reports_the_first(saga):
    first = drive(saga, "r7", key="k1")
    complete_saga(saga.definition, context("r7"))
    calls = list(saga.rec.calls)
    with pytest.raises(AirflowSkipException, match=first):
        run_step(saga.definition, saga.definition.steps[0], context("r8", key="k1"))
    assert saga.rec.calls == calls
    assert saga.journal.get(j.saga_id_for(DAG_ID, "r8")) is None
    assert report_outcome(saga.definition, context("r8", key="k1")) == {
        "saga_id": first,
        "state": j.COMPLETED,
        "duplicate_of": first,
    }


def test_the_task_graph_carries_each_steps_policy_and_one_verdict(saga):
    from datetime import UTC, datetime

    from airflow.sdk import DAG, TriggerRule

    from include.dbt_platform.saga.tasks import build_tasks

    definition = saga.definition.with_timeouts({"second": 7, "saga": 60})
    with DAG("unit_graph", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        tasks = build_tasks(definition)
    assert [t.task_id for t in tasks["forward"]] == NAMES
    for task, step in zip(tasks["forward"], definition.steps, strict=True):
        assert (task.retries, task.execution_timeout) == (step.retry.retries, step.timeout)
        assert task.retry_exponential_backoff
    assert dag.get_task("second").execution_timeout == timedelta(seconds=7)
    assert definition.timeout == timedelta(seconds=60)
    assert dag.get_task("third").downstream_task_ids == {"complete_saga", "compensate"}
    assert dag.get_task("compensate").trigger_rule == TriggerRule.ONE_FAILED
    assert dag.get_task("compensate").upstream_task_ids == {*NAMES, "complete_saga"}
    leaves = [t.task_id for t in dag.tasks if not t.downstream_task_ids]
    assert leaves == ["report_outcome"], "one leaf decides the run's state"
    assert dag.get_task("report_outcome").trigger_rule == TriggerRule.ALL_DONE
    with pytest.raises(ValueError, match="unknown steps"):
        saga.definition.with_timeouts({"no_such_step": 1})
