"""The saga engine's ordering and policies, on an in-memory journal (no database, no Airflow DB).

One test per outcome: completion, a permanent failure (no retry, compensation newest first, only
what began), a transient failure (retried), a compensation that fails (the others still run; FAILED
and alerted on the last attempt only), idempotent re-runs, duplicate requests, and the task graph.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import (
    AirflowException,
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)

from include.dbt_platform.errors import PermanentError, RequestInvalid, TransientError
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.definition import RetryPolicy, SagaDefinition, Step
from include.dbt_platform.saga.engine import (
    OUTCOME_XCOM_KEY,
    compensate_saga,
    report_outcome,
    run_step,
)
from include.dbt_platform.saga.recovery import recover_run, recover_sagas
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
        pivot="third",
        steps=[
            Step("check", rec.action("check"), retry=RetryPolicy(retries=0)),
            *(Step(n, rec.action(n), rec.compensation(n), retry=RetryPolicy(retries=2)) for n in NAMES[1:]),
        ],
    )
    return SimpleNamespace(definition=definition, journal=journal, rec=rec)


class FakeTI(SimpleNamespace):
    """What the engine reads of Airflow's task instance, and the XComs it pushes."""

    def xcom_push(self, key: str, value) -> None:
        self.xcoms[key] = value


def context(run_id: str, try_number: int = 1, **params) -> dict:
    ti = FakeTI(
        dag_id=DAG_ID, run_id=run_id, try_number=try_number, task=SimpleNamespace(retries=3), xcoms={}
    )
    return {
        "ti": ti,
        "params": {"who": "ana", **params},
        "dag_run": SimpleNamespace(triggering_user_name="ana"),
    }


def drive(saga, run_id: str, *, upto: int | None = None, **params) -> str:
    """Run the forward steps in order (the first ``upto``: all, the last completing the saga), as the
    DAG would, until one fails for good."""
    ctx = context(run_id, **params)
    for step in saga.definition.steps[:upto]:
        try:
            run_step(saga.definition, step, ctx)
        except AirflowFailException:
            break
    return j.saga_id_for(DAG_ID, run_id)


def test_every_step_runs_in_order_with_the_parsed_request_and_the_last_one_completes(saga):
    ctx = context("r1")
    for step in saga.definition.steps[:-1]:
        run_step(saga.definition, step, ctx)
    saga_id = j.saga_id_for(DAG_ID, "r1")
    assert saga.journal.get(saga_id).state == j.EXECUTING and saga.rec.completed == []
    run_step(saga.definition, saga.definition.steps[-1], ctx)
    assert saga.rec.calls == [f"do {n}" for n in NAMES]
    assert {s.step_name: s.state for s in saga.journal.steps(saga_id)} == {n: j.SUCCEEDED for n in NAMES}
    assert saga.journal.step(saga_id, "first").result["request_seen"] == ("parsed", "ana")
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
    saga_id = drive(saga, "r5", upto=-1)  # not completed yet
    calls = list(saga.rec.calls)
    run_step(saga.definition, saga.definition.step("second"), context("r5", try_number=2))
    assert saga.rec.calls == calls
    assert saga.journal.step(saga_id, "second").state == j.SUCCEEDED
    last = saga.definition.steps[-1]
    run_step(saga.definition, last, context("r5"))
    assert saga.journal.get(saga_id).state == j.COMPLETED
    calls = list(saga.rec.calls)
    # The last step's task retried after it completed the saga (its process died before it said so):
    run_step(saga.definition, last, context("r5", try_number=2))
    assert saga.rec.calls == calls and saga.rec.completed == [(saga_id, ("parsed", "ana"))]


def test_a_compensated_saga_runs_no_further_step(saga):
    saga.rec.fail["first"] = PermanentError("no")
    saga_id = drive(saga, "r6")
    compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test")
    with pytest.raises(AirflowFailException, match="COMPENSATED"):
        run_step(saga.definition, saga.definition.step("second"), context("r6"))
    assert "do second" not in saga.rec.calls


