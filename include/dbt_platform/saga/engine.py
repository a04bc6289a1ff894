"""Running a saga: a step's task body, completion, compensation (newest first), the run's verdict.

    step 1 >> step 2 >> ... >> step N
    compensate        (ONE_FAILED: runs only when a forward task failed; undoes in reverse order)
    report_outcome    (ALL_DONE, the only leaf that decides the run's state: success iff COMPLETED)

(:mod:`.tasks` builds that graph.) The first step's task also waits for the requester's turn
(:func:`wait_for_turn`, rescheduled while there is none) and records the saga; the last step's task
also completes it (:func:`_complete`). Every task of a saga's happy path is one of its steps: each
task more costs the run a scheduling round trip (about 0.3 s here).

State lives in the journal (:mod:`.journal`), not in Airflow task state, so a run that times out, is
killed or is marked failed by hand is still finished by the DAG's failure callback or the recovery
DAG, both of which call :func:`compensate_saga` (through :mod:`.recovery`).

A step and a compensation of the same saga never run at the same time: each holds the saga's fence
(:meth:`.journal.Journal.fence`) while it runs, and every journal transition is conditional on the
state it was read in. Once the pivot step succeeded, the saga only goes forward: what is left is
retried until it completes, never compensated.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from include.dbt_platform import boundaries
from include.dbt_platform.errors import TransientError, Unavailable, classify
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga import metrics
from include.dbt_platform.saga import tracing as spans
from include.dbt_platform.saga.definition import SagaDefinition, Step, StepContext, saga_logger
from include.dbt_platform.saga.faults import FaultInjector

# How long a step or a compensation waits for the saga's fence before it retries (TransientError).
FENCE_WAIT_SECONDS = 30.0
# How often a run whose requester has no turn free asks again (its first task, rescheduled).
TURN_POKE_INTERVAL = timedelta(seconds=5)
OUTCOME_XCOM_KEY = "saga_outcome"

log = logging.getLogger(__name__)


def _ids(context: dict) -> tuple[str, str, str]:
    ti = context["ti"]
    return ti.dag_id, ti.run_id, j.saga_id_for(ti.dag_id, ti.run_id)


def _context_for(
    definition: SagaDefinition,
    journal: j.Journal,
    saga_id: str,
    request,
    step: Step,
    attempt: int,
    fault: FaultInjector,
) -> StepContext:
    return StepContext(
        saga_id=saga_id, step=step, request=request, journal=journal, attempt=attempt, fault=fault
    )


def _public_request(params: dict) -> dict:
    # The request as recorded in the journal: the DAG params, minus drills.
    return {k: v for k, v in params.items() if k != "fault_injection"}


def _injector(definition: SagaDefinition, params: dict) -> FaultInjector:
    return FaultInjector(params.get("fault_injection"), definition.fault_injection_enabled())


def _ended(
    definition: SagaDefinition, journal: j.Journal, saga: j.SagaRecord, state: str, *, redrive
) -> None:
    """A saga reached an end: its metrics (outcome, duration, how many are still going) and its root
    span, or, for a re-drive (``redrive``: ``(span id, start)``), the re-drive's span."""
    metrics.saga_finished(definition.name, state, saga.created_at)
    metrics.report_active(definition.name, journal)
    now = time.time()
    if redrive:
        spans.redrive(definition.name, saga.saga_id, saga.request, redrive[0], redrive[1], now, state)
    else:
        cause = journal.get(saga.saga_id).first_cause if state != j.COMPLETED else None
        spans.saga_ended(definition.name, saga.saga_id, saga.request, saga.created_at, now, state, cause)


def requester_of(context: dict) -> str | None:
    """The Airflow user who triggered the run (None for a scheduled run)."""
    return getattr(context.get("dag_run"), "triggering_user_name", None)


def wait_for_turn(definition: SagaDefinition, context: dict) -> bool:
    """Whether this run's requester has a turn free (idempotent per run). True at once when there is
    no limit. The first step's task calls it first: without a turn it is rescheduled (the run waits,
    holding no worker slot, and begins nothing); the run's verdict gives the turn back."""
    if not definition.per_requester:
        return True
    ti = context["ti"]
    journal = definition.journal()
    requester = requester_of(context) or "(scheduled)"
    if journal.take_turn(ti.dag_id, ti.run_id, requester, definition.per_requester):
        return True
    saga_logger(j.saga_id_for(ti.dag_id, ti.run_id)).info(
        "requester %s has %s sagas going already: waiting for a turn", requester, definition.per_requester
    )
    return False


