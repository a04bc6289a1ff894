"""`make bench-saga-latency`: a project-creation saga end to end, against a bare chain of the same length.

Starts its own Airflow (`.local/bench_saga/`, API on the stack's port + 300, the settings `make run`
uses), then, side by side in one run, triggers through the REST API `--runs` sagas (a 2-environment
project each) and `--runs` runs of `bare_chain`, a DAG of as many no-op tasks as a saga runs on its
happy path. For each it prints the run's wall time (run start to run end), each task's busy time and
the gaps between tasks (the scheduler's latency), then a `SUMMARY` line, with the scheduler's own CPU
while nothing ran, measured before the runs (``--idle-seconds``). Nothing asserts a time.
It starts from a clean slate (no projects of earlier runs, whose DAGs would run beside it) with every
DAG paused until it triggers it, so that no scheduled DAG runs beside the measurement; the projects
it creates are taken down at the end (databases, roles, connections, files).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from devstack.airflow import (  # noqa: E402
    component_pid,
    isolated_target,
    migrate_metadata_db,
    prepare_airflow_home,
    start_airflow,
    stop_airflow,
    wait_healthy,
)
from devstack.bench import add_airflow_env_option, airflow_env_overrides  # noqa: E402
from devstack.client import client_for  # noqa: E402
from devstack.drills import fresh_metadata  # noqa: E402
from devstack.postgres import pg_up  # noqa: E402
from devstack.settings import admin_dsn, get_stack_settings  # noqa: E402

SAGA = "dbt_project_create"
BARE = "bare_chain"
PREFIX = "benchsaga"
BARE_CHAIN = '''"""
# `bare_chain` — the benchmark's yardstick: {n} no-op tasks in a chain (devstack/bench/saga_latency.py)
"""
from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, chain

with DAG(dag_id="bare_chain", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC), catchup=False,
         tags=["bench"], default_args={{"owner": "bench", "retries": 1}}):
    # Python tasks, as the saga's are: a worker process runs each one.
    chain(*[PythonOperator(task_id=f"step_{{i:02d}}", python_callable=lambda: None) for i in range({n})])
'''


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def measure(client, dag_id: str, conf: dict | None) -> dict:
    run_id = f"bench__{uuid.uuid4().hex[:10]}"
    status, body = client.trigger(dag_id, run_id, conf)
    if status not in (200, 201):
        raise SystemExit(f"triggering {dag_id} failed: HTTP {status} {body}")
    run = client.wait_for_run(dag_id, run_id, timeout=600)
    tis = [
        t
        for t in client.task_instances(dag_id, run_id)
        if t["start_date"] and t["end_date"] and t["state"] in ("success", "failed")
    ]
    tis.sort(key=lambda t: _ts(t["start_date"]))
    busy = {t["task_id"]: (_ts(t["end_date"]) - _ts(t["start_date"])).total_seconds() for t in tis}
    gaps = [
        (_ts(b["start_date"]) - _ts(a["end_date"])).total_seconds()
        for a, b in zip(tis, tis[1:], strict=False)
    ]
    gaps.insert(0, (_ts(tis[0]["start_date"]) - _ts(run["start_date"])).total_seconds())
    wall = (_ts(run["end_date"]) - _ts(run["start_date"])).total_seconds()
    return {"state": run["state"], "wall": wall, "busy": busy, "gaps": gaps, "tasks": len(tis)}


def take_down(stack) -> None:
    """Drop what the benchmark's sagas made on the cluster (their files live under .local/bench_saga)."""
    import psycopg2

    conn = psycopg2.connect(admin_dsn(stack))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("select datname from pg_database where datname like %s", (f"dbt\\_{PREFIX}%",))
        for (name,) in cur.fetchall():
            cur.execute(f'drop database if exists "{name}" with (force)')
        cur.execute("select rolname from pg_roles where rolname like %s", (f"{PREFIX}%",))
        for (role,) in cur.fetchall():
            cur.execute(f'drop role if exists "{role}"')
    conn.close()


def idle_scheduler_cpu(stack, target, client, seconds: float) -> float:
    """The scheduler's own CPU (its main process: the loop) while nothing runs, in % of one core:
    measured once no DAG run is queued or running (the stack's scheduled DAGs, e.g. the bundled
    project's, run once as they appear)."""
    pid = component_pid(stack, target, "scheduler")
    if pid is None:
        return float("nan")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status, body = client.request("GET", "/dags/~/dagRuns?state=queued&state=running&limit=1")
        if status == 200 and body.get("total_entries") == 0:
            break
        time.sleep(2)
    time.sleep(5)  # the last run's callbacks settle
    before, began = cpu(), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu() - before) / (time.monotonic() - began)


