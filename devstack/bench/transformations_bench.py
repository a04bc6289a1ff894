"""`make bench`: a plain `dbt build` against the Cosmos transformation DAG, side by side, on the real scheduler.

Generates an N-model project (``devstack/bench/generate_project.py``), then, for each measured run, runs
``dbt build`` and the project's Airflow DAG one after the other on this machine and prints wall
times, the ratio, task counts, task failures, peak memory and the CPU each Airflow component used.
The fast mode (``triggerer``, test behavior ``build``) runs once to warm up (Airflow was just started;
printed, its failures counted, not in the ratio), then ``--runs`` times; the previous default (Cosmos
LOCAL, tests as their own tasks) and, on request, ``after_each`` (the triggerer mode with tests as
their own tasks) and Cosmos' stock WATCHER run once each for comparison. Also measured: ``dbt parse`` and the time to render the DAG file beyond
importing Airflow and Cosmos.

Airflow runs on its own metadata database and port (``.local/bench/``), all on 127.0.0.1, and is
stopped at the end. Nothing here asserts a time: it prints figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from devstack.airflow import (  # noqa: E402
    AIRFLOW_COMPONENTS,
    component_environment,
    component_pid,
    isolated_target,
    migrate_metadata_db,
    prepare_airflow_home,
    start_airflow,
    stop_airflow,
    wait_healthy,
)
from devstack.bench import add_airflow_env_option, airflow_env_overrides  # noqa: E402
from devstack.bench.generate_project import generate  # noqa: E402
from devstack.client import client_for  # noqa: E402
from devstack.postgres import pg_up  # noqa: E402
from devstack.settings import admin_dsn, get_stack_settings, role_for, role_password  # noqa: E402
from include.dbt_platform.config import get_settings  # noqa: E402
from include.dbt_platform.transformations.manifests import build_manifest  # noqa: E402

PRODUCER_TASK_ID = "dbt_producer_watcher"  # cosmos.constants.PRODUCER_WATCHER_TASK_ID
FAILED_STATES = {"failed", "upstream_failed", "up_for_retry"}
# What each compared DAG is: (execution mode, test behavior). "triggerer" is this platform's default;
# "local" is Cosmos' default (a task per model and one per model's tests, each its own dbt process).
MODES = {
    "triggerer": ("triggerer", "build"),
    "after_each": ("triggerer", "after_each"),
    "local": ("local", "after_each"),
    "watcher": ("watcher", "after_each"),
}
FAST_MODES = {"triggerer", "after_each"}
POLL_INTERVAL = 3.0  # seconds between two reads of a running DAG run's state
AIRFLOW_MEMORY_INTERVAL = 2.0  # seconds between two samples of Airflow's memory during a run (PeakMemory)


# ----------------------------------------------------------------------------- measuring


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def _tree(roots: list[int]) -> Iterator[int]:
    """These processes and all their descendants, each once."""
    children, seen, stack = _children(), set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in seen:
            seen.add(pid)
            stack.extend(children.get(pid, []))
            yield pid


def tree_pss_mb(roots: list[int]) -> float:
    """Proportional set size of these processes and all their descendants, in MiB.

    PSS splits pages shared between processes (forked workers share most of theirs) among them, so
    the sum is the memory the tree really holds; summing RSS would count shared pages many times.
    """
    total = 0
    for pid in _tree(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this benchmark process has used (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by a process tree: each live process's own time and that of the
    children it has reaped (a forked DAG-file parser, a finished task process)."""
    total = 0
    for pid in _tree([root]):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLOCK_TICKS