def run_step(definition: SagaDefinition, step: Step, context: dict) -> None:
    """The body of a forward task. Idempotent: a cleared or retried task re-runs safely."""
    from airflow.sdk.exceptions import AirflowSkipException

    dag_id, run_id, saga_id = _ids(context)
    params = dict(context["params"])
    journal = definition.journal()
    slog = saga_logger(saga_id)
    if step is definition.steps[0]:
        journal.ensure_schema()
        if not wait_for_turn(definition, context):
            from airflow.sdk.exceptions import AirflowRescheduleException

            raise AirflowRescheduleException(datetime.now(UTC) + TURN_POKE_INTERVAL)
        begun = journal.begin(
            saga_id=saga_id,
            saga_name=definition.name,
            dag_id=dag_id,
            run_id=run_id,
            request=_public_request(params),
            idempotency_key=definition.idempotency_key(params),
            steps=[s.name for s in definition.steps],
            timeout=definition.timeout,
            requester=requester_of(context),
        )
        if begun.kind == "duplicate":
            slog.info("idempotency key already used by saga %s: creating nothing", begun.saga.saga_id)
            raise AirflowSkipException(f"duplicate of saga {begun.saga.saga_id}")
        if begun.kind == "new":
            metrics.saga_started(definition.name)
            metrics.report_active(definition.name, journal)
    try:
        with journal.fence(saga_id, FENCE_WAIT_SECONDS):
            attempt = context["ti"].try_number
            _run_fenced(
                definition, step, journal, saga_id, attempt, params, slog, spans.task_attributes(context)
            )
            if step is definition.steps[-1]:
                _complete(definition, journal, saga_id, _injector(definition, params), attempt)
    except TransientError as exc:  # the fence was busy, or the journal unreachable
        from airflow.sdk.exceptions import AirflowException

        raise AirflowException(f"{step.name}: {exc} (will retry)") from None
    finally:
        spans.flush()


def _run_fenced(definition, step, journal, saga_id, attempt, params, slog, task=None) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowTaskTimeout

    saga = journal.get(saga_id)
    done = journal.step(saga_id, step.name).state == j.SUCCEEDED if saga is not None else False
    if done and saga.state == j.COMPLETED:  # a retry after the last step's task completed the saga
        slog.info("step %s already succeeded and the saga completed; nothing to do", step.name)
        return
    if saga is None or saga.state != j.EXECUTING:
        raise AirflowFailException(
            f"saga {saga_id} is {saga.state if saga else 'unknown'}; not running {step.name}"
        )
    if done:
        slog.info("step %s already succeeded; nothing to do", step.name)
        return
    if not journal.step_started(saga_id, step.name, attempt):
        raise AirflowFailException(f"saga {saga_id}: {step.name} can no longer start")
    fault = _injector(definition, params)
    started, wall = time.monotonic(), time.time()

    def traced(outcome: str, error=None, final: bool = False) -> None:
        now = time.time()
        spans.attempt(
            definition.name, saga_id, saga.request, step.name, attempt, wall, now,
            error=error, outcome=outcome, task=task,
        )  # fmt: skip
        if final:
            first = journal.step(saga_id, step.name).started_at
            spans.step(
                definition.name, saga_id, saga.request, step.name, first, now,
                attempts=attempt, error=error, outcome=outcome,
            )  # fmt: skip

    try:
        ctx = _context_for(
            definition, journal, saga_id, definition.parse_request(saga.request), step, attempt, fault
        )
        with boundaries.watching(fault.boundary_watcher(step, attempt)):
            fault.before_effect(step, attempt)
            result = step.action(ctx)
        fault.after_effect(step, attempt)
    except AirflowTaskTimeout:
        final = attempt > step.retry.retries
        journal.step_failed(saga_id, step.name, f"timed out after {step.timeout}", final=final)
        metrics.step_finished(definition.name, step.name, "timeout", time.monotonic() - started)
        traced("timeout", ("AirflowTaskTimeout", f"timed out after {step.timeout}"), final)
        raise
    except Exception as exc:
        err = classify(exc)
        if isinstance(err, Unavailable) and definition.on_unavailable:
            try:
                definition.on_unavailable(err.service, str(err))
            except Exception:  # noqa: BLE001 - the breaker is best effort; the step's failure stands
                slog.warning("could not record that %s was unavailable", err.service, exc_info=True)
        final = not err.retryable or attempt > step.retry.retries
        journal.step_failed(saga_id, step.name, f"{type(err).__name__}: {err}", final=final)
        if final and step is definition.steps[0]:
            journal.release_idempotency_key(saga_id)  # rejected before anything was made
        outcome = "failed" if final else "retry"
        metrics.step_finished(definition.name, step.name, outcome, time.monotonic() - started)
        traced(outcome, err, final)
        slog.error("step %s failed (%s, attempt %s): %s", step.name, type(err).__name__, attempt, err)
        if not err.retryable:
            raise AirflowFailException(f"{step.name}: {err}") from None
        raise AirflowException(f"{step.name}: {err} (attempt {attempt}, will retry)") from None
    if not journal.step_succeeded(saga_id, step.name, result):
        raise AirflowFailException(f"saga {saga_id} moved on while {step.name} ran; its result is not kept")
    metrics.step_finished(definition.name, step.name, "succeeded", time.monotonic() - started)
    traced("succeeded", final=True)
    slog.info("step %s succeeded in %.2fs", step.name, time.monotonic() - started)


