"""Steps + compensations + policies -> an Airflow task graph.

    validate_request >> step 2 >> ... >> step N >> complete_saga
    compensate        (ONE_FAILED: runs only when a forward task failed; undoes in reverse order)
    report_outcome    (ALL_DONE, the only leaf that decides the run's state: success iff COMPLETED)

State lives in the journal (:mod:`.journal`), not in Airflow task state, so a run that times out, is
killed or is marked failed by hand is still finished by the DAG's failure callback or the recovery
DAG, both of which call :func:`compensate_saga`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga import metrics
from include.dbt_platform.saga.errors import PermanentError, TransientError, classify

log = logging.getLogger(__name__)

FAULT_MODES = ("permanent", "transient", "timeout", "crash_after_effect")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(minutes=2)


@dataclass(frozen=True)
class Step:
    name: str
    action: Callable[[StepContext], dict | None]
    compensate: Callable[[StepContext, dict], None] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = timedelta(minutes=5)
    doc: str = ""


class FaultInjector:
    """Operator drills and tests: ``{"step": s, "mode": m, "times": n, "after": k}`` in the run's conf.

    Honoured only when ``SAGA_FAULT_INJECTION=1`` is set in Airflow's environment. ``after`` (for
    steps with several effects) places the fault after the k-th effect instead of before the first.
    ``fail_compensation_of`` names a step whose compensation then fails for good in this run's
    ``compensate`` task (not when the saga is re-driven later), to drill the FAILED path.
    """

    def __init__(self, spec: dict | None, enabled: bool) -> None:
        self.spec = spec if (enabled and spec) else None
        if self.spec and self.spec.get("mode") not in FAULT_MODES:
            raise PermanentError(f"fault_injection.mode must be one of {FAULT_MODES}")

    def before_compensation(self, step: Step) -> None:
        if self.spec and self.spec.get("fail_compensation_of") == step.name:
            raise PermanentError(f"injected failure of the compensation of {step.name}")

    def _active(self, step: str, attempt: int) -> str | None:
        if not self.spec or self.spec.get("step") != step:
            return None
        return self.spec["mode"] if attempt <= int(self.spec.get("times", 1)) else None

    def _fire(self, mode: str, step: str, timeout: timedelta) -> None:
        if mode == "permanent":
            raise PermanentError(f"injected permanent fault in {step}")
        if mode == "transient":
            raise TransientError(f"injected transient fault in {step}")
        if mode == "timeout":
            time.sleep(timeout.total_seconds() + 60)

    def before_effect(self, step: Step, attempt: int) -> None:
        mode = self._active(step.name, attempt)
        if mode and mode != "crash_after_effect" and "after" not in self.spec:
            self._fire(mode, step.name, step.timeout)

    def checkpoint(self, step: Step, attempt: int, effects_done: int) -> None:
        mode = self._active(step.name, attempt)
        if mode and self.spec.get("after") == effects_done:
            if mode == "crash_after_effect":
                os.kill(os.getpid(), signal.SIGKILL)
            self._fire(mode, step.name, step.timeout)

    def after_effect(self, step: Step, attempt: int) -> None:
        if self._active(step.name, attempt) == "crash_after_effect" and "after" not in self.spec:
            # The task process dies after the side effect, before the result is recorded.
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class StepContext:
    saga_id: str
    step: Step
    request: dict
    journal: j.Journal
    results: dict[str, dict]
    attempt: int
    fault: FaultInjector
    log: logging.LoggerAdapter

    def progress(self, partial_result: dict) -> None:
        """Record what a multi-effect step has done so far (compensation reads it)."""
        self.journal.step_progress(self.saga_id, self.step.name, partial_result)

    def checkpoint(self, effects_done: int) -> None:
        self.fault.checkpoint(self.step, self.attempt, effects_done)


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: list[Step]
    journal: Callable[[], j.Journal]
    timeout: timedelta
    idempotency_key: Callable[[dict], str | None] = lambda params: None
    on_alert: Callable[[j.SagaRecord, list[str]], None] | None = None
    on_completed: Callable[[str, dict], None] | None = None
    fault_injection_enabled: Callable[[], bool] = lambda: False

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


class SagaLogAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[saga={self.extra['saga_id']}] {msg}", kwargs


def saga_logger(saga_id: str) -> logging.LoggerAdapter:
    return SagaLogAdapter(log, {"saga_id": saga_id})


def _ids(context: dict) -> tuple[str, str, str]:
    ti = context["ti"]
    return ti.dag_id, ti.run_id, j.saga_id_for(ti.dag_id, ti.run_id)


def _context_for(
    definition: SagaDefinition, journal: j.Journal, saga: j.SagaRecord, step: Step, attempt: int, params: dict
) -> StepContext:
    results = {s.step_name: (s.result or {}) for s in journal.steps(saga.saga_id)}
    return StepContext(
        saga_id=saga.saga_id,
        step=step,
        request=saga.request,
        journal=journal,
        results=results,
        attempt=attempt,
        fault=FaultInjector(params.get("fault_injection"), definition.fault_injection_enabled()),
        log=saga_logger(saga.saga_id),
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
        definition.on_completed(saga_id, saga.request)
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
                step.compensate(ctx, record.result or {})
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


def build_tasks(
    definition: SagaDefinition, *, retry_delay_override: timedelta | None = None
) -> dict[str, Any]:
    """Create the saga's tasks in the current DAG context and wire them."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import TriggerRule, chain

    def delay(policy: RetryPolicy) -> timedelta:
        return retry_delay_override if retry_delay_override is not None else policy.delay

    forward = []
    for step in definition.steps:
        forward.append(
            PythonOperator(
                task_id=step.name,
                python_callable=_bind(run_step, definition, step),
                retries=step.retry.retries,
                retry_delay=delay(step.retry),
                retry_exponential_backoff=True,
                max_retry_delay=step.retry.max_delay,
                execution_timeout=step.timeout,
                doc_md=step.doc or None,
            )
        )
    complete_task = PythonOperator(  # noqa: AIR001 - complete_saga is the function it runs
        task_id="complete_saga",
        python_callable=_bind(complete_saga, definition),
        retries=3,
        retry_delay=delay(RetryPolicy()),
    )
    compensate = PythonOperator(  # noqa: AIR001 - name of the graph role
        task_id="compensate",
        python_callable=_bind(compensate_task, definition),
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=3,
        retry_delay=delay(RetryPolicy()),
        retry_exponential_backoff=True,
        doc_md="Runs only when a forward step failed for good: undoes, newest first, what this saga did.",
    )
    outcome = PythonOperator(  # noqa: AIR001 - name of the graph role
        task_id="report_outcome",
        python_callable=_bind(report_outcome, definition),
        trigger_rule=TriggerRule.ALL_DONE,
        retries=2,
        retry_delay=delay(RetryPolicy()),
        doc_md="The run's verdict: succeeds only when the saga COMPLETED.",
    )
    chain(*forward, complete_task)
    for task in [*forward, complete_task]:
        task >> compensate
    [complete_task, compensate] >> outcome
    return {"forward": forward, "complete": complete_task, "compensate": compensate, "outcome": outcome}


def _bind(fn, *args):
    def call(**context):
        return fn(*args, context)

    call.__name__ = fn.__name__
    return call
