"""The saga journal's states, its tables (created by :meth:`.journal.Journal.ensure_schema`) and the
records read from them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

# Saga states
PENDING, EXECUTING, COMPLETED = "PENDING", "EXECUTING", "COMPLETED"
COMPENSATING, COMPENSATED, FAILED = "COMPENSATING", "COMPENSATED", "FAILED"
SAGA_STATES = (PENDING, EXECUTING, COMPLETED, COMPENSATING, COMPENSATED, FAILED)
TERMINAL_SAGA_STATES = (COMPLETED, COMPENSATED, FAILED)
# Step states (PENDING, EXECUTING shared)
SUCCEEDED, STEP_FAILED = "SUCCEEDED", "FAILED"
STEP_COMPENSATING, STEP_COMPENSATED, COMPENSATION_FAILED = (
    "COMPENSATING",
    "COMPENSATED",
    "COMPENSATION_FAILED",
)
STEP_STATES = (
    PENDING,
    EXECUTING,
    SUCCEEDED,
    STEP_FAILED,
    STEP_COMPENSATING,
    STEP_COMPENSATED,
    COMPENSATION_FAILED,
)

SCHEMA_SQL = f"""
create schema if not exists saga;
create table if not exists saga.sagas (
    saga_id text primary key,
    saga_name text not null,
    dag_id text not null,
    run_id text not null,
    idempotency_key text,
    request jsonb not null,
    state text not null check (state in {SAGA_STATES!r}),
    error text,
    created_at timestamptz not null default clock_timestamp(),
    updated_at timestamptz not null default clock_timestamp(),
    deadline_at timestamptz,
    finished_at timestamptz
);
create unique index if not exists sagas_idempotency_key
    on saga.sagas (saga_name, idempotency_key) where idempotency_key is not null;
create table if not exists saga.steps (
    saga_id text not null references saga.sagas (saga_id) on delete cascade,
    step_name text not null,
    position int not null,
    state text not null check (state in {STEP_STATES!r}),
    attempts int not null default 0,
    compensation_attempts int not null default 0,
    result jsonb,
    error text,
    started_at timestamptz,
    finished_at timestamptz,
    compensated_at timestamptz,
    updated_at timestamptz not null default clock_timestamp(),
    primary key (saga_id, step_name)
);
create table if not exists saga.events (
    event_id bigserial primary key,
    saga_id text not null,
    step_name text,
    event text not null,
    detail jsonb,
    at timestamptz not null default clock_timestamp()
);
create index if not exists events_saga on saga.events (saga_id, event_id);
-- The first cause of a failure (step, error class, message), written once and never overwritten;
-- the idempotency key of a request rejected before it created anything, freed for a corrected one.
alter table saga.sagas add column if not exists first_cause text;
alter table saga.sagas add column if not exists released_idempotency_key text;
-- Who asked: the Airflow user who triggered the run (the UI, or the REST API's token).
alter table saga.sagas add column if not exists requester text;
-- Back-pressure: a run holds a turn of its requester's from its first task until its verdict.
create table if not exists saga.turns (
    dag_id text not null,
    run_id text not null,
    requester text not null,
    taken_at timestamptz not null default clock_timestamp(),
    primary key (dag_id, run_id)
);
create table if not exists saga.duplicate_requests (
    dag_id text not null,
    run_id text not null,
    idempotency_key text not null,
    original_saga_id text not null references saga.sagas (saga_id),
    recorded_at timestamptz not null default clock_timestamp(),
    primary key (dag_id, run_id)
);
create or replace function saga.forbid_event_change() returns trigger language plpgsql as $$
begin
    raise exception 'saga.events is append-only';
end $$;
create or replace trigger events_append_only before update or delete on saga.events
    for each row execute function saga.forbid_event_change();
create or replace view saga.step_durations as
    select s.saga_id, s.saga_name, st.step_name, st.position, st.state, st.attempts,
           extract(epoch from st.finished_at - st.started_at) as seconds
    from saga.sagas s join saga.steps st using (saga_id);
-- The saga console lists sagas newest first, all of them or those of one state, a page at a time:
-- each page walks one of these indexes instead of sorting the whole journal.
create index if not exists sagas_newest_first on saga.sagas (created_at desc, saga_id desc);
create index if not exists sagas_by_state_newest_first on saga.sagas (state, created_at desc, saga_id desc);
"""
# A row when the journal already has everything SCHEMA_SQL creates (one cheap query, no lock). It
# names the last object SCHEMA_SQL creates: whoever adds to SCHEMA_SQL moves it to the new last one.
# This version's newest objects: when they are there, nothing needs creating (one cheap query).
SCHEMA_IS_CURRENT_SQL = (
    "select 1 where to_regclass('saga.sagas_by_state_newest_first') is not null "
    "and to_regclass('saga.turns') is not null"
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
    first_cause: str | None = None
    requester: str | None = None


@dataclass(frozen=True)
class StepRecord:
    step_name: str
    position: int
    state: str
    attempts: int
    result: dict | None
    error: str | None
    started_at: datetime | None = None  # the first attempt's start


@dataclass(frozen=True)
class Begin:
    """Outcome of :meth:`Journal.begin`: a new saga, a re-run of this run's saga, or a duplicate."""

    kind: str  # "new" | "existing" | "duplicate"
    saga: SagaRecord