def past_pivot(definition: SagaDefinition, journal: j.Journal, saga_id: str) -> bool:
    """Whether the pivot step succeeded: from then on the saga only goes forward."""
    if definition.pivot is None:
        return False
    return journal.step(saga_id, definition.pivot).state == j.SUCCEEDED


def finish_forward(
    definition: SagaDefinition, journal: j.Journal, saga: j.SagaRecord, redrive: tuple | None = None
) -> None:
    """Complete a saga whose steps all took effect (idempotent: the hook and the state move are)."""
    if definition.on_completed:
        definition.on_completed(saga.saga_id, definition.parse_request(saga.request))
    if journal.set_state(saga.saga_id, j.COMPLETED, only_from=(j.EXECUTING, j.COMPENSATING)):
        _ended(definition, journal, saga, j.COMPLETED, redrive=redrive)


def go_forward(
    definition: SagaDefinition, journal: j.Journal, saga: j.SagaRecord, *, final_attempt: bool
) -> list[str]:
    """Past the pivot: run the steps after it that have not succeeded, in order, then complete.

    Used when the run ended before doing so (its failure callback, the recovery sweep, a re-drive).
    Returns what failed; on the final attempt a failure leaves the saga FAILED and alerted (a re-drive
    goes forward again)."""
    slog = saga_logger(saga.saga_id)
    redrive = (spans.new_span_id(), time.time()) if saga.state == j.FAILED else None
    if redrive:
        journal.set_state(saga.saga_id, j.EXECUTING, "re-driven forward", only_from=(j.FAILED,))
    request = None
    after = definition.steps[[s.name for s in definition.steps].index(definition.pivot) + 1 :]
    for step in after:
        record = journal.step(saga.saga_id, step.name)
        if record.state == j.SUCCEEDED:
            continue
        attempt = record.attempts + 1
        journal.step_started(saga.saga_id, step.name, attempt, restart_failed=True)
        wall = time.time()
        try:
            if request is None:
                request = definition.parse_request(saga.request)
            result = step.action(
                _context_for(
                    definition, journal, saga.saga_id, request, step, attempt, FaultInjector(None, False)
                )
            )
        except Exception as exc:
            err = classify(exc)
            journal.step_failed(saga.saga_id, step.name, f"{type(err).__name__}: {err}", final=final_attempt)
            _forward_spans(definition, journal, saga, step.name, attempt, wall, err, final_attempt)
            slog.error("going forward, %s failed (%s): %s", step.name, type(err).__name__, err)
            failure = f"{step.name}: {err}"
            if final_attempt:
                journal.set_state(
                    saga.saga_id, j.FAILED, f"going forward failed: {failure}", only_from=(j.EXECUTING,)
                )
                _ended(definition, journal, saga, j.FAILED, redrive=redrive)
                if definition.on_alert:
                    definition.on_alert(journal.get(saga.saga_id), [failure])
            return [failure]
        journal.step_succeeded(saga.saga_id, step.name, result)
        _forward_spans(definition, journal, saga, step.name, attempt, wall, None, True)
        slog.info("going forward, %s succeeded", step.name)
    finish_forward(definition, journal, journal.get(saga.saga_id), redrive)
    return []