def run_both(stack, target, runs: int, environments: list[str], idle_seconds: float) -> tuple[dict, float]:
    """``runs`` sagas and ``runs`` bare chains, interleaved: both see the same machine. First, with
    both DAGs loaded and nothing running yet (no project: no transformation DAG), the scheduler's
    CPU while idle."""
    results: dict[str, list[dict]] = {SAGA: [], BARE: []}
    wait_healthy(stack, target)
    client = client_for(stack, target)
    for dag_id in (SAGA, BARE):
        client.wait_for_dag(dag_id)
    idle = idle_scheduler_cpu(stack, target, client, idle_seconds)
    for _ in range(runs):
        name = f"{PREFIX}_{uuid.uuid4().hex[:8]}"
        conf = {"project_name": name, "owner": "bench@example.com", "description": "", "environments":
                environments, "database_mode": "new", "database_name": None, "readers": [],
                "idempotency_key": None}  # fmt: skip
        results[SAGA].append(measure(client, SAGA, conf))
        results[BARE].append(measure(client, BARE, None))
    return results, idle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--environments", default="dev,prod")
    parser.add_argument(
        "--idle-seconds", type=float, default=30.0, help="how long the idle scheduler's CPU is measured"
    )
    add_airflow_env_option(parser)
    args = parser.parse_args(argv)
    overrides = airflow_env_overrides(parser, args.airflow_env)
    stack = get_stack_settings()
    target = isolated_target(stack, "bench_saga", port_offset=300)
    root = stack.local_dir / "bench_saga"
    dags = root / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    for old in dags.iterdir():
        old.unlink()
    for source in (REPO_ROOT / "dags").glob("*.py"):
        (dags / source.name).symlink_to(source)
    happy_path_tasks = 10  # the nine steps, report_outcome (compensate is skipped)
    (dags / "bare_chain.py").write_text(BARE_CHAIN.format(n=happy_path_tasks))
    stop_airflow(stack, target)
    with fresh_metadata(stack, target):
        pg_up(stack, (target.metadata_db, target.warehouse_db, target.platform_db))
        prepare_airflow_home(stack, target)
        migrate_metadata_db(stack, target)
        # Every DAG starts paused (triggering one unpauses it): no scheduled DAG (the bundled
        # project's build, the recovery sweep, the new projects' first runs) runs beside the measurement.
        quiet = {
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        }
        start_airflow(stack, target, extra_env=quiet | overrides)
        try:
            results, idle = run_both(
                stack, target, args.runs, [e for e in args.environments.split(",") if e], args.idle_seconds
            )
        finally:
            stop_airflow(stack, target)
            take_down(stack)
    if overrides:
        print(f"Airflow settings changed for this run: {overrides}")
    for dag_id, runs in results.items():
        print(f"== {dag_id}: {len(runs)} runs")
        for i, r in enumerate(runs, 1):
            gaps = r["gaps"]
            print(
                f"   run {i}: {r['state']:<8} wall {r['wall']:6.2f}s  busy {sum(r['busy'].values()):6.2f}s  "
                f"gaps {sum(gaps):5.2f}s ({len(gaps)} gaps, mean {statistics.mean(gaps):.2f}s)"
            )
        steps = runs[0]["busy"]
        print("   busy per task (median): " + ", ".join(
            f"{t} {statistics.median(r['busy'].get(t, 0) for r in runs):.2f}s" for t in steps))  # fmt: skip
    saga, bare = results[SAGA], results[BARE]
    med = lambda runs, f: statistics.median(f(r) for r in runs)  # noqa: E731
    print(
        f"SUMMARY saga_wall={med(saga, lambda r: r['wall']):.2f}s "
        f"(min {min(r['wall'] for r in saga):.2f}, max {max(r['wall'] for r in saga):.2f}) "
        f"saga_busy={med(saga, lambda r: sum(r['busy'].values())):.2f}s "
        f"saga_gap_mean={med(saga, lambda r: statistics.mean(r['gaps'])):.3f}s "
        f"bare_wall={med(bare, lambda r: r['wall']):.2f}s "
        f"bare_gap_mean={med(bare, lambda r: statistics.mean(r['gaps'])):.3f}s "
        f"idle_scheduler_cpu={idle:.1f}% failed={sum(r['state'] != 'success' for r in saga + bare)} runs={len(saga)}"
    )
    return 0 if all(r["state"] == "success" for r in saga + bare) else 1


if __name__ == "__main__":
    sys.exit(main())
