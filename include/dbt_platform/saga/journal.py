"""The saga journal in PostgreSQL: sagas, their steps, and an append-only event log.

A step's intent is written (state EXECUTING, event ``step_started``) before its side effect, so a
crash between the effect and the recording of its result still leaves the step marked as begun: the
compensation then undoes whatever of it exists. No secret is ever written here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import psycopg2
import psycopg2.extras

from include.dbt_platform.saga.journal_schema import (  # noqa: F401 - the states are part of this API
    COMPENSATED,
    COMPENSATING,
    COMPENSATION_FAILED,
    COMPLETED,
    EXECUTING,
    FAILED,
    PENDING,
    SAGA_STATES,
    SCHEMA_SQL,
    STEP_COMPENSATED,
    STEP_COMPENSATING,
    STEP_FAILED,
    STEP_STATES,
    SUCCEEDED,
    TERMINAL_SAGA_STATES,
)

_NAMESPACE = uuid.UUID("6f1f6c2e-8d7b-4b0e-9a51-0d3c2f8a9b10")


def saga_id_for(dag_id: str, run_id: str) -> str:
    """One saga per DAG run, the same id however often a task of the run is retried or cleared."""
    return str(uuid.uuid5(_NAMESPACE, f"{dag_id}/{run_id}"))


@dataclass(frozen=True)
class SagaRecord:
    saga_id: str
    saga_name: str
    dag_id: str
    run_id: str
    idempotency_key: str | None
    request: dict
    state: str
    error: str | None
    created_at: datetime
    deadline_at: datetime | None


@dataclass(frozen=True)
class StepRecord:
    step_name: str
    position: int
    state: str
    attempts: int
    result: dict | None
    error: str | None


@dataclass(frozen=True)
class Begin:
    """Outcome of :meth:`Journal.begin`: a new saga, a re-run of this run's saga, or a duplicate."""

    kind: str  # "new" | "existing" | "duplicate"
    saga: SagaRecord


