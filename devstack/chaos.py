"""`make chaos`: crash drills on a distributed stack of its own (``.local/chaos``, API on +200).

Starts the distributed profile (devstack/distributed.py: Celery + Redis, two schedulers, two
triggerers, two workers, the settings it ships), runs one undisturbed saga as a baseline, then each
drill, one after the other:

| drill | fault | expected |
|---|---|---|
| scheduler | SIGKILL (with all it started) the scheduler that queued the saga's running step | the other scheduler finishes the saga: COMPLETED |
| worker | SIGKILL the worker running a saga step, after the step's first effect (the step is made to hang there) | the step is retried on the other worker, its effect not repeated: COMPLETED (or COMPENSATED) |
| triggerer | SIGKILL the triggerer holding most triggers of a 100-model transformation run | the other takes its triggers over: the run succeeds |
| postgres | PostgreSQL restarted (fast shutdown) while a saga step runs | COMPLETED (or COMPENSATED) |
| redis | Redis restarted while the saga's first task waits in its queue (the workers held down meanwhile) | the message survives; COMPLETED |

A killed component is held down until its run ends (the others must carry on alone), then started
again and the stack waited healthy before the next drill. Each drill prints one line,
``drill <name>: <final state> leaks=<n> recovered_in=<s>s``: ``recovered_in`` runs from the fault
to the run's end. Leaks: the suite's inventory (devstack/drills.py) after the drill's COMPLETED sagas
are taken down, against before the drill. Exit status 1 on any leak, a run not terminal within
its bound, or an outcome the table does not expect. Nothing here asserts a time: the goal is
recovery within 60 s, and the summary says where it was missed.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from devstack import drills as d
from devstack.bench.generate_project import generate
from devstack.client import client_for
from devstack.distributed import Profile, distributed_up, profile, stop_distributed
from devstack.postgres import pg_start, pg_stop
from devstack.redis import queued_messages, redis_start, redis_stop
from devstack.settings import StackError, get_stack_settings

DRILLS = ("scheduler", "worker", "triggerer", "postgres", "redis")
GOAL_SECONDS = 60
MODELS_DAG = "drill_models"
RUN_BOUND = 300  # seconds a saga run may take after its fault
TRANSFORMATION_BOUND = 900


@dataclass
class Outcome:
    drill: str
    state: str
    leaks: int
    recovered_in: float | None  # fault -> the work moved on again
    ok: bool
    detail: str = ""
    ended_after: float | None = None  # fault -> the run's end

    def line(self) -> str:
        def secs(value: float | None) -> str:
            return f"{value:.0f}s" if value is not None else "-"

        return (
            f"drill {self.drill}: {self.state} leaks={self.leaks} recovered_in={secs(self.recovered_in)} "
            f"run_ended_after={secs(self.ended_after)} {self.detail}"
        ).rstrip()


class Drills:
    def __init__(self, stack, prof: Profile, client) -> None:
        self.stack, self.prof, self.client = stack, prof, client

    # -- helpers
    def trigger_saga(self, prefix: str, **extra) -> tuple[str, str]:
        name = f"{prefix}_{uuid.uuid4().hex[:6]}"
        run_id = f"chaos__{name}"
        status, body = self.client.trigger(d.SAGA_DAG, run_id, d.project_request(name, **extra))
        if status not in (200, 201):
            raise StackError(f"triggering {d.SAGA_DAG} failed: HTTP {status} {body}")
        return name, run_id

    def step_running(self, run_id: str, step: str, states=("running",)) -> dict | None:
        tasks = d.task_rows(self.stack, self.prof, d.SAGA_DAG, run_id)
        return tasks[step] if tasks.get(step, {}).get("state") in states else None

    def finish(self, run: dict, run_id: str, fault_at: float, before: dict, expected: set[str], detail=""):
        """The saga's outcome, leaks once its COMPLETED sagas are taken down, and the recovery time."""
        saga = d.saga_of(self.stack, self.prof, run_id) or {"state": "NO SAGA", "saga_id": ""}
        state = "not terminal" if run.get("timed_out") else f"{saga['state']} (run {run.get('state')})"
        end = _epoch(run["end_date"]) if run.get("end_date") else None
        moved_on = d.progress_after(self.stack, self.prof, saga["saga_id"], fault_at) or end
        d.take_down_completed(self.prof)
        added, gone = d.difference(before, d.inventory(self.prof))
        for entry in added + gone:
            print(f"    leak: {'+' if entry in added else '-'} {entry}")
        ok = not run.get("timed_out") and saga["state"] in expected and not added and not gone
        return Outcome(
            "", state, len(added) + len(gone), moved_on - fault_at if moved_on else None, ok, detail,
            end - fault_at if end else None,
        )  # fmt: skip

    # -- the drills
    def scheduler(self) -> Outcome:
        before = d.inventory(self.prof)
        _, run_id = self.trigger_saga("drill_sched")
        step = d.wait_until(
            lambda: self.step_running(run_id, "create_environments", ("queued", "running")), 180
        )
        if not step:
            raise StackError("the saga never reached create_environments")
        victim = step["scheduler"] or "scheduler-1"
        fault_at = time.time()
        d.kill_host(self.prof, victim)
        run = d.wait_terminal(self.client, d.SAGA_DAG, run_id, RUN_BOUND)
        outcome = self.finish(run, run_id, fault_at, before, {"COMPLETED"}, f"(killed {victim})")
        d.release(self.stack, self.prof, victim)
        return outcome

    def worker(self) -> Outcome:
        before = d.inventory(self.prof)
        hang = {"step": "create_environments", "mode": "timeout", "after": 1}
        name, run_id = self.trigger_saga("drill_worker", fault_injection=hang)
        database, schema = f"dbt_{name}", f"{name}_dev"

        def first_effect_done():
            step = self.step_running(run_id, "create_environments")
            if not step or not d.rows(
                self.stack, "postgres", "select 1 from pg_database where datname = %s", (database,)
            ):
                return None
            made = d.rows(self.stack, database, "select 1 from pg_namespace where nspname = %s", (schema,))
            return step if made else None

        step = d.wait_until(first_effect_done, 180)
        if not step:
            raise StackError("create_environments never made its first schema")
        victim = step["worker"]
        fault_at = time.time()
        d.kill_host(self.prof, victim)
        run = d.wait_terminal(self.client, d.SAGA_DAG, run_id, RUN_BOUND)
        saga = d.saga_of(self.stack, self.prof, run_id)
        journal = d.step_journal(self.stack, self.prof, saga["saga_id"]) if saga else {}
        made = d.difference(before, d.inventory(self.prof))[0]
        duplicates = _duplicates(name, made)
        step_seen = journal.get("create_environments", {})
        detail = (
            f"(killed {victim}; create_environments {step_seen.get('state')} after {step_seen.get('attempts')} "
            f"attempts, journaled succeeded {step_seen.get('succeeded')}x; duplicates={len(duplicates)})"
        )
        outcome = self.finish(run, run_id, fault_at, before, {"COMPLETED", "COMPENSATED"}, detail)
        outcome.ok = outcome.ok and not duplicates and step_seen.get("succeeded", 0) <= 1
        d.release(self.stack, self.prof, victim)
        return outcome

    def triggerer(self) -> Outcome:
        before = d.inventory(self.prof)
        run_id = f"chaos__triggerer_{uuid.uuid4().hex[:6]}"
        status, body = self.client.trigger(MODELS_DAG, run_id)
        if status not in (200, 201):
            raise StackError(f"triggering {MODELS_DAG} failed: HTTP {status} {body}")
        held = d.wait_until(
            lambda: (t := d.triggers_by_triggerer(self.stack, self.prof)) and sum(t.values()) >= 20 and t, 300
        )
        if not held:
            raise StackError("the transformation run never deferred its node tasks")
        victim = max(held, key=held.get)
        fault_at = time.time()
        d.kill_host(self.prof, victim)
        # Recovered once no trigger is left with the dead triggerer (the other took them all).
        taken = d.wait_until(lambda: victim not in d.triggers_by_triggerer(self.stack, self.prof), 300, 0.5)
        taken_at = time.time() if taken else None
        run = d.wait_terminal(self.client, MODELS_DAG, run_id, TRANSFORMATION_BOUND)
        end = _epoch(run["end_date"]) if run.get("end_date") else None
        added, gone = d.difference(before, d.inventory(self.prof))
        tasks = self.client.task_states(MODELS_DAG, run_id)
        not_green = sum(state != "success" for state in tasks.values())
        state = "not terminal" if run.get("timed_out") else f"run {run.get('state')}"
        detail = f"(killed {victim} holding {held[victim]} of {sum(held.values())} triggers; {len(tasks)} tasks, {not_green} not success)"
        ok = run.get("state") == "success" and not added and not gone
        outcome = Outcome(
            "", state, len(added) + len(gone), taken_at - fault_at if taken_at else None, ok, detail,
            end - fault_at if end else None,
        )  # fmt: skip
        d.release(self.stack, self.prof, victim)
        return outcome

    def postgres(self) -> Outcome:
        before = d.inventory(self.prof)
        _, run_id = self.trigger_saga("drill_pg")
        if not d.wait_until(
            lambda: self.step_running(run_id, "setup_repository", ("queued", "running")), 180
        ):
            raise StackError("the saga never reached setup_repository")
        fault_at = time.time()
        pg_stop(self.stack)
        pg_start(self.stack)
        restarted = time.time() - fault_at
        run = d.wait_terminal(self.client, d.SAGA_DAG, run_id, RUN_BOUND)
        outcome = self.finish(
            run, run_id, fault_at, before, {"COMPLETED", "COMPENSATED"}, f"(restart took {restarted:.1f}s)"
        )
        d.release(self.stack, self.prof)
        return outcome

    def redis(self) -> Outcome:
        before = d.inventory(self.prof)
        for worker in ("worker-1", "worker-2"):  # nobody takes the message: it waits in Redis
            d.kill_host(self.prof, worker, signal_name="SIGTERM")
        _, run_id = self.trigger_saga("drill_redis")
        db = self.prof.redis_db
        if not d.wait_until(lambda: queued_messages(self.stack, db) >= 1, 120):
            raise StackError("no task was ever queued in Redis")
        queued = queued_messages(self.stack, db)
        fault_at = time.time()
        redis_stop(self.stack)
        redis_start(self.stack)
        kept = queued_messages(self.stack, db)
        for worker in ("worker-1", "worker-2"):
            (self.prof.run_dir / f"{worker}.hold").unlink(missing_ok=True)
        run = d.wait_terminal(self.client, d.SAGA_DAG, run_id, RUN_BOUND)
        detail = f"(queued {queued} before the restart, {kept} after; workers back with it)"
        outcome = self.finish(run, run_id, fault_at, before, {"COMPLETED"}, detail)
        d.release(self.stack, self.prof)
        return outcome


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _duplicates(name: str, made: list[str]) -> list[str]:
    """What a 2-environment project should have made once, made more than once (or half-made)."""
    expected = {
        "databases": {f"dbt_{name}"},
        "roles": {f"{name}_dev_rw", f"{name}_prod_rw", f"{name}_owner", f"{name}_reader"},
        "connections": {f"dbt_{name}_dev", f"dbt_{name}_prod"},
        "repositories": {name},
        "registered": {name},
    }
    extra = []
    for category, names in expected.items():
        seen = [e.split("/", 1)[1].strip('"') for e in made if e.startswith(f"{category}/")]
        extra += [f"{category}/{n}" for n in seen if n not in names]
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drill", action="append", choices=DRILLS, help="run only these (repeatable)")
    parser.add_argument("--models", type=int, default=100, help="models of the triggerer drill's project")
    args = parser.parse_args(argv)
    chosen = args.drill or list(DRILLS)
    stack = get_stack_settings()
    projects = stack.local_dir / "chaos" / "projects"
    prof = profile(stack, "chaos", extra_env={
        "SAGA_FAULT_INJECTION": "1",  # the worker drill makes a step hang after its first effect
        "DBT_PLATFORM_PROJECTS_DIR": str(projects),
        "DBT_PLATFORM_SCHEDULE": "none",
        "DBT_PLATFORM_SAGAS_PER_REQUESTER": "0",
    })  # fmt: skip
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with d.servers_left_as_found(stack), d.fresh_metadata(stack, prof.target):
        if "triggerer" in chosen:
            from include.dbt_platform.transformations.manifests import build_manifest

            build_manifest(generate(projects / MODELS_DAG, args.models, MODELS_DAG, schema=MODELS_DAG))
        else:
            projects.mkdir(parents=True, exist_ok=True)
        try:
            distributed_up(stack, prof)
            client = client_for(stack, prof.target)
            client.wait_for_dag(d.SAGA_DAG)
            drills = Drills(stack, prof, client)
            baseline = drills.trigger_saga("drill_base")[1]
            run = d.wait_terminal(client, d.SAGA_DAG, baseline, RUN_BOUND)
            d.take_down_completed(prof)
            took = _epoch(run["end_date"]) - _epoch(run["start_date"]) if run.get("end_date") else None
            print(
                f"baseline saga: {run.get('state')} in {took:.0f}s (no fault)"
                if took
                else "baseline saga: not terminal",
                flush=True,
            )
            if "triggerer" in chosen:
                client.wait_for_dag(MODELS_DAG, timeout=300)
            for name in chosen:
                try:
                    outcome = getattr(drills, name)()
                except StackError as exc:
                    outcome = Outcome(name, f"error: {exc}", 0, None, False)
                outcome.drill = name
                outcomes.append(outcome)
                print(outcome.line(), flush=True)
        finally:
            stop_distributed(stack, prof)
    slow = [o.drill for o in outcomes if o.recovered_in is None or o.recovered_in > GOAL_SECONDS]
    failed = [o.drill for o in outcomes if not o.ok]
    print(
        f"SUMMARY drills={len(outcomes)} failed={len(failed)} {failed or ''} leaks={sum(o.leaks for o in outcomes)} "
        f"over_{GOAL_SECONDS}s={slow or 'none'} wall={time.monotonic() - started:.0f}s"
    )
    return 1 if failed or len(outcomes) < len(chosen) else 0


if __name__ == "__main__":
    sys.exit(main())
