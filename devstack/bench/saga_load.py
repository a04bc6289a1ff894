"""`make bench-saga`: N project-creation requests at once through the REST API, on a distributed stack.

Starts the distributed profile on a stack of its own (``.local/bench_dist``, API on the stack's port +
300; devstack/distributed.py: Celery + Redis, two schedulers, two triggerers, two workers, the settings
it ships, including the saga pool and ``max_active_runs``), on a fresh metadata database. Then, one
after the other in the same run:

1. ``--sagas`` (50) ``dbt_project_create`` runs triggered at once (one POST each, as fast as the API
   takes them), each a 2-environment project;
2. as many runs of ``bare_load``, a chain of as many no-op Python tasks as a saga runs on its happy
   path (12), with the saga DAG's ``max_active_runs`` — the yardstick: what Airflow itself costs.

For each batch it prints: all terminal (yes/no), final states, wall time (first POST to last run end),
runs per minute, and per task the p50/p95 of its wait (from when its upstream ended, or the run
started, to its own start: scheduling + Celery) and of its run time. The saga's overhead over the bare
chain is the ``overhead`` figure of the SUMMARY line. Leaks: the suite's inventory
(tests/saga_support.py) after the COMPLETED sagas are taken down, against before the batch.
Nothing asserts a time; exit status 1 on a run not terminal within ``--bound`` seconds or a leak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from devstack import drills as d  # noqa: E402
from devstack.client import client_for  # noqa: E402
from devstack.distributed import distributed_up, profile, stop_distributed  # noqa: E402
from devstack.settings import StackError, get_stack_settings  # noqa: E402
from include.dbt_platform.config import get_settings  # noqa: E402

SAGA = d.SAGA_DAG
BARE = "bare_load"
HAPPY_PATH_TASKS = 10  # the nine steps (the first waits for a turn, the last completes), report_outcome
BARE_DAG = '''"""
# `bare_load` — `make bench-saga`'s yardstick: {n} no-op tasks in a chain (devstack/bench/saga_load.py)
"""
from datetime import UTC, datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, chain

with DAG(dag_id="bare_load", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC), catchup=False,
         max_active_runs={max_active_runs}, tags=["bench"], default_args={{"owner": "bench", "retries": 1}}):
    # Python tasks, as the saga's are: a worker process runs each one.
    chain(*[PythonOperator(task_id=f"step_{{i:02d}}", python_callable=lambda: None) for i in range({n})])
'''


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def batch(client, dag_id: str, confs: list[dict | None], bound: float) -> dict:
    """Trigger every run at once, wait until all are terminal (or ``bound`` passes), measure."""
    started = time.time()
    run_ids = []
    for conf in confs:
        run_id = f"bench__{uuid.uuid4().hex[:10]}"
        status, body = client.trigger(dag_id, run_id, conf)
        if status not in (200, 201):
            raise StackError(f"triggering {dag_id} failed: HTTP {status} {body}")
        run_ids.append(run_id)
    submitted = time.time() - started
    runs: dict[str, dict] = {}
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline and len(runs) < len(run_ids):
        for run_id in run_ids:
            if run_id not in runs:
                status, body = client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
                if status == 200 and body.get("state") in ("success", "failed"):
                    runs[run_id] = body
        time.sleep(2)
    waits: dict[str, list[float]] = {}
    busy: dict[str, list[float]] = {}
    for run_id, run in runs.items():
        tis = [t for t in client.task_instances(dag_id, run_id) if t["start_date"] and t["end_date"]]
        tis.sort(key=lambda t: _ts(t["start_date"]))
        ready = _ts(run["start_date"])
        for ti in tis:
            waits.setdefault(ti["task_id"], []).append(max(0.0, _ts(ti["start_date"]) - ready))
            busy.setdefault(ti["task_id"], []).append(_ts(ti["end_date"]) - _ts(ti["start_date"]))
            ready = _ts(ti["end_date"])
    ends = [_ts(r["end_date"]) for r in runs.values() if r.get("end_date")]
    wall = (max(ends) - started) if ends else float("nan")
    states: dict[str, int] = {}
    for run in runs.values():
        states[run["state"]] = states.get(run["state"], 0) + 1
    return {
        "dag_id": dag_id, "run_ids": run_ids, "terminal": len(runs), "states": states, "wall": wall,
        "per_minute": len(runs) / wall * 60 if ends else 0.0, "submitted": submitted,
        "waits": waits, "busy": busy,
        "run_wall": [_ts(r["end_date"]) - _ts(r["start_date"]) for r in runs.values() if r.get("end_date")],
    }  # fmt: skip


def report(result: dict, extra: str = "") -> None:
    n = len(result["run_ids"])
    print(
        f"== {result['dag_id']}: {n} runs triggered in {result['submitted']:.1f}s; all terminal: "
        f"{'yes' if result['terminal'] == n else 'no'} ({result['terminal']}/{n}) states={result['states']} "
        f"wall={result['wall']:.0f}s runs/min={result['per_minute']:.1f} "
        f"run p50={pct(result['run_wall'], 0.5):.1f}s p95={pct(result['run_wall'], 0.95):.1f}s {extra}".rstrip()
    )
    print(f"   {'task':<26} {'wait p50':>9} {'wait p95':>9} {'run p50':>8} {'run p95':>8}")
    for task in result["busy"]:  # in the order the first run ran them
        w, b = result["waits"][task], result["busy"][task]
        print(
            f"   {task:<26} {pct(w, 0.5):8.2f}s {pct(w, 0.95):8.2f}s {pct(b, 0.5):7.2f}s {pct(b, 0.95):7.2f}s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=50)
    parser.add_argument("--bound", type=float, default=1800, help="seconds each batch may take")
    args = parser.parse_args(argv)
    stack = get_stack_settings()
    root = stack.local_dir / "bench_dist"
    dags = root / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    for old in dags.iterdir():
        old.unlink()
    for source in (REPO_ROOT / "dags").glob("*.py"):
        (dags / source.name).symlink_to(source)
    max_active = get_settings().saga_max_active_runs
    (dags / "bare_load.py").write_text(BARE_DAG.format(n=HAPPY_PATH_TASKS, max_active_runs=max_active))
    prof = profile(stack, "bench", extra_env={
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "DBT_PLATFORM_PROJECTS_DIR": str(root / "projects"),
        "DBT_PLATFORM_SCHEDULE": "none",
        "DBT_PLATFORM_SAGAS_PER_REQUESTER": "0",  # 50 requests from one requester: no per-requester cap
    })  # fmt: skip
    (root / "projects").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    leaks, results = -1, {}
    with d.servers_left_as_found(stack), d.fresh_metadata(stack, prof.target):
        try:
            distributed_up(stack, prof)
            client = client_for(stack, prof.target)
            for dag_id in (SAGA, BARE):
                client.wait_for_dag(dag_id, timeout=300)
            before = d.inventory(prof)
            confs = [d.project_request(f"load_{i:02d}_{uuid.uuid4().hex[:4]}") for i in range(args.sagas)]
            results[SAGA] = batch(client, SAGA, confs, args.bound)
            sagas = d.rows(
                stack, prof.target.platform_db, "select state, count(*) from saga.sagas group by state"
            )
            d.take_down_completed(prof)
            added, gone = d.difference(before, d.inventory(prof))
            for entry in added + gone:
                print(f"    leak: {'+' if entry in added else '-'} {entry}")
            leaks = len(added) + len(gone)
            report(results[SAGA], f"sagas={dict(sagas)} leaks={leaks}")
            results[BARE] = batch(client, BARE, [None] * args.sagas, args.bound)
            report(results[BARE])
        finally:
            stop_distributed(stack, prof)
    saga, bare = results.get(SAGA), results.get(BARE)
    if not saga or not bare:
        return 1
    all_terminal = saga["terminal"] == bare["terminal"] == args.sagas
    step_wait = lambda r: statistics.median(pct(w, 0.5) for w in r["waits"].values())  # noqa: E731
    print(
        f"SUMMARY runs={args.sagas} all_terminal={'yes' if all_terminal else 'no'} leaks={leaks} "
        f"saga_per_min={saga['per_minute']:.1f} bare_per_min={bare['per_minute']:.1f} "
        f"overhead={saga['wall'] / bare['wall']:.2f}x wall saga={saga['wall']:.0f}s bare={bare['wall']:.0f}s "
        f"step_wait_p50 saga={step_wait(saga):.2f}s bare={step_wait(bare):.2f}s "
        f"bench_wall={time.monotonic() - started:.0f}s"
    )
    return 0 if all_terminal and leaks == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