def _forward_spans(definition, journal, saga, step_name, attempt, wall, err, final) -> None:
    outcome = "succeeded" if err is None else ("failed" if final else "retry")
    now = time.time()
    spans.attempt(
        definition.name, saga.saga_id, saga.request, step_name, attempt, wall, now, error=err, outcome=outcome
    )
    if final:
        first = journal.step(saga.saga_id, step_name).started_at
        spans.step(
            definition.name, saga.saga_id, saga.request, step_name, first, now,
            attempts=attempt, error=err, outcome=outcome,
        )  # fmt: skip


def _complete(
    definition: SagaDefinition, journal: j.Journal, saga_id: str, fault: FaultInjector, attempt: int
) -> None:
    """The saga's completion, in the last step's task once the step succeeded (the fence held).

    A retryable failure retries the task (the step, already succeeded, is not run again); one that
    no retry helps fails it, and the saga is completed from outside the step: by ``compensate`` when
    the last step is the pivot (it goes forward past the pivot, never undoes anything), else, as
    before, by the DAG's failure callback or the recovery sweep."""
    saga = journal.get(saga_id)
    if saga is None or saga.state != j.EXECUTING:
        return
    try:
        fault.before_completion(attempt)
        finish_forward(definition, journal, saga)
    except Exception as exc:
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        err = classify(exc)
        saga_logger(saga_id).error("completing the saga failed (%s): %s", type(err).__name__, err)
        if err.retryable:
            raise AirflowException(f"completing saga {saga_id}: {err} (will retry)") from None
        raise AirflowFailException(f"completing saga {saga_id}: {type(err).__name__}: {err}") from None


def compensate_saga(
    definition: SagaDefinition,
    saga_id: str,
    *,
    final_attempt: bool,
    reason: str,
    fault: FaultInjector | None = None,
    wait_seconds: float = FENCE_WAIT_SECONDS,
) -> list[str]:
    """Undo, in reverse order, every step that began. Returns the compensations that failed.

    Each compensation is idempotent and only touches what this saga made. A failing compensation
    does not stop the others. When ``final_attempt`` and something failed, the saga becomes FAILED
    and is alerted; it can be re-driven later (the recovery DAG with ``saga_id``). A saga past its
    pivot is not compensated but completed. Raises TransientError while a step of the saga runs.
    """
    journal = definition.journal()
    slog = saga_logger(saga_id)
    with journal.fence(saga_id, wait_seconds):
        saga = journal.get(saga_id)
        if saga is None or saga.state in (j.COMPLETED, j.COMPENSATED):
            return []
        if past_pivot(definition, journal, saga_id):
            slog.info("past the pivot (%s): going forward instead of compensating", definition.pivot)
            return go_forward(definition, journal, saga, final_attempt=final_attempt)
        records = {s.step_name: s for s in journal.steps(saga_id)}
        unfinished = [s.step_name for s in records.values() if s.state == j.EXECUTING]
        redrive = (spans.new_span_id(), time.time()) if saga.state == j.FAILED else None
        parent = redrive[0] if redrive else spans.root_span_id(saga_id)
        if unfinished:  # began, and nothing recorded its end: its task process died or was killed
            journal.record_first_cause(
                saga_id, f"{unfinished[-1]}: did not finish (its task process ended: {reason})"
            )
            for name in unfinished:  # the step's span, which its own process could not end
                spans.step(
                    definition.name, saga_id, saga.request, name, records[name].started_at, time.time(),
                    attempts=records[name].attempts, error=("DidNotFinish", reason), outcome="did_not_finish",
                )  # fmt: skip
        journal.record_first_cause(saga_id, reason)
        journal.set_state(saga_id, j.COMPENSATING, reason, only_from=(j.EXECUTING, j.COMPENSATING, j.FAILED))
        failures: list[str] = []
        request = None
        for step in reversed(definition.steps):
            record = records[step.name]
            if step.compensate is None or record.state in (j.PENDING, j.STEP_COMPENSATED):
                continue
            journal.compensation_state(saga_id, step.name, j.STEP_COMPENSATING)
            began, wall = time.monotonic(), time.time()
            try:
                if request is None:
                    request = definition.parse_request(saga.request)
                if fault:
                    fault.before_compensation(step)
                step.compensate(
                    _context_for(
                        definition, journal, saga_id, request, step, 1, fault or FaultInjector(None, False)
                    )
                )
            except Exception as exc:
                err = classify(exc)
                journal.compensation_state(
                    saga_id, step.name, j.COMPENSATION_FAILED, f"{type(err).__name__}: {err}"
                )
                slog.error("compensation of %s failed: %s", step.name, err)
                failures.append(f"{step.name}: {err}")
            else:
                err = None
                journal.compensation_state(saga_id, step.name, j.STEP_COMPENSATED)
                slog.info("compensated %s", step.name)
            outcome = "failed" if err else "compensated"
            metrics.compensation_finished(definition.name, step.name, outcome, time.monotonic() - began)
            spans.compensation(
                definition.name, saga_id, saga.request, step.name, wall, time.time(), parent=parent, error=err
            )
        if not failures:
            journal.set_state(saga_id, j.COMPENSATED, only_from=(j.COMPENSATING,))
            _ended(definition, journal, saga, j.COMPENSATED, redrive=redrive)
        elif final_attempt:
            journal.set_state(
                saga_id, j.FAILED, "compensation failed: " + "; ".join(failures), only_from=(j.COMPENSATING,)
            )
            _ended(definition, journal, saga, j.FAILED, redrive=redrive)
            if definition.on_alert:
                definition.on_alert(journal.get(saga_id), failures)
        return failures