class PeakMemory:
    """Samples the memory (PSS) of a process tree every ``interval`` seconds while in use.

    Reading a process's PSS makes the kernel walk its page tables: for Airflow's ~20 processes
    (1.7 GiB) every half second that took the benchmark 4 CPU seconds per 500-model run on a
    2-core machine (measured with a separate sampler), against 0.3 s while it sampled the one
    ``dbt build`` process it compares with. Airflow's tree is sampled every 2 s
    (:data:`AIRFLOW_MEMORY_INTERVAL`; its memory grows slowly through a run, but a short peak can
    be missed), ``dbt build`` still every 0.5 s.
    """

    def __init__(self, roots, interval: float = 0.5) -> None:
        self.roots, self.interval, self.peak, self._stop = roots, interval, 0.0, threading.Event()

    def __enter__(self) -> PeakMemory:
        def sample() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, tree_pss_mb(self.roots()))
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- pieces


def write_profile(folder: Path, name: str, stack, database: str, schema: str, threads: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    profile = {
        name: {
            "target": "bench",
            "outputs": {
                "bench": {
                    "type": "postgres",
                    "host": "127.0.0.1",
                    "port": stack.pg_port,
                    "user": role_for(database),  # as the DAG's dbt runs: the warehouse's own role
                    "password": "{{ env_var('DBT_ENV_SECRET_BENCH_PASSWORD') }}",
                    "dbname": database,
                    "schema": schema,
                    "threads": threads,
                }
            },
        }
    }
    (folder / "profiles.yml").write_text(json.dumps(profile))
    return folder


def wait_quiet(pids: dict[str, int], timeout: float = 90, window: float = 1.0) -> float:
    """Wait until Airflow has worked off the previous run; return the seconds waited.

    After a run the dag-processor still serves a callback request per finished task and the
    triggerer cleans up; measured now, the plain ``dbt build`` would share the CPU with that and look
    slower than it is. Quiet: the dag-processor, triggerer and API server used under 10% of a core
    over one second (the scheduler's idle loop is the steady cost of a running Airflow; it stays).
    """
    watched = [pid for c, pid in pids.items() if c != "scheduler"]
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(tree_cpu_s(pid) for pid in watched)
        time.sleep(window)
        if sum(tree_cpu_s(pid) for pid in watched) - before < 0.1 * window:
            break
    return time.monotonic() - started


def dbt_build(project: Path, profiles: Path, stack) -> tuple[float, float, bool]:
    env = {
        **os.environ,
        "DBT_ENV_SECRET_BENCH_PASSWORD": role_password(stack, "warehouse"),
        "DO_NOT_TRACK": "true",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    cmd = [
        get_settings().dbt_executable,
        "build",
        "--project-dir",
        str(project),
        "--profiles-dir",
        str(profiles),
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakMemory(lambda: [proc.pid]) as mem:
        out, _ = proc.communicate()
    wall = time.monotonic() - started
    (project.parent / "dbt_build.log").write_text(out)
    if proc.returncode != 0:
        print(f"dbt build failed (exit {proc.returncode}); its output: {project.parent / 'dbt_build.log'}")
    return wall, mem.peak, proc.returncode == 0


RENDER_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import airflow.sdk, cosmos  # noqa
from include.dbt_platform.transformations import factory
from include.dbt_platform.transformations.projects import load_project
t1 = time.perf_counter()
dag = factory.build_transformation_dag(load_project(sys.argv[1]))
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, len(dag.tasks))
"""


def render_time(project: Path, env: dict) -> tuple[float, float, int]:
    """Seconds to import Airflow + Cosmos + the factory, then to render the project's DAG."""
    out = subprocess.run(
        [sys.executable, "-c", RENDER_SCRIPT, str(project)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[-3]), float(out[-2]), int(out[-1])


def drop_schemas(stack, database: str, schemas: list[str]) -> None:
    """Every measured run starts from an empty schema.

    Re-running dbt over existing views that depend on each other can deadlock in PostgreSQL
    (dbt-postgres renames and drops the old view with CASCADE from several threads); measured runs
    should not depend on what the previous one left.
    """
    admin_execute(stack, database, *(f'drop schema if exists "{schema}" cascade' for schema in schemas))


def admin_execute(stack, database: str, *statements: str) -> None:
    """Run ``statements`` in ``database`` as the stack's admin, each on its own (autocommit)."""
    import psycopg2

    conn = psycopg2.connect(admin_dsn(stack, database))
    conn.autocommit = True
    with conn, conn.cursor() as cur:
        for statement in statements:
            cur.execute(statement)
    conn.close()


def set_warehouse_jit(stack, database: str, jit: str) -> None:
    """PostgreSQL's JIT for every new connection to the benchmark's warehouse database.

    Off by default: the generated project's tests query views ten layers deep over a seed that dbt
    has just created, and while that seed has no statistics yet (autovacuum analyses it within a
    minute, at a moment of its own) the planner's estimates cross ``jit_above_cost`` and PostgreSQL
    compiles each test's query. The same plain ``dbt build`` of 500 models then took 33-49 s with
    JIT and 27-29 s without, back to back, dbt's own CPU the same: noise on both sides of the ratio
    that hid the DAG's overhead. ``--jit on`` measures with PostgreSQL's default.
    """
    admin_execute(stack, database, f'alter database "{database}" set jit = {"on" if jit == "on" else "off"}')


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def component_pids(stack, target) -> dict[str, int]:
    pids = {c: component_pid(stack, target, c) for c in AIRFLOW_COMPONENTS}
    return {c: pid for c, pid in pids.items() if pid}


class RunDidNotFinish(Exception):
    """A DAG run still unfinished after its time limit: a hang, reported instead of waited on."""


def dag_run(client, dag_id: str, stack, target, timeout: float) -> dict:
    run_id = f"bench__{time.strftime('%Y%m%dT%H%M%S')}"
    status, body = client.trigger(dag_id, run_id)
    if status != 200:
        raise SystemExit(f"triggering {dag_id}: HTTP {status} {body}")
    components = component_pids(stack, target)
    cpu_before = {c: tree_cpu_s(pid) for c, pid in components.items()}
    deadline = time.monotonic() + timeout
    own_before = own_cpu_s()
    with PeakMemory(lambda: list(components.values()), AIRFLOW_MEMORY_INTERVAL) as mem:
        while True:
            _, run = client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if run.get("state") in {"success", "failed"}:
                break
            if time.monotonic() > deadline:
                states = Counter(client.task_states(dag_id, run_id).values())
                raise RunDidNotFinish(
                    f"{dag_id} run {run_id} unfinished after {timeout:.0f}s; task states: {dict(states)}"
                )
            # The wall time comes from the run's own timestamps, so polling rarely costs no accuracy;
            # polling often does cost: the API server loads every task instance of the run to answer
            # (the run's DAG versions), which at 1,000 models took ~40% of its CPU at two polls a second.
            time.sleep(POLL_INTERVAL)
    tis = client.task_instances(dag_id, run_id)
    # CPU seconds each component's process tree used during the run (the scheduler's includes the
    # LocalExecutor's task processes; the dag-processor's, its DAG-file parses).
    cpu = {c: tree_cpu_s(pid) - cpu_before[c] for c, pid in components.items()}
    cpu["benchmark itself"] = own_cpu_s() - own_before  # its polling and sampling share the CPU too
    failed = sorted(
        t["task_id"] for t in tis if t["state"] in FAILED_STATES or (t.get("try_number") or 0) > 1
    )
    queued, ended = _ts(run["queued_at"]), _ts(run["end_date"])
    # Where the time goes in the one-build modes: waiting for the producer to start, its dbt build,
    # and the tail (the last tasks reporting, the run being marked done).
    phases = {}
    producer = next((t for t in tis if t["task_id"] == PRODUCER_TASK_ID and t.get("end_date")), None)
    if producer and producer.get("start_date"):
        start, end = _ts(producer["start_date"]), _ts(producer["end_date"])
        phases = {
            "to producer start": (start - queued).total_seconds(),
            "producer": (end - start).total_seconds(),
            "after producer": (ended - end).total_seconds(),
        }
    return {
        "state": run["state"],
        # queued_at: when the REST call created the run; end_date: when its last task ended.
        "wall": (ended - queued).total_seconds(),
        "phases": phases,
        "tasks": len(tis),
        "failed": failed,
        "peak_mb": mem.peak,
        "cpu": cpu,
    }


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", type=int, default=100, help="models in the generated project (100, 500, 1000…)"
    )
    parser.add_argument("--runs", type=int, default=5, help="measured runs of the fast (triggerer) mode")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="runs of the fast mode before the measured ones (printed, failures counted, not in the ratio)",
    )
    parser.add_argument(
        "--compare",
        default="after_each,watcher,local",
        help="comma-separated modes run once each for comparison: local, after_each (triggerer mode, "
        "tests as their own tasks), watcher; '' for none",
    )
    add_airflow_env_option(parser)
    parser.add_argument(
        "--hang-after",
        type=float,
        default=10.0,
        help="a DAG run unfinished after this many times its dbt build (LOCAL and watcher: 10 times "
        "more), and at least 5 minutes, counts as hung: reported, and the benchmark stops",
    )
    parser.add_argument("--keep-running", action="store_true", help="leave the bench Airflow running")
    parser.add_argument(
        "--jit",
        choices=("off", "on"),
        default="off",
        help="PostgreSQL's JIT in the benchmark's warehouse database (default off: see set_warehouse_jit)",
    )
    args = parser.parse_args(argv)
    overrides = airflow_env_overrides(parser, args.airflow_env)

    stack = get_stack_settings()
    settings = get_settings()
    root = stack.local_dir / "bench"
    target = isolated_target(stack, "bench", port_offset=200)
    modes = ["triggerer"] + [m.strip() for m in args.compare.split(",") if m.strip()]
    if unknown := sorted(set(modes) - MODES.keys()):
        parser.error(f"--compare: unknown mode(s) {unknown}; expected some of {sorted(MODES)}")
    n = args.models
    print(
        f"== generating a {n}-model project (views, a not_null test each, one 1,000-row seed); "
        f"warehouse JIT {args.jit}",
        flush=True,
    )
    projects_dir = root / "projects"
    projects = {
        mode: generate(projects_dir / f"bench_{mode}", n, f"bench_{mode}", f"bench_{mode}_{n}", *MODES[mode])
        for mode in modes
    }
    plain = generate(root / "plain" / "bench_plain", n, "bench_plain", f"bench_plain_{n}")
    pg_up(stack, (target.metadata_db, target.warehouse_db, target.platform_db))
    set_warehouse_jit(stack, target.warehouse_db, args.jit)
    profiles = write_profile(
        root / "profiles", "bench_plain", stack, target.warehouse_db, f"bench_plain_{n}", settings.dbt_threads
    )

    started = time.monotonic()
    build_manifest(plain)
    parse_s = time.monotonic() - started
    for path in projects.values():
        build_manifest(path)

    env = {
        **component_environment(stack, target),
        "DBT_PLATFORM_PROJECTS_DIR": str(projects_dir),
        "DBT_PLATFORM_REGISTRY_DIR": str(root / "registered"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    import_s, render_s, task_count = render_time(projects["triggerer"], env)
    print(
        f"   dbt parse: {parse_s:.1f}s; DAG file: imports {import_s:.2f}s, then rendering "
        f"{task_count} tasks {render_s:.2f}s",
        flush=True,
    )

    print(f"== starting Airflow for the benchmark on 127.0.0.1:{target.api_port}", flush=True)
    prepare_airflow_home(stack, target)
    migrate_metadata_db(stack, target)
    stop_airflow(stack, target)
    start_airflow(
        stack,
        target,
        extra_env={
            k: env[k]
            for k in (
                "DBT_PLATFORM_PROJECTS_DIR",
                "DBT_PLATFORM_REGISTRY_DIR",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION",
            )
        }
        | overrides,
    )
    if overrides:
        print(f"   Airflow settings changed for this run: {overrides}", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in modes}
    hung: str | None = None
    warmed: list[dict] = []  # the first run after Airflow starts pays one-time costs; shown, not counted
    try:
        wait_healthy(stack, target)
        client = client_for(stack, target)
        for mode in modes:
            client.wait_for_dag(f"bench_{mode}", timeout=300)
        time.sleep(5)  # let the processor finish its first pass before timing anything
        for mode in modes:
            warmups = args.warmup if mode == "triggerer" else 0
            for i in range(warmups + (args.runs if mode == "triggerer" else 1)):
                drop_schemas(stack, target.warehouse_db, [f"bench_plain_{n}", f"bench_{mode}_{n}"])
                pids = component_pids(stack, target)
                waited = wait_quiet(pids)
                cpu_before = {c: tree_cpu_s(pid) for c, pid in pids.items()}
                build_wall, build_mb, ok = dbt_build(plain, profiles, stack)
                build_cpu = sum(tree_cpu_s(pid) - cpu_before[c] for c, pid in pids.items())
                if not ok:
                    raise SystemExit("dbt build of the generated project failed")
                limit = max(300.0, args.hang_after * build_wall * (1 if mode in FAST_MODES else 10))
                try:
                    run = dag_run(client, f"bench_{mode}", stack, target, limit)
                except RunDidNotFinish as exc:
                    hung = str(exc)
                    print(f"   HUNG: {hung}", flush=True)
                    break
                run.update(build=build_wall, build_mb=build_mb, ratio=run["wall"] / build_wall)
                label = "warm-up" if i < warmups else f"run {i - warmups + 1}"
                (warmed if i < warmups else results[mode]).append(run)
                print(
                    f"   {mode:<9} {label}: dbt build {build_wall:6.1f}s | DAG {run['state']:<7} "
                    f"{run['wall']:7.1f}s ({run['ratio']:.2f}x) | {run['tasks']} tasks, "
                    f"{len(run['failed'])} failed/retried {run['failed'][:5]} | peak memory (PSS) Airflow "
                    f"{run['peak_mb']:.0f} MiB, dbt build {build_mb:.0f} MiB",
                    flush=True,
                )
                print(
                    "     CPU seconds during the run: "
                    + ", ".join(f"{c} {v:.1f}" for c, v in run["cpu"].items())
                    + f"; Airflow (idle) during the dbt build: {build_cpu:.1f}, after waiting "
                    f"{waited:.0f}s for it to go quiet",
                    flush=True,
                )
                if run["phases"]:
                    print(
                        "     phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in run["phases"].items()),
                        flush=True,
                    )
            if hung:
                break
    finally:
        if not args.keep_running:
            stop_airflow(stack, target)

    fast = results["triggerer"]
    ratios = [r["ratio"] for r in fast]
    spurious = sum(len(r["failed"]) for r in fast + warmed)
    extra = " ".join(
        f"{m}={statistics.median(r['wall'] for r in results[m]):.1f}s"
        f"({statistics.median(r['ratio'] for r in results[m]):.2f}x)"
        for m in modes[1:]
        if results[m]
    )
    if warmed:
        extra = f"warmup={warmed[0]['wall']:.1f}s({warmed[0]['ratio']:.2f}x) {extra}"
    timing = (
        f"dbt_build={statistics.median(r['build'] for r in fast):.1f}s "
        f"cosmos_triggerer={statistics.median(r['wall'] for r in fast):.1f}s "
        f"ratio={statistics.median(ratios):.2f}x (max {max(ratios):.2f}x) "
        if fast
        else ""
    )
    print(
        f"SUMMARY models={n} {timing}spurious_failures={spurious} in {len(fast) + len(warmed)} runs "
        f"hung_runs={1 if hung else 0} dbt_parse={parse_s:.1f}s dag_render={render_s:.2f}s {extra}".rstrip()
    )
    ok = not hung and all(r["state"] == "success" for rs in results.values() for r in rs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
