"""Back-pressure on the real journal: a requester's turns, and a turn held by a run that ended
without its verdict given back by the sweep."""

from __future__ import annotations

import uuid

from include.dbt_platform.saga.recovery import recover_all
from include.dbt_platform.sagas import definitions
from tests.saga_support import journal


def test_a_requester_gets_at_most_their_turns_and_the_sweep_frees_a_dead_runs_turn():
    who, other = f"user_{uuid.uuid4().hex[:6]}", f"other_{uuid.uuid4().hex[:6]}"
    first, second, third, others = (f"bp_{uuid.uuid4().hex[:8]}" for _ in range(4))
    j = journal()
    j.ensure_schema()
    assert j.take_turn("dbt_project_create", first, who, limit=2)
    assert j.take_turn("dbt_project_decommission", second, who, limit=2), "turns count across sagas"
    assert not j.take_turn("dbt_project_create", third, who, limit=2), "a third waits"
    assert j.take_turn("dbt_project_create", others, other, limit=2), "another requester does not"
    j.give_back_turn("dbt_project_decommission", second)
    assert j.take_turn("dbt_project_create", third, who, limit=2), "a turn given back is taken"
    # `first` ended without its verdict (marked failed by hand, say): the sweep frees its turn.
    ended = {first}
    recover_all(definitions(), lambda dag_id, run_id: "failed" if run_id in ended else "running")
    held = {run for _, run, _ in j.turns()}
    assert first not in held and {third, others} <= held
    for run in (third, others):
        j.give_back_turn("dbt_project_create", run)
