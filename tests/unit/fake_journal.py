"""An in-memory stand-in for the saga journal, with the same state machine, for the engine's unit
tests. The real journal (PostgreSQL) keeps its integration tests."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from include.dbt_platform.errors import TransientError
from include.dbt_platform.saga import journal as j


class FakeJournal:
    def __init__(self) -> None:
        self.sagas: dict[str, j.SagaRecord] = {}
        self.step_records: dict[str, dict[str, j.StepRecord]] = {}
        self.log: list[tuple[str, str | None, str]] = []  # (saga_id, step, event)
        self.duplicates: dict[tuple[str, str], str] = {}
        self.locked: set[str] = set()
        self.released_keys: dict[str, str] = {}

    def ensure_schema(self) -> None:
        pass

    def begin(
        self, *, saga_id, saga_name, dag_id, run_id, request, idempotency_key, steps, timeout, requester=None
    ):
        if saga_id in self.sagas:
            return j.Begin("existing", self.sagas[saga_id])
        for saga in self.sagas.values():
            if idempotency_key and (saga.saga_name, saga.idempotency_key) == (saga_name, idempotency_key):
                self.duplicates[(dag_id, run_id)] = saga.saga_id
                return j.Begin("duplicate", saga)
        now = datetime.now(UTC)
        self.sagas[saga_id] = j.SagaRecord(
            saga_id, saga_name, dag_id, run_id, idempotency_key, request, j.EXECUTING, None, now,
            now + (timeout or timedelta(0)), None, requester,
        )  # fmt: skip
        self.step_records[saga_id] = {
            name: j.StepRecord(name, position, j.PENDING, 0, None, None)
            for position, name in enumerate(steps, start=1)
        }
        self.log.append((saga_id, None, "saga_started"))
        return j.Begin("new", self.sagas[saga_id])

    def get(self, saga_id):
        return self.sagas.get(saga_id)

    def duplicate_of(self, dag_id, run_id):
        return self.duplicates.get((dag_id, run_id))

    def set_state(self, saga_id, state, error=None, *, only_from=None):
        saga = self.sagas[saga_id]
        if only_from and saga.state not in only_from:
            return False
        self.sagas[saga_id] = replace(saga, state=state, error=error or saga.error)
        self.log.append((saga_id, None, f"saga_{state.lower()}"))
        return True

    def active_count(self, saga_name):
        going = (j.PENDING, j.EXECUTING, j.COMPENSATING)
        return sum(1 for s in self.sagas.values() if s.saga_name == saga_name and s.state in going)

    def find(self, states):
        return [s for s in self.sagas.values() if s.state in states]

    def steps(self, saga_id):
        return sorted(self.step_records[saga_id].values(), key=lambda s: s.position)

    def step(self, saga_id, step):
        return self.step_records[saga_id][step]

    def _update(self, saga_id, step, event, **changes):
        self.step_records[saga_id][step] = replace(self.step_records[saga_id][step], **changes)
        self.log.append((saga_id, step, event))

    def step_started(self, saga_id, step, attempt, *, restart_failed=False):
        record = self.step(saga_id, step)
        allowed = (j.PENDING, j.EXECUTING, *((j.STEP_FAILED,) if restart_failed else ()))
        if self.sagas[saga_id].state != j.EXECUTING or record.state not in allowed:
            return False
        self._update(
            saga_id, step, "step_started", state=j.EXECUTING, attempts=max(record.attempts, attempt),
            started_at=record.started_at or datetime.now(UTC),
        )  # fmt: skip
        return True

    def step_progress(self, saga_id, step, result):
        self._update(saga_id, step, "step_progress", result=result)

    def step_succeeded(self, saga_id, step, result):
        if self.sagas[saga_id].state != j.EXECUTING or self.step(saga_id, step).state != j.EXECUTING:
            return False
        self._update(saga_id, step, "step_succeeded", state=j.SUCCEEDED, result=result or {})
        return True

    def step_failed(self, saga_id, step, error, *, final):
        if self.step(saga_id, step).state != j.EXECUTING:
            return
        state = j.STEP_FAILED if final else j.EXECUTING
        self._update(saga_id, step, "step_failed" if final else "step_retrying", state=state, error=error)
        if final:
            self.record_first_cause(saga_id, f"{step}: {error}")

    def record_first_cause(self, saga_id, cause):
        saga = self.sagas[saga_id]
        self.sagas[saga_id] = replace(saga, first_cause=saga.first_cause or cause)

    def release_idempotency_key(self, saga_id):
        saga = self.sagas[saga_id]
        if saga.idempotency_key:
            self.released_keys[saga_id] = saga.idempotency_key
            self.sagas[saga_id] = replace(saga, idempotency_key=None)

    def compensation_state(self, saga_id, step, state, error=None):
        record = self.step(saga_id, step)
        if record.state not in j.Journal._COMPENSATION_FROM[state]:
            return False
        self._update(saga_id, step, f"compensation_{state.lower()}", state=state, error=error or record.error)
        return True

    def take_turn(self, dag_id, run_id, requester, limit):
        taken = getattr(self, "held_turns", {})
        self.held_turns = taken
        if (dag_id, run_id) in taken:
            return True
        if sum(1 for who in taken.values() if who == requester) >= limit:
            return False
        taken[(dag_id, run_id)] = requester
        return True

    def give_back_turn(self, dag_id, run_id):
        getattr(self, "held_turns", {}).pop((dag_id, run_id), None)

    @contextmanager
    def fence(self, saga_id, wait_seconds):
        if saga_id in self.locked:
            raise TransientError(f"saga {saga_id} is busy")
        self.locked.add(saga_id)
        try:
            yield
        finally:
            self.locked.discard(saga_id)
