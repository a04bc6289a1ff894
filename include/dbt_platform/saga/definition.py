"""What a saga is made of: steps in order, each with its compensation, retry and timeout policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.dbt_platform.saga.faults import FaultInjector
    from include.dbt_platform.saga.journal import Journal, SagaRecord


@dataclass(frozen=True)
class RetryPolicy:
    """Airflow retries with exponential backoff from ``delay`` up to ``max_delay``."""

    retries: int = 3
    delay: timedelta = timedelta(seconds=5)
    max_delay: timedelta = timedelta(minutes=2)


@dataclass(frozen=True)
class Step:
    name: str
    action: Callable[[StepContext], dict | None]
    compensate: Callable[[StepContext], None] | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = timedelta(minutes=5)
    doc: str = ""


@dataclass
class StepContext:
    """What a step's action or compensation is given: the saga, its parsed request, its attempt."""

    saga_id: str
    step: Step
    request: Any  # what SagaDefinition.parse_request made of the recorded request
    journal: Journal
    attempt: int
    fault: FaultInjector

    def progress(self, partial_result: dict) -> None:
        """Record what a multi-effect step has done so far (its compensation may read it)."""
        self.journal.step_progress(self.saga_id, self.step.name, partial_result)

    def checkpoint(self, effects_done: int) -> None:
        """Mark a point between two effects: drills can fail or crash the step exactly there."""
        self.fault.checkpoint(self.step, self.attempt, effects_done)


@dataclass(frozen=True)
class SagaDefinition:
    name: str
    steps: list[Step]
    journal: Callable[[], Journal]
    timeout: timedelta
    # The recorded request (the DAG params, minus drills) -> the object steps receive as ctx.request.
    parse_request: Callable[[dict], Any] = lambda request: request
    idempotency_key: Callable[[dict], str | None] = lambda params: None
    on_alert: Callable[[SagaRecord, list[str]], None] | None = None
    on_completed: Callable[[str, Any], None] | None = None
    fault_injection_enabled: Callable[[], bool] = lambda: False
    # Retries of the bookkeeping tasks: compensate, report_outcome.
    task_retry: RetryPolicy = field(default_factory=RetryPolicy)
    # The step after whose success the saga only goes forward (never compensated); None: no pivot.
    pivot: str | None = None
    # Back-pressure: runs at once (more are queued by Airflow), the pool of its tasks, and how many
    # sagas one requester may have going (more wait at the first step's task, rescheduled; 0: no limit).
    max_active_runs: int = 16
    pool: str | None = None
    per_requester: int = 0
    # Told when a step finds a service it depends on unreachable (errors.Unavailable): a breaker.
    on_unavailable: Callable[[str, str], None] | None = None

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def with_timeouts(self, seconds: dict[str, float]) -> SagaDefinition:
        """Override step timeouts (by name) and the whole saga's (``"saga"``), e.g. for drills."""
        unknown = set(seconds) - {"saga", *(s.name for s in self.steps)}
        if unknown:
            raise ValueError(f"timeouts name unknown steps of {self.name}: {sorted(unknown)}")
        steps = [
            replace(s, timeout=timedelta(seconds=seconds[s.name])) if s.name in seconds else s
            for s in self.steps
        ]
        timeout = timedelta(seconds=seconds["saga"]) if "saga" in seconds else self.timeout
        return replace(self, steps=steps, timeout=timeout)

    def with_retry_delay(self, delay: timedelta) -> SagaDefinition:
        """Every retry starts after ``delay`` (backoff still doubles it), e.g. for quick drills."""
        steps = [replace(s, retry=replace(s.retry, delay=delay)) for s in self.steps]
        return replace(self, steps=steps, task_retry=replace(self.task_retry, delay=delay))


class SagaLogAdapter(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[saga={self.extra['saga_id']} trace={self.extra['trace_id']}] {msg}", kwargs


def saga_logger(saga_id: str, logger: logging.Logger | None = None) -> logging.LoggerAdapter:
    """A logger whose lines carry the saga id and the id of the saga's trace (:mod:`.tracing`)."""
    from include.dbt_platform.observability.ids import hex_trace_id, saga_trace_id

    return SagaLogAdapter(
        logger or logging.getLogger("include.dbt_platform.saga"),
        {"saga_id": saga_id, "trace_id": hex_trace_id(saga_trace_id(saga_id))},
    )