def test_the_same_idempotency_key_starts_no_second_saga_and_reports_the_first(saga):
    first = drive(saga, "r7", key="k1")
    calls = list(saga.rec.calls)
    with pytest.raises(AirflowSkipException, match=first):
        run_step(saga.definition, saga.definition.steps[0], context("r8", key="k1"))
    assert saga.rec.calls == calls
    assert saga.journal.get(j.saga_id_for(DAG_ID, "r8")) is None
    assert report_outcome(saga.definition, context("r8", key="k1")) == {
        "saga_id": first,
        "state": j.COMPLETED,
        "duplicate_of": first,
        "first_cause": None,
        "requester": "ana",
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
    assert dag.get_task("third").downstream_task_ids == {"report_outcome", "compensate"}
    assert [t.task_id for t in dag.tasks] == [*NAMES, "compensate", "report_outcome"], (
        "no task beyond the steps"
    )
    assert dag.get_task("compensate").trigger_rule == TriggerRule.ONE_FAILED
    # A failure after the pivot goes forward: completion does not lead to compensation.
    assert dag.get_task("compensate").upstream_task_ids == set(NAMES)
    leaves = [t.task_id for t in dag.tasks if not t.downstream_task_ids]
    assert leaves == ["report_outcome"], "one leaf decides the run's state"
    assert dag.get_task("report_outcome").trigger_rule == TriggerRule.ALL_DONE
    with pytest.raises(ValueError, match="unknown steps"):
        saga.definition.with_timeouts({"no_such_step": 1})


def test_a_rejected_request_frees_its_idempotency_key_and_says_why(saga):
    saga.rec.fail["check"] = RequestInvalid("project_name is taken")
    rejected = drive(saga, "r9", key="k9")
    assert saga.journal.get(rejected).idempotency_key is None
    ctx = context("r9", key="k9")
    with pytest.raises(AirflowFailException, match="project_name is taken"):
        report_outcome(saga.definition, ctx)
    assert ctx["ti"].xcoms[OUTCOME_XCOM_KEY]["first_cause"] == "check: RequestInvalid: project_name is taken"

    del saga.rec.fail["check"]  # the corrected request, same key: a saga of its own, not a duplicate
    corrected = drive(saga, "r10", key="k9")
    assert corrected != rejected and saga.journal.get(corrected).state == j.COMPLETED
    assert saga.journal.get(corrected).idempotency_key == "k9"


def test_the_first_cause_is_kept_whatever_fails_later(saga):
    saga.rec.fail["second"] = PermanentError("disk full")
    saga.rec.fail["undo first"] = RuntimeError("stuck")
    saga_id = drive(saga, "r11")
    compensate_saga(saga.definition, saga_id, final_attempt=True, reason="a forward step failed")
    saga_record = saga.journal.get(saga_id)
    assert saga_record.state == j.FAILED
    assert saga_record.first_cause == "second: PermanentError: disk full"
    ctx = context("r11")
    with pytest.raises(AirflowFailException, match="disk full"):
        report_outcome(saga.definition, ctx)
    assert ctx["ti"].xcoms[OUTCOME_XCOM_KEY] == {
        "saga_id": saga_id, "state": j.FAILED, "duplicate_of": None,
        "first_cause": "second: PermanentError: disk full", "requester": "ana",
    }  # fmt: skip


def test_after_the_pivot_a_failing_completion_is_retried_forward_never_compensated(saga):
    definition = replace(saga.definition, fault_injection_enabled=lambda: True)
    permanent = {"step": "complete_saga", "mode": "permanent"}
    ctx = context("r12", fault_injection=permanent)
    for step in definition.steps[:-1]:
        run_step(definition, step, ctx)
    with pytest.raises(AirflowFailException, match="injected permanent fault in complete_saga"):
        run_step(definition, definition.steps[-1], ctx)
    saga_id = j.saga_id_for(DAG_ID, "r12")
    assert saga.journal.step(saga_id, "third").state == j.SUCCEEDED
    assert saga.journal.get(saga_id).state == j.EXECUTING
    calls = list(saga.rec.calls)
    # The last step's task failed for good: its run's `compensate` (or the failure callback, or the
    # recovery sweep) finishes the saga, forward.
    assert compensate_saga(definition, saga_id, final_attempt=False, reason="a forward step failed") == []
    assert saga.journal.get(saga_id).state == j.COMPLETED
    assert saga.rec.calls == calls, "nothing was undone, nothing run again"
    assert saga.rec.completed == [(saga_id, ("parsed", "ana"))]
    assert recover_run(saga.definition, DAG_ID, "r12", reason="run ended failed") == []

    transient = {"step": "complete_saga", "mode": "transient", "times": 1}
    ctx = context("r12t", fault_injection=transient)
    for step in definition.steps[:-1]:
        run_step(definition, step, ctx)
    with pytest.raises(AirflowException, match="will retry"):
        run_step(definition, definition.steps[-1], ctx)
    calls = list(saga.rec.calls)
    run_step(definition, definition.steps[-1], context("r12t", try_number=2, fault_injection=transient))
    assert saga.rec.calls == calls, "the retry completes the saga without running the step again"
    assert saga.journal.get(j.saga_id_for(DAG_ID, "r12t")).state == j.COMPLETED


def test_a_compensation_waits_for_a_running_step_then_finishes(saga, monkeypatch):
    saga.rec.fail["second"] = PermanentError("no")
    saga_id = drive(saga, "r13")
    saga.journal.locked.add(saga_id)  # a step of the saga holds its fence
    with pytest.raises(TransientError, match="busy"):
        compensate_saga(saga.definition, saga_id, final_attempt=True, reason="callback")
    assert saga.journal.get(saga_id).state == j.EXECUTING, "nothing undone under a running step"

    sleeps = []

    def step_ends(seconds: float) -> None:
        sleeps.append(seconds)
        saga.journal.locked.discard(saga_id)

    monkeypatch.setattr("include.dbt_platform.saga.recovery.time.sleep", step_ends)
    assert recover_run(saga.definition, DAG_ID, "r13", reason="run timed out") == []
    assert sleeps == [2.0], "retried once, after a backoff"
    assert saga.journal.get(saga_id).state == j.COMPENSATED


def test_a_step_result_is_not_kept_once_the_saga_moved_on(saga):
    saga.rec.fail["second"] = PermanentError("no")
    saga_id = drive(saga, "r14")
    compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test")
    assert not saga.journal.step_succeeded(saga_id, "first", {"late": True})
    assert saga.journal.step(saga_id, "first").state == j.STEP_COMPENSATED
    assert not saga.journal.step_started(saga_id, "third", 1)


def test_one_saga_whose_compensation_keeps_failing_does_not_stop_the_sweep(saga, monkeypatch):
    monkeypatch.setattr("include.dbt_platform.saga.recovery.time.sleep", lambda seconds: None)
    saga.rec.fail["third"] = PermanentError("no")
    stuck, fine = drive(saga, "r15"), None
    saga.rec.fail["undo second"] = RuntimeError("stuck")
    broken = drive(saga, "r16")
    saga.journal.sagas[broken] = replace(saga.journal.get(broken), request={})  # unreadable by parse_request
    del saga.rec.fail["third"]
    saga.rec.fail["first"] = PermanentError("no")
    fine = drive(saga, "r17")
    done = recover_sagas(saga.definition, lambda dag_id, run_id: "failed", attempts=2)
    assert done[stuck] == j.FAILED and done[fine] == j.COMPENSATED
    assert done[broken] == j.FAILED
    assert [alerted for alerted, _ in saga.rec.alerts] == [stuck, broken]


def test_steps_after_a_mid_saga_pivot_go_forward_from_outside_the_run(saga, monkeypatch):
    """A saga whose pivot is not its last step (e.g. decommissioning: dropping roles cannot be
    undone, removing the files after it can be retried): what is left after the pivot is run by the
    callback or the sweep, never compensated; a step that keeps failing leaves it FAILED, and a
    re-drive goes forward again."""
    monkeypatch.setattr("include.dbt_platform.saga.recovery.time.sleep", lambda seconds: None)
    definition = replace(saga.definition, pivot="second")
    saga.rec.fail["third"] = RuntimeError("disk busy")
    ctx = context("r20")
    for step in definition.steps[:3]:
        run_step(definition, step, ctx)
    with pytest.raises(AirflowFailException):
        run_step(definition, definition.step("third"), ctx)
    saga_id = j.saga_id_for(DAG_ID, "r20")
    assert recover_run(definition, DAG_ID, "r20", reason="run ended failed") == [
        "third: RuntimeError: disk busy"
    ]
    assert saga.journal.get(saga_id).state == j.FAILED, "alerted: going forward needs a hand"
    assert not any(call.startswith("undo") for call in saga.rec.calls), "nothing undone past the pivot"
    del saga.rec.fail["third"]
    assert recover_sagas(definition, lambda d, r: "failed", saga_id=saga_id) == {saga_id: j.COMPLETED}
    assert saga.rec.calls[-1] == "do third", "the step after the pivot ran again, forward"
    assert {s.step_name: s.state for s in saga.journal.steps(saga_id)} == {n: j.SUCCEEDED for n in NAMES}


def test_a_requester_beyond_their_sagas_waits_for_a_turn_instead_of_failing(saga):
    from datetime import UTC, datetime

    from airflow.sdk import DAG

    from include.dbt_platform.saga.engine import wait_for_turn
    from include.dbt_platform.saga.tasks import build_tasks

    limited = replace(saga.definition, per_requester=2, pool="sagas")
    first = limited.steps[0]
    run_step(limited, first, context("t1"))
    run_step(limited, first, context("t2"))
    calls = list(saga.rec.calls)
    before = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as waiting:
        run_step(limited, first, context("t3"))
    assert waiting.value.reschedule_date >= before + timedelta(seconds=5), "it asks again later"
    assert saga.journal.get(j.saga_id_for(DAG_ID, "t3")) is None and saga.rec.calls == calls, (
        "a run that waits for a turn begins nothing"
    )
    other = context("t4")
    other["dag_run"] = SimpleNamespace(triggering_user_name="bob")
    assert wait_for_turn(limited, other), "other requesters are not held up"
    assert wait_for_turn(limited, context("t1")), "a turn taken is kept (a retried task)"
    with pytest.raises(AirflowFailException):  # the verdict gives the turn back, whatever it is
        report_outcome(limited, context("t1"))
    run_step(limited, first, context("t3"))
    assert saga.journal.get(j.saga_id_for(DAG_ID, "t3")).state == j.EXECUTING
    with DAG("unit_gate", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        build_tasks(limited)
    assert "fewer than 2 sagas going" in dag.get_task("check").doc_md
    # Saga work runs in the pool; waiting (for a turn: the first step, for a duplicate's original: the
    # verdict) holds no slot of it.
    assert {t.task_id for t in dag.tasks if t.pool == "sagas"} == {*NAMES[1:], "compensate"}
