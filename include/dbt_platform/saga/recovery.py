"""Finishing sagas from outside their run: the DAG's failure callback (a run that timed out, was
killed or marked failed), the recovery sweep (sagas their runs left unfinished), and the re-drive
of FAILED ones on request. Each retries with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from include.dbt_platform.errors import TransientError
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga import metrics
from include.dbt_platform.saga.definition import SagaDefinition
from include.dbt_platform.saga.engine import FENCE_WAIT_SECONDS, compensate_saga

log = logging.getLogger(__name__)
RUN_OVER = {"failed", "success"}


def finish_with_retries(
    definition: SagaDefinition,
    saga_id: str,
    reason: str,
    *,
    attempts: int = 4,
    first_delay: float = 2.0,
    wait_seconds: float = FENCE_WAIT_SECONDS,
) -> list[str]:
    """Compensate (or, past the pivot, complete) from outside the run: the DAG's failure callback and
    the recovery sweep. A busy fence, an unreachable database or a failing compensation is retried
    with exponential backoff; the last attempt is final (FAILED and alerted if something still
    fails). Returns the compensations that failed; raises TransientError if the saga stayed busy."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        final = attempt == attempts
        try:
            failures = compensate_saga(
                definition, saga_id, final_attempt=final, reason=reason, wait_seconds=wait_seconds
            )
        except TransientError:
            if final:
                raise
            failures = None
        if failures == [] or (failures and final):
            return failures
        log.warning(
            "[saga=%s] not finished (attempt %s of %s); retrying in %.0fs", saga_id, attempt, attempts, delay
        )
        time.sleep(delay)
        delay *= 2
    return []


def recover_run(definition: SagaDefinition, dag_id: str, run_id: str, reason: str) -> list[str]:
    """Finish the saga of a run that Airflow ended without finishing it (timeout, kill, manual mark)."""
    saga_id = j.saga_id_for(dag_id, run_id)
    saga = definition.journal().get(saga_id)
    if saga is None or saga.state in j.TERMINAL_SAGA_STATES:
        return []
    return finish_with_retries(definition, saga_id, reason)


def recover_sagas(
    definition: SagaDefinition,
    run_state: Callable[[str, str], str | None],
    *,
    saga_id: str | None = None,
    now: datetime | None = None,
    attempts: int = 3,
    first_delay: float = 1.0,
) -> dict:
    """Finish unfinished sagas whose run is over (or past deadline). Returns what was done.

    Each saga is compensated (or, past its pivot, completed) with retries and backoff; one whose
    compensation keeps failing ends FAILED and alerted, and does not stop the sweep: the others are
    still handled. A saga still busy (a step of it runs) is left for the next sweep.
    """
    journal = definition.journal()
    journal.ensure_schema()
    now = now or datetime.now(UTC)
    if saga_id:
        saga = journal.get(saga_id)
        if saga is None or saga.saga_name != definition.name:
            raise ValueError(f"no {definition.name} saga {saga_id}")
        candidates = [saga] if saga.state in (j.EXECUTING, j.COMPENSATING, j.FAILED) else []
    else:
        candidates = [
            s for s in journal.find((j.EXECUTING, j.COMPENSATING)) if s.saga_name == definition.name
        ]
    done: dict[str, str] = {}
    for saga in candidates:
        try:
            state = run_state(saga.dag_id, saga.run_id)
        except Exception:  # the run is gone (deleted): only the journal speaks
            state = None
        overdue = saga.deadline_at is not None and saga.deadline_at < now
        if state not in RUN_OVER and not overdue and not (saga_id and saga.state == j.FAILED):
            continue
        try:
            finish_with_retries(
                definition,
                saga.saga_id,
                f"recovered (run {state or 'unknown'}, overdue={overdue})",
                attempts=attempts,
                first_delay=first_delay,
            )
            done[saga.saga_id] = journal.get(saga.saga_id).state
        except Exception as exc:  # noqa: BLE001 - one saga must not stop the sweep
            log.exception("[saga=%s] recovery failed; the next sweep tries again", saga.saga_id)
            done[saga.saga_id] = f"not finished: {type(exc).__name__}: {exc}"
        log.info("[saga=%s] recovery: %s", saga.saga_id, done[saga.saga_id])
    metrics.report_active(definition.name, journal)  # every sweep corrects the gauge
    return done


def recover_all(
    definitions: dict[str, SagaDefinition],
    run_state: Callable[[str, str], str | None],
    *,
    saga_id: str | None = None,
) -> dict:
    """:func:`recover_sagas` for every saga the platform runs (all share one journal); with
    ``saga_id``, the re-drive of that one saga by its own definition."""
    if saga_id:
        saga = next(iter(definitions.values())).journal().get(saga_id)
        if saga is None or saga.saga_name not in definitions:
            raise ValueError(f"no saga {saga_id}")
        return recover_sagas(definitions[saga.saga_name], run_state, saga_id=saga_id)
    done: dict[str, str] = {}
    for definition in definitions.values():
        done |= recover_sagas(definition, run_state)
    journal = next(iter(definitions.values())).journal()
    for dag_id, run_id, _ in journal.turns():  # a run that ended without its verdict held a turn
        try:
            state = run_state(dag_id, run_id)
        except Exception:  # noqa: BLE001 - the run is gone
            state = "failed"
        if state in RUN_OVER:
            journal.give_back_turn(dag_id, run_id)
    return done
