"""Running a saga: a step's task body, completion, compensation (newest first), the run's verdict.

    validate_request >> step 2 >> ... >> step N >> complete_saga
    compensate        (ONE_FAILED: runs only when a forward task failed; undoes in reverse order)
    report_outcome    (ALL_DONE, the only leaf that decides the run's state: success iff COMPLETED)

(:mod:`.tasks` builds that graph.) State lives in the journal (:mod:`.journal`), not in Airflow task
state, so a run that times out, is killed or is marked failed by hand is still finished by the DAG's
failure callback or the recovery DAG, both of which call :func:`compensate_saga`.
"""

from __future__ import annotations

import time
from datetime import timedelta

from include.dbt_platform.errors import TransientError, classify
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga import metrics
from include.dbt_platform.saga.definition import SagaDefinition, Step, StepContext, saga_logger
from include.dbt_platform.saga.faults import FaultInjector


def _ids(context: dict) -> tuple[str, str, str]:
    ti = context["ti"]
    return ti.dag_id, ti.run_id, j.saga_id_for(ti.dag_id, ti.run_id)


def _context_for(
    definition: SagaDefinition, journal: j.Journal, saga: j.SagaRecord, step: Step, attempt: int, params: dict
) -> StepContext:
    return StepContext(
        saga_id=saga.saga_id,
        step=step,
        request=definition.parse_request(saga.request),
        journal=journal,
        attempt=attempt,
        fault=FaultInjector(params.get("fault_injection"), definition.fault_injection_enabled()),
    )


def run_step(definition: SagaDefinition, step: Step, context: dict) -> None:
    """The body of a forward task. Idempotent: a cleared or retried task re-runs safely."""
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowSkipException,
        AirflowTaskTimeout,
    )

    dag_id, run_id, saga_id = _ids(context)
    params = dict(context["params"])
    journal = definition.journal()
    attempt = context["ti"].try_number
    slog = saga_logger(saga_id)
    if step is definition.steps[0]:
        journal.ensure_schema()
        begun = journal.begin(
            saga_id=saga_id,
            saga_name=definition.name,
            dag_id=dag_id,
            run_id=run_id,
            request=_public_request(params),
            idempotency_key=definition.idempotency_key(params),
            steps=[s.name for s in definition.steps],
            timeout=definition.timeout,
        )
        if begun.kind == "duplicate":
            slog.info("idempotency key already used by saga %s: creating nothing", begun.saga.saga_id)
            raise AirflowSkipException(f"duplicate of saga {begun.saga.saga_id}")
    saga = journal.get(saga_id)
    if saga is None or saga.state != j.EXECUTING:
        raise AirflowFailException(
            f"saga {saga_id} is {saga.state if saga else 'unknown'}; not running {step.name}"
        )
    if journal.step(saga_id, step.name).state == j.SUCCEEDED:
        slog.info("step %s already succeeded; nothing to do", step.name)
        return
    journal.step_started(saga_id, step.name, attempt)
    ctx = _context_for(definition, journal, saga, step, attempt, params)
    started = time.monotonic()
    try:
        ctx.fault.before_effect(step, attempt)
        result = step.action(ctx)
        ctx.fault.after_effect(step, attempt)
    except AirflowTaskTimeout:
        journal.step_failed(
            saga_id, step.name, f"timed out after {step.timeout}", final=attempt > step.retry.retries
        )
        metrics.step_finished(definition.name, step.name, "timeout", time.monotonic() - started)
        raise
    except Exception as exc:
        err = classify(exc)
        final = not err.retryable or attempt > step.retry.retries
        journal.step_failed(saga_id, step.name, f"{type(err).__name__}: {err}", final=final)
        outcome = "failed" if final else "retry"
        metrics.step_finished(definition.name, step.name, outcome, time.monotonic() - started)
        slog.error("step %s failed (%s, attempt %s): %s", step.name, type(err).__name__, attempt, err)
        if not err.retryable:
            raise AirflowFailException(f"{step.name}: {err}") from None
        raise AirflowException(f"{step.name}: {err} (attempt {attempt}, will retry)") from None
    journal.step_succeeded(saga_id, step.name, result)
    metrics.step_finished(definition.name, step.name, "succeeded", time.monotonic() - started)
    slog.info("step %s succeeded in %.2fs", step.name, time.monotonic() - started)


def _public_request(params: dict) -> dict:
    # The request as recorded in the journal: the DAG params, minus drills.
    return {k: v for k, v in params.items() if k != "fault_injection"}