def compensate_task(definition: SagaDefinition, context: dict) -> None:
    from airflow.sdk.exceptions import AirflowException

    _, _, saga_id = _ids(context)
    ti = context["ti"]
    final = ti.try_number > (ti.task.retries or 0)
    try:
        failures = compensate_saga(
            definition,
            saga_id,
            final_attempt=final,
            reason="a forward step failed",
            fault=_injector(definition, dict(context["params"])),
        )
    finally:
        spans.flush()
    if failures:
        raise AirflowException(f"{len(failures)} compensation(s) failed: {failures}")


def report_outcome(
    definition: SagaDefinition, context: dict, wait: timedelta = timedelta(minutes=30)
) -> dict:
    """Fail the run unless the saga (or, for a duplicate request, the original saga) COMPLETED.

    Either way the outcome is pushed as the XCom ``saga_outcome`` of this task, for REST callers:
    the saga, its state and its first cause (the first step that failed for good, its error class
    and message; later failures never replace it).
    """
    from airflow.sdk.exceptions import AirflowFailException

    dag_id, run_id, saga_id = _ids(context)
    journal = definition.journal()
    journal.ensure_schema()
    journal.give_back_turn(dag_id, run_id)  # the run's verdict: its requester's turn is free again
    original = journal.duplicate_of(dag_id, run_id)
    target = original or saga_id
    deadline = time.monotonic() + wait.total_seconds()
    saga = journal.get(target)
    while saga is not None and saga.state not in j.TERMINAL_SAGA_STATES and time.monotonic() < deadline:
        if not original:
            break  # our own saga: not terminal means the run did not finish it (callback/recovery will)
        time.sleep(2)
        saga = journal.get(target)
    if saga is None:
        raise AirflowFailException("the request was rejected before a saga was recorded")
    outcome = {
        "saga_id": saga.saga_id,
        "state": saga.state,
        "duplicate_of": original,
        "first_cause": saga.first_cause,
        "requester": saga.requester,
    }
    context["ti"].xcom_push(key=OUTCOME_XCOM_KEY, value=outcome)
    if saga.state != j.COMPLETED:
        raise AirflowFailException(
            f"saga {saga.saga_id} ended {saga.state}: {saga.first_cause or saga.error or 'see the journal'}"
        )
    return outcome
