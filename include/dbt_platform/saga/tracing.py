"""One OpenTelemetry trace per saga, whichever processes its steps and compensations run in.

    saga <name>                       root: created_at to its end (COMPLETED, COMPENSATED, FAILED)
    ├── step <step>                   first attempt's start to the step's last end
    │   └── <step> attempt <n>        one per attempt (a retry is a new attempt)
    ├── compensate <step>             one per compensation run, newest step first
    └── re-drive                      a FAILED saga finished later (its compensations under it)

Every span carries ``saga.id``, ``saga.name``, ``dbt_platform.project`` (the request's project),
and ``saga.step`` / ``saga.attempt`` where they apply; a failed one ``error.type`` (the platform's
error class: ``PermanentError``, ``TransientError``...) and an ERROR status with the message. An
attempt's span also names the Airflow task (``airflow.dag_id``, ``airflow.run_id``,
``airflow.task_id``, ``airflow.try_number``) and links to Airflow's own task span when Airflow's
tracing is on. The ids come from the saga id (:mod:`include.dbt_platform.observability.ids`), and
log lines of saga code carry the trace id beside the saga id (:func:`.definition.saga_logger`).
"""

from __future__ import annotations

import random
from datetime import datetime

from include.dbt_platform.observability import tracing
from include.dbt_platform.observability.ids import derive_span_id, saga_trace_id


def root_span_id(saga_id: str) -> int:
    return derive_span_id("saga", saga_id)


def step_span_id(saga_id: str, step: str) -> int:
    return derive_span_id("saga", saga_id, "step", step)


def new_span_id() -> int:
    return random.getrandbits(64) or 1


def _attributes(saga_name: str, saga_id: str, request: dict | None, **more) -> dict:
    return {
        "saga.id": saga_id,
        "saga.name": saga_name,
        "dbt_platform.project": (request or {}).get("project_name"),
        **more,
    }


def task_attributes(context: dict) -> dict:
    ti = context.get("ti")
    if ti is None:
        return {}
    names = {"dag_id": "airflow.dag_id", "run_id": "airflow.run_id", "task_id": "airflow.task_id"}
    return {
        key: getattr(ti, name, None) for name, key in {**names, "try_number": "airflow.try_number"}.items()
    }


def attempt(
    saga_name: str,
    saga_id: str,
    request: dict | None,
    step: str,
    number: int,
    start: float,
    end: float,
    *,
    error=None,
    outcome: str,
    task: dict | None = None,
) -> None:
    tracing.record_span(
        f"{step} attempt {number}",
        trace_id=saga_trace_id(saga_id),
        parent_id=step_span_id(saga_id, step),
        start=start,
        end=end,
        attributes=_attributes(
            saga_name, saga_id, request, **{"saga.step": step, "saga.attempt": number, "saga.outcome": outcome},
            **(task or {}),
        ),
        error=error,
        links=[tracing.current_airflow_span()],
    )  # fmt: skip


def step(
    saga_name: str,
    saga_id: str,
    request: dict | None,
    step: str,
    start: datetime | float | None,
    end: float,
    *,
    attempts: int,
    error=None,
    outcome: str,
) -> None:
    """The step as a whole, once it ended for good (succeeded, or failed with no retry left)."""
    tracing.record_span(
        f"step {step}",
        trace_id=saga_trace_id(saga_id),
        span_id=step_span_id(saga_id, step),
        parent_id=root_span_id(saga_id),
        start=start or end,
        end=end,
        attributes=_attributes(
            saga_name,
            saga_id,
            request,
            **{"saga.step": step, "saga.attempts": attempts, "saga.outcome": outcome},
        ),
        error=error,
    )


def compensation(
    saga_name: str,
    saga_id: str,
    request: dict | None,
    step: str,
    start: float,
    end: float,
    *,
    parent: int,
    error=None,
) -> None:
    tracing.record_span(
        f"compensate {step}",
        trace_id=saga_trace_id(saga_id),
        parent_id=parent,
        start=start,
        end=end,
        attributes=_attributes(
            saga_name,
            saga_id,
            request,
            **{"saga.step": step, "saga.outcome": "compensation_failed" if error else "compensated"},
        ),
        error=error,
    )


def saga_ended(
    saga_name: str, saga_id: str, request: dict | None, created_at, end: float, state: str, cause
) -> None:
    """The root span, when the saga first reaches an end (a re-drive adds :func:`redrive` instead)."""
    tracing.record_span(
        f"saga {saga_name}",
        trace_id=saga_trace_id(saga_id),
        span_id=root_span_id(saga_id),
        start=created_at or end,
        end=end,
        attributes=_attributes(saga_name, saga_id, request, **{"saga.state": state}),
        error=None if state == "COMPLETED" else (_error_class(cause), cause or state),
    )


def _error_class(cause: str | None) -> str:
    """The error class of a first cause (``"<step>: <ErrorClass>: <message>"``)."""
    parts = (cause or "").split(": ")
    return parts[1] if len(parts) > 2 and parts[1].isidentifier() else "SagaNotCompleted"


def redrive(
    saga_name: str, saga_id: str, request: dict | None, span_id: int, start: float, end: float, state: str
) -> None:
    tracing.record_span(
        "re-drive",
        trace_id=saga_trace_id(saga_id),
        span_id=span_id,
        parent_id=root_span_id(saga_id),
        start=start,
        end=end,
        attributes=_attributes(saga_name, saga_id, request, **{"saga.state": state}),
        error=("SagaNotCompleted", state) if state == "FAILED" else None,
    )


def flush() -> None:
    tracing.flush()