def complete_saga(definition: SagaDefinition, context: dict) -> None:
    _, _, saga_id = _ids(context)
    journal = definition.journal()
    saga = journal.get(saga_id)
    if saga is None or saga.state != j.EXECUTING:
        return
    if definition.on_completed:
        definition.on_completed(saga_id, definition.parse_request(saga.request))
    journal.set_state(saga_id, j.COMPLETED, only_from=(j.EXECUTING,))
    metrics.saga_finished(definition.name, j.COMPLETED, saga.created_at)


def compensate_saga(
    definition: SagaDefinition,
    saga_id: str,
    *,
    final_attempt: bool,
    reason: str,
    fault: FaultInjector | None = None,
) -> list[str]:
    """Undo, in reverse order, every step that began. Returns the compensations that failed.

    Each compensation is idempotent and only touches what this saga made. A failing compensation
    does not stop the others. When ``final_attempt`` and something failed, the saga becomes FAILED
    and is alerted; it can be re-driven later (the recovery DAG with ``saga_id``).
    """
    journal = definition.journal()
    slog = saga_logger(saga_id)
    with journal.exclusive(saga_id) as got_lock:
        if not got_lock:
            raise TransientError(f"saga {saga_id} is being compensated by another process")
        saga = journal.get(saga_id)
        if saga is None or saga.state in (j.COMPLETED, j.COMPENSATED):
            return []
        journal.set_state(saga_id, j.COMPENSATING, reason)
        records = {s.step_name: s for s in journal.steps(saga_id)}
        failures: list[str] = []
        for step in reversed(definition.steps):
            record = records[step.name]
            if step.compensate is None or record.state in (j.PENDING, j.STEP_COMPENSATED):
                continue
            journal.compensation_state(saga_id, step.name, j.STEP_COMPENSATING)
            ctx = _context_for(definition, journal, saga, step, 1, {})
            try:
                if fault:
                    fault.before_compensation(step)
                step.compensate(ctx)
            except Exception as exc:
                err = classify(exc)
                journal.compensation_state(
                    saga_id, step.name, j.COMPENSATION_FAILED, f"{type(err).__name__}: {err}"
                )
                slog.error("compensation of %s failed: %s", step.name, err)
                failures.append(f"{step.name}: {err}")
            else:
                journal.compensation_state(saga_id, step.name, j.STEP_COMPENSATED)
                slog.info("compensated %s", step.name)
        if not failures:
            journal.set_state(saga_id, j.COMPENSATED)
            metrics.saga_finished(definition.name, j.COMPENSATED, saga.created_at)
        elif final_attempt:
            journal.set_state(saga_id, j.FAILED, "compensation failed: " + "; ".join(failures))
            metrics.saga_finished(definition.name, j.FAILED, saga.created_at)
            if definition.on_alert:
                definition.on_alert(journal.get(saga_id), failures)
        return failures


def compensate_task(definition: SagaDefinition, context: dict) -> None:
    from airflow.sdk.exceptions import AirflowException

    _, _, saga_id = _ids(context)
    ti = context["ti"]
    final = ti.try_number > (ti.task.retries or 0)
    fault = FaultInjector(
        dict(context["params"]).get("fault_injection"), definition.fault_injection_enabled()
    )
    failures = compensate_saga(
        definition, saga_id, final_attempt=final, reason="a forward step failed", fault=fault
    )
    if failures:
        raise AirflowException(f"{len(failures)} compensation(s) failed: {failures}")


def report_outcome(
    definition: SagaDefinition, context: dict, wait: timedelta = timedelta(minutes=30)
) -> dict:
    """Fail the run unless the saga (or, for a duplicate request, the original saga) COMPLETED."""
    from airflow.sdk.exceptions import AirflowFailException

    dag_id, run_id, saga_id = _ids(context)
    journal = definition.journal()
    journal.ensure_schema()
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
    outcome = {"saga_id": saga.saga_id, "state": saga.state, "duplicate_of": original}
    if saga.state != j.COMPLETED:
        raise AirflowFailException(
            f"saga {saga.saga_id} ended {saga.state}: {saga.error or 'see the journal'}"
        )
    return outcome


def recover_run(definition: SagaDefinition, dag_id: str, run_id: str, reason: str) -> list[str]:
    """Finish the saga of a run that Airflow ended without finishing it (timeout, kill, manual mark)."""
    saga_id = j.saga_id_for(dag_id, run_id)
    journal = definition.journal()
    saga = journal.get(saga_id)
    if saga is None or saga.state in j.TERMINAL_SAGA_STATES:
        return []
    return compensate_saga(definition, saga_id, final_attempt=True, reason=reason)
