"""Find sagas their runs left unfinished and finish them; re-drive FAILED ones on request."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.definition import SagaDefinition
from include.dbt_platform.saga.engine import finish_with_retries

log = logging.getLogger(__name__)
RUN_OVER = {"failed", "success"}


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
        if saga is None:
            raise ValueError(f"no saga {saga_id}")
        candidates = [saga] if saga.state in (j.EXECUTING, j.COMPENSATING, j.FAILED) else []
    else:
        candidates = journal.find((j.EXECUTING, j.COMPENSATING))
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
    return done
