"""The saga journal in PostgreSQL: sagas, their steps, and an append-only event log.

A step's intent is written (state EXECUTING, event ``step_started``) before its side effect, so a
crash between the effect and the recording of its result still leaves the step marked as begun: the
compensation then undoes whatever of it exists. No secret is ever written here.

Every state transition of a saga and of its steps is one method here, a conditional UPDATE and its
event in one transaction: the module is kept whole (and a little over 300 lines) so that the state
machine reads in one place. The states, tables and records are in :mod:`.journal_schema`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg2
import psycopg2.errors
import psycopg2.extras

from include.dbt_platform.errors import TransientError
from include.dbt_platform.saga.journal_schema import (  # noqa: F401 - the states and records are its API
    COMPENSATED,
    COMPENSATING,
    COMPENSATION_FAILED,
    COMPLETED,
    EXECUTING,
    FAILED,
    PENDING,
    SAGA_STATES,
    SCHEMA_IS_CURRENT_SQL,
    SCHEMA_SQL,
    STEP_COMPENSATED,
    STEP_COMPENSATING,
    STEP_FAILED,
    STEP_STATES,
    SUCCEEDED,
    TERMINAL_SAGA_STATES,
    Begin,
    SagaRecord,
    StepRecord,
    saga_id_for,
)


class Journal:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg2.extensions.connection | None = None  # the fence's, while one is held

    @contextmanager
    def _tx(self) -> Iterator[psycopg2.extensions.cursor]:
        """One transaction: on the fence's connection while a fence is held, else on a new one."""
        if self._conn is not None:
            with self._conn, self._conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
            return
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        try:
            with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        finally:
            conn.close()

    def ensure_schema(self) -> None:
        with self._tx() as cur:
            cur.execute(SCHEMA_IS_CURRENT_SQL)  # the newest object tells whether this version's are there
            if cur.fetchone():
                return
            cur.execute("select pg_advisory_xact_lock(hashtext('saga-journal-schema'))")
            cur.execute(SCHEMA_SQL)

    # ------------------------------------------------------------------ events

    @staticmethod
    def _event(cur, saga_id: str, event: str, step: str | None = None, detail: dict | None = None) -> None:
        cur.execute(
            "insert into saga.events (saga_id, step_name, event, detail) values (%s, %s, %s, %s)",
            (saga_id, step, event, None if detail is None else json.dumps(detail)),
        )

    def record_event(self, saga_id: str, event: str, detail: dict | None = None) -> None:
        """An event from outside the state machine (an operator's request, say): no state moves."""
        with self._tx() as cur:
            self._event(cur, saga_id, event, detail=detail)

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
        requester: str | None = None,
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
                        "state, deadline_at, requester) values (%s, %s, %s, %s, %s, %s, %s, "
                        "clock_timestamp() + %s, %s)",
                        (
                            saga_id,
                            saga_name,
                            dag_id,
                            run_id,
                            idempotency_key,
                            json.dumps(request),
                            EXECUTING,
                            timeout,
                            requester,
                        ),
                    )
                    for position, step in enumerate(steps, start=1):
                        cur.execute(
                            "insert into saga.steps (saga_id, step_name, position, state) values (%s, %s, %s, %s)",
                            (saga_id, step, position, PENDING),
                        )
                    self._event(
                        cur,
                        saga_id,
                        "saga_started",
                        detail={"run_id": run_id, "dag_id": dag_id, "requester": requester},
                    )
                    return Begin("new", self._get(cur, saga_id))
            except psycopg2.errors.UniqueViolation:
                continue  # lost a race on the idempotency key: the next round sees the winner
        raise RuntimeError(f"could not record saga {saga_id}")

    @staticmethod
    def _get(cur, saga_id: str) -> SagaRecord | None:
        cur.execute(
            "select saga_id, saga_name, dag_id, run_id, idempotency_key, request, state, error, created_at, "
            "deadline_at, first_cause, requester from saga.sagas where saga_id = %s",
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

    def active_count(self, saga_name: str) -> int:
        """How many sagas of ``saga_name`` are going now (EXECUTING or COMPENSATING)."""
        with self._tx() as cur:
            cur.execute(
                "select count(*) as n from saga.sagas where saga_name = %s and state = any(%s)",
                (saga_name, [PENDING, EXECUTING, COMPENSATING]),
            )
            return cur.fetchone()["n"]

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
                "select step_name, position, state, attempts, result, error, started_at from saga.steps "
                "where saga_id = %s order by position",
                (saga_id,),
            )
            return [StepRecord(**r) for r in cur.fetchall()]

    def step(self, saga_id: str, step: str) -> StepRecord:
        return next(s for s in self.steps(saga_id) if s.step_name == step)

    def step_started(self, saga_id: str, step: str, attempt: int, *, restart_failed: bool = False) -> bool:
        """The intent, recorded before the side effect; only while the saga is EXECUTING and the step
        has not ended (or, going forward after the pivot, ended FAILED). True if recorded."""
        allowed = [PENDING, EXECUTING, *([STEP_FAILED] if restart_failed else [])]
        with self._tx() as cur:
            cur.execute(
                "update saga.steps st set state = %s, attempts = greatest(st.attempts, %s), error = null, "
                "started_at = coalesce(st.started_at, clock_timestamp()), updated_at = clock_timestamp() "
                "from saga.sagas s where s.saga_id = st.saga_id and st.saga_id = %s and st.step_name = %s "
                "and s.state = %s and st.state = any(%s) returning 1",
                (EXECUTING, attempt, saga_id, step, EXECUTING, allowed),
            )
            if cur.fetchone() is None:
                return False
            self._event(cur, saga_id, "step_started", step, {"attempt": attempt})
            return True

    def step_progress(self, saga_id: str, step: str, result: dict) -> None:
        """Partial result of a step that makes several effects (e.g. one schema per environment)."""
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set result = %s, updated_at = clock_timestamp() "
                "where saga_id = %s and step_name = %s and state = %s",
                (json.dumps(result), saga_id, step, EXECUTING),
            )
            self._event(cur, saga_id, "step_progress", step, result)

    def step_succeeded(self, saga_id: str, step: str, result: dict | None) -> bool:
        """Only from EXECUTING, and only while the saga is EXECUTING (True if recorded)."""
        with self._tx() as cur:
            cur.execute(
                "update saga.steps st set state = %s, result = %s, finished_at = clock_timestamp(), "
                "updated_at = clock_timestamp() from saga.sagas s where s.saga_id = st.saga_id "
                "and st.saga_id = %s and st.step_name = %s and st.state = %s and s.state = %s returning 1",
                (SUCCEEDED, json.dumps(result or {}), saga_id, step, EXECUTING, EXECUTING),
            )
            if cur.fetchone() is None:
                return False
            self._event(cur, saga_id, "step_succeeded", step, result or {})
            return True

    def step_failed(self, saga_id: str, step: str, error: str, *, final: bool) -> None:
        """A failed attempt (only from EXECUTING). The last one also becomes the saga's first cause,
        unless it already has one."""
        with self._tx() as cur:
            cur.execute(
                "update saga.steps set state = %s, error = %s, finished_at = clock_timestamp(), "
                "updated_at = clock_timestamp() where saga_id = %s and step_name = %s and state = %s "
                "returning 1",
                (STEP_FAILED if final else EXECUTING, error, saga_id, step, EXECUTING),
            )
            if cur.fetchone() is None:
                return
            self._event(cur, saga_id, "step_failed" if final else "step_retrying", step, {"error": error})
            if final:
                self._first_cause(cur, saga_id, f"{step}: {error}")

    @staticmethod
    def _first_cause(cur, saga_id: str, cause: str) -> None:
        cur.execute(
            "update saga.sagas set first_cause = coalesce(first_cause, %s) where saga_id = %s",
            (cause, saga_id),
        )

    def record_first_cause(self, saga_id: str, cause: str) -> None:
        """Why the saga did not complete, if nothing was recorded yet (a run that timed out, say)."""
        with self._tx() as cur:
            self._first_cause(cur, saga_id, cause)

    def release_idempotency_key(self, saga_id: str) -> None:
        """The request was rejected before anything was made: its key may be used again."""
        with self._tx() as cur:
            cur.execute(
                "update saga.sagas set released_idempotency_key = idempotency_key, idempotency_key = null "
                "where saga_id = %s and idempotency_key is not null returning released_idempotency_key",
                (saga_id,),
            )
            if row := cur.fetchone():
                self._event(
                    cur, saga_id, "idempotency_key_released", detail={"key": row["released_idempotency_key"]}
                )

    # ------------------------------------------------------------------ back-pressure

    def take_turn(self, dag_id: str, run_id: str, requester: str, limit: int) -> bool:
        """A turn for this run if its requester has fewer than ``limit`` (idempotent per run)."""
        with self._tx() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"turns:{requester}",))
            cur.execute("select 1 from saga.turns where dag_id = %s and run_id = %s", (dag_id, run_id))
            if cur.fetchone():
                return True
            cur.execute("select count(*) as taken from saga.turns where requester = %s", (requester,))
            if cur.fetchone()["taken"] >= limit:
                return False
            cur.execute(
                "insert into saga.turns (dag_id, run_id, requester) values (%s, %s, %s)",
                (dag_id, run_id, requester),
            )
            return True

    def give_back_turn(self, dag_id: str, run_id: str) -> None:
        with self._tx() as cur:
            cur.execute("delete from saga.turns where dag_id = %s and run_id = %s", (dag_id, run_id))

    def turns(self) -> list[tuple[str, str, str]]:
        """(dag_id, run_id, requester) of every turn held."""
        with self._tx() as cur:
            cur.execute("select dag_id, run_id, requester from saga.turns order by taken_at")
            return [(r["dag_id"], r["run_id"], r["requester"]) for r in cur.fetchall()]

    _COMPENSATION_FROM = {
        STEP_COMPENSATING: (EXECUTING, SUCCEEDED, STEP_FAILED, STEP_COMPENSATING, COMPENSATION_FAILED),
        STEP_COMPENSATED: (STEP_COMPENSATING,),
        COMPENSATION_FAILED: (STEP_COMPENSATING,),
    }

    def compensation_state(self, saga_id: str, step: str, state: str, error: str | None = None) -> bool:
        """A step's compensation moves on, only from the states it can come from (True if it moved)."""
        with self._tx() as cur:
            extra = ", compensated_at = clock_timestamp()" if state == STEP_COMPENSATED else ""
            bump = ", compensation_attempts = compensation_attempts + 1" if state == STEP_COMPENSATING else ""
            cur.execute(
                f"update saga.steps set state = %s, error = coalesce(%s, error), "
                f"updated_at = clock_timestamp(){extra}{bump} where saga_id = %s and step_name = %s "
                "and state = any(%s) returning 1",
                (state, error, saga_id, step, list(self._COMPENSATION_FROM[state])),
            )
            if cur.fetchone() is None:
                return False
            self._event(
                cur, saga_id, f"compensation_{state.lower()}", step, {"error": error} if error else None
            )
            return True

    @contextmanager
    def fence(self, saga_id: str, wait_seconds: float) -> Iterator[None]:
        """Hold the saga's lock (a PostgreSQL advisory lock on a connection of its own) while a step
        or a compensation runs: the two never overlap. Waits up to ``wait_seconds``, then raises
        TransientError (a retry will try again). A process that dies releases it with its connection.
        While it is held, the journal's own reads and writes go through that connection."""
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "select set_config('lock_timeout', %s, false)", (f"{int(wait_seconds * 1000)}ms",)
                )
                try:
                    cur.execute("select pg_advisory_lock(hashtext(%s))", (f"saga:{saga_id}",))
                except psycopg2.errors.LockNotAvailable:
                    raise TransientError(
                        f"saga {saga_id} is busy: a step or a compensation of it is running"
                    ) from None
            conn.commit()  # the lock is the session's: it outlives this transaction
            self._conn = conn
            yield
        finally:
            self._conn = None
            conn.close()  # releases the lock