class Journal:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @contextmanager
    def _tx(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        finally:
            conn.close()

    def ensure_schema(self) -> None:
        with self._tx() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('saga-journal-schema'))")
            cur.execute(SCHEMA_SQL)

    # ------------------------------------------------------------------ events

    @staticmethod
    def _event(cur, saga_id: str, event: str, step: str | None = None, detail: dict | None = None) -> None:
        cur.execute(
            "insert into saga.events (saga_id, step_name, event, detail) values (%s, %s, %s, %s)",
            (saga_id, step, event, None if detail is None else json.dumps(detail)),
        )

    def events(self, saga_id: str) -> list[dict]:
        with self._tx() as cur:
            cur.execute("select * from saga.events where saga_id = %s order by event_id", (saga_id,))
            return [dict(r) for r in cur.fetchall()]

    # ------------------------------------------------------------------ sagas

    def begin(
        self,
        *,
        saga_id: str,
        saga_name: str,
        dag_id: str,
        run_id: str,
        request: dict,
        idempotency_key: str | None,
        steps: list[str],
        timeout: timedelta | None,
    ) -> Begin:
        """Record the saga (or find it). Safe to call again from a retried or cleared task."""
        for _ in range(3):
            try:
                with self._tx() as cur:
                    if existing := self._get(cur, saga_id):
                        return Begin("existing", existing)
                    if idempotency_key:
                        cur.execute(
                            "select saga_id from saga.sagas where saga_name = %s and idempotency_key = %s",
                            (saga_name, idempotency_key),
                        )
                        if row := cur.fetchone():
                            original = row["saga_id"]
                            cur.execute(
                                "insert into saga.duplicate_requests (dag_id, run_id, idempotency_key, "
                                "original_saga_id) values (%s, %s, %s, %s) on conflict do nothing",
                                (dag_id, run_id, idempotency_key, original),
                            )
                            self._event(cur, original, "duplicate_request", detail={"run_id": run_id})
                            return Begin("duplicate", self._get(cur, original))
                    cur.execute(
                        "insert into saga.sagas (saga_id, saga_name, dag_id, run_id, idempotency_key, request, "
                        "state, deadline_at) values (%s, %s, %s, %s, %s, %s, %s, "
                        "clock_timestamp() + %s)",
                        (
                            saga_id,
                            saga_name,
                            dag_id,
                            run_id,
                            idempotency_key,
                            json.dumps(request),
                            EXECUTING,
                            timeout,
                        ),
                    )
                    for position, step in enumerate(steps, start=1):
                        cur.execute(
                            "insert into saga.steps (saga_id, step_name, position, state) values (%s, %s, %s, %s)",
                            (saga_id, step, position, PENDING),
                        )
                    self._event(cur, saga_id, "saga_started", detail={"run_id": run_id, "dag_id": dag_id})
                    return Begin("new", self._get(cur, saga_id))
            except psycopg2.errors.UniqueViolation:
                continue  # lost a race on the idempotency key: the next round sees the winner
        raise RuntimeError(f"could not record saga {saga_id}")

    @staticmethod
    def _get(cur, saga_id: str) -> SagaRecord | None:
        cur.execute(
            "select saga_id, saga_name, dag_id, run_id, idempotency_key, request, state, error, created_at, "
            "deadline_at from saga.sagas where saga_id = %s",
            (saga_id,),
        )
        row = cur.fetchone()
        return SagaRecord(**row) if row else None

    def get(self, saga_id: str) -> SagaRecord | None:
        with self._tx() as cur:
            return self._get(cur, saga_id)

    def duplicate_of(self, dag_id: str, run_id: str) -> str | None:
        with self._tx() as cur:
            cur.execute(
                "select original_saga_id from saga.duplicate_requests where dag_id = %s and run_id = %s",
                (dag_id, run_id),
            )
            row = cur.fetchone()
            return row["original_saga_id"] if row else None

    def set_state(self, saga_id: str, state: str, error: str | None = None, *, only_from=None) -> bool:
        """Move the saga to ``state`` (if it is in one of ``only_from``); True if it moved."""
        with self._tx() as cur:
            query = "update saga.sagas set state = %s, error = coalesce(%s, error), updated_at = clock_timestamp()"
            if state in TERMINAL_SAGA_STATES:
                query += ", finished_at = clock_timestamp()"
            query += " where saga_id = %s"
            params: list = [state, error, saga_id]
            if only_from:
                query += " and state = any(%s)"
                params.append(list(only_from))
            cur.execute(query + " returning saga_id", params)
            moved = cur.fetchone() is not None
            if moved:
                self._event(cur, saga_id, f"saga_{state.lower()}", detail={"error": error} if error else None)
            return moved

    def find(self, states: tuple[str, ...]) -> list[SagaRecord]:
        with self._tx() as cur:
            cur.execute(
                "select saga_id from saga.sagas where state = any(%s) order by created_at", (list(states),)
            )
            ids = [r["saga_id"] for r in cur.fetchall()]
            return [self._get(cur, i) for i in ids]

    # ------------------------------------------------------------------ steps

    def steps(self, saga_id: str) -> list[StepRecord]:
        with self._tx() as cur:
            cur.execute(
                "select step_name, position, state, attempts, result, error from saga.steps "
                "where saga_id = %s order by position",
                (saga_id,),
            )
            return [StepRecord(**r) for r in cur.fetchall()]

    def step(self, saga_id: str, step: str) -> StepRecord:
        return next(s for s in self.steps(saga_id) if s.step_name == step)

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """The intent: recorded before the side effect."""
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set state = %s, attempts = greatest(attempts, %s), error = null, "
                "started_at = coalesce(started_at, clock_timestamp()), updated_at = clock_timestamp() "
                "where saga_id = %s and step_name = %s",
                (EXECUTING, attempt, saga_id, step),
            )
            self._event(cur, saga_id, "step_started", step, {"attempt": attempt})

    def step_progress(self, saga_id: str, step: str, result: dict) -> None:
        """Partial result of a step that makes several effects (e.g. one schema per environment)."""
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set result = %s, updated_at = clock_timestamp() "
                "where saga_id = %s and step_name = %s",
                (json.dumps(result), saga_id, step),
            )
            self._event(cur, saga_id, "step_progress", step, result)

    def step_succeeded(self, saga_id: str, step: str, result: dict | None) -> None:
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set state = %s, result = %s, finished_at = clock_timestamp(), "
                "updated_at = clock_timestamp() where saga_id = %s and step_name = %s",
                (SUCCEEDED, json.dumps(result or {}), saga_id, step),
            )
            self._event(cur, saga_id, "step_succeeded", step, result or {})

    def step_failed(self, saga_id: str, step: str, error: str, *, final: bool) -> None:
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set state = %s, error = %s, finished_at = clock_timestamp(), "
                "updated_at = clock_timestamp() where saga_id = %s and step_name = %s",
                (STEP_FAILED if final else EXECUTING, error, saga_id, step),
            )
            self._event(cur, saga_id, "step_failed" if final else "step_retrying", step, {"error": error})

    def compensation_state(self, saga_id: str, step: str, state: str, error: str | None = None) -> None:
        with self._tx() as cur:
            extra = ", compensated_at = clock_timestamp()" if state == STEP_COMPENSATED else ""
            bump = ", compensation_attempts = compensation_attempts + 1" if state == STEP_COMPENSATING else ""
            cur.execute(
                f"update saga.steps set state = %s, error = coalesce(%s, error), "
                f"updated_at = clock_timestamp(){extra}{bump} where saga_id = %s and step_name = %s",
                (state, error, saga_id, step),
            )
            self._event(
                cur, saga_id, f"compensation_{state.lower()}", step, {"error": error} if error else None
            )

    @contextmanager
    def exclusive(self, saga_id: str) -> Iterator[bool]:
        """Hold a session advisory lock on the saga (compensation and recovery never overlap)."""
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_try_advisory_lock(hashtext(%s))", (f"saga:{saga_id}",))
                got = cur.fetchone()[0]
            yield got
        finally:
            conn.close()  # releases the lock
