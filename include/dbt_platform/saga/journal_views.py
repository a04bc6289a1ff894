"""Read-only views of the saga journal, for people: the saga console's list and detail.

Every query here only reads (the connection is opened read-only), so the console can never move a
saga. The list walks the indexes ``sagas_newest_first`` / ``sagas_by_state_newest_first`` (see
:mod:`.journal_schema`): a page costs the same with ten sagas or ten thousand. A journal that does
not exist yet (no saga ever ran) reads as empty.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg2
import psycopg2.errors
import psycopg2.extras

from include.dbt_platform.saga.journal_schema import SAGA_STATES, saga_id_for

_SAGA_COLUMNS = (
    "saga_id, saga_name, dag_id, run_id, idempotency_key, request, state, error, first_cause, "
    "created_at, updated_at, deadline_at, finished_at, requester"
)


@dataclass(frozen=True)
class SagaPage:
    """One page of the list, newest first, and how many sagas there are in each state."""

    sagas: list[dict]
    total: int  # sagas matching the filter (all pages)
    counts: dict[str, int]  # by state, of every saga the reader may see (the filter's choices)


@dataclass(frozen=True)
class SagaDetail:
    saga: dict
    steps: list[dict]  # in declared order, every column
    events: list[dict]  # in the order they were written
    duplicate_runs: list[dict]  # runs that carried this saga's idempotency key again


class JournalViews:
    def __init__(self, dsn: str, statement_timeout_ms: int = 5000) -> None:
        self.dsn = dsn
        self.statement_timeout_ms = statement_timeout_ms

    @contextmanager
    def _read(self) -> Iterator[psycopg2.extensions.cursor]:
        conn = psycopg2.connect(
            self.dsn,
            connect_timeout=10,
            options=f"-c default_transaction_read_only=on -c statement_timeout={self.statement_timeout_ms}",
        )
        try:
            conn.autocommit = True
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        finally:
            conn.close()

    def list_sagas(
        self,
        *,
        dag_ids: Collection[str] | None = None,
        state: str | None = None,
        limit: int = 25,
        offset: int = 0,
    ) -> SagaPage:
        """Sagas newest first. ``dag_ids`` limits them to those DAGs (None: every DAG); ``state``
        to one state."""
        if state is not None and state not in SAGA_STATES:
            raise ValueError(f"unknown saga state {state!r}; one of {', '.join(SAGA_STATES)}")
        if dag_ids is not None and not dag_ids:
            return SagaPage([], 0, {})
        scope, scope_params = "", []  # what the reader may see: the counts
        if dag_ids is not None:
            scope, scope_params = " where dag_id = any(%s)", [sorted(dag_ids)]
        page, page_params = scope, list(scope_params)  # what the filter keeps: the page
        if state is not None:
            page += (" and" if scope else " where") + " state = %s"
            page_params.append(state)
        try:
            with self._read() as cur:
                cur.execute(
                    f"select state, count(*) as n from saga.sagas{scope} group by state", scope_params
                )
                counts = {r["state"]: r["n"] for r in cur.fetchall()}
                cur.execute(
                    f"select {_SAGA_COLUMNS} from saga.sagas{page} "
                    "order by created_at desc, saga_id desc limit %s offset %s",
                    [*page_params, limit, offset],
                )
                sagas = [dict(r) for r in cur.fetchall()]
        except psycopg2.errors.UndefinedTable:
            return SagaPage([], 0, {})
        total = counts.get(state, 0) if state is not None else sum(counts.values())
        return SagaPage(sagas, total, counts)

    def detail(self, saga_id: str) -> SagaDetail | None:
        """One saga with its steps, events and duplicate requests (None if there is no such saga)."""
        try:
            with self._read() as cur:
                cur.execute(f"select {_SAGA_COLUMNS} from saga.sagas where saga_id = %s", (saga_id,))
                saga = cur.fetchone()
                if saga is None:
                    return None
                cur.execute("select * from saga.steps where saga_id = %s order by position", (saga_id,))
                steps = [dict(r) for r in cur.fetchall()]
                cur.execute(
                    "select event_id, step_name, event, detail, at from saga.events "
                    "where saga_id = %s order by event_id",
                    (saga_id,),
                )
                events = [dict(r) for r in cur.fetchall()]
                cur.execute(
                    "select dag_id, run_id, idempotency_key, recorded_at from saga.duplicate_requests "
                    "where original_saga_id = %s order by recorded_at",
                    (saga_id,),
                )
                duplicates = [dict(r) for r in cur.fetchall()]
        except psycopg2.errors.UndefinedTable:
            return None
        return SagaDetail(dict(saga), steps, events, duplicates)

    def saga_of_run(self, dag_id: str, run_id: str) -> str | None:
        """The saga a DAG run drove: its own, or, for a duplicate request, the original one."""
        own = saga_id_for(dag_id, run_id)
        try:
            with self._read() as cur:
                cur.execute("select saga_id from saga.sagas where saga_id = %s", (own,))
                if cur.fetchone():
                    return own
                cur.execute(
                    "select original_saga_id from saga.duplicate_requests where dag_id = %s and run_id = %s",
                    (dag_id, run_id),
                )
                row = cur.fetchone()
        except psycopg2.errors.UndefinedTable:
            return None
        return row["original_saga_id"] if row else None
