"""Transformation DAGs in the triggerer mode, on the real scheduler (the mode make run uses).

One ``dbt build`` in the producer task; every node's task starts and ends in the triggerer. Checked
here: the run succeeds with every node's task green and none of them on a worker; the marts' assets
start the downstream DAG; a model that fails fails the run's nodes downstream of it, and its
automatic retry (on a worker) succeeds once the cause is fixed, followed by its downstream nodes.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from devstack.airflow import AIRFLOW_COMPONENTS, COMPONENT_NICENESS, component_pid
from include.dbt_platform.runtime import scheduler_order
from tests.harness import STACK, assert_model_lineage, assert_run_trace, lineage_events, query, wait_for
from tests.scheduler.live import LIVE_PROJECTS_DIR, LIVE_TARGET

DAG_ID = "inventory_transforms"
FLAKY = "flaky_transforms"


def _has_root_span(dag_id: str, run: str) -> bool:
    from include.dbt_platform.config import get_settings
    from include.dbt_platform.observability.tracing import read_spans

    return any(
        s["name"] == f"dbt {dag_id}" and s["attributes"].get("airflow.run_id") == run
        for s in read_spans(get_settings().trace_file)
    )


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_id() -> str:
    return f"test__{uuid.uuid4().hex[:10]}"


def task_instances(client, dag_id: str, run: str) -> dict[str, dict]:
    return {ti["task_id"]: ti for ti in client.task_instances(dag_id, run)}


@pytest.fixture(scope="module")
def client(live_airflow):
    live_airflow.wait_for_dag(DAG_ID)
    live_airflow.wait_for_dag("inventory_marts_report")
    live_airflow.request("PATCH", "/dags/inventory_marts_report", {"is_paused": False})
    return live_airflow


def test_every_node_runs_in_the_triggerer_and_the_marts_start_the_downstream_dag(client, warehouse):
    _, before = client.request("GET", "/dags/inventory_marts_report/dagRuns?limit=100")
    known = {r["dag_run_id"] for r in before.get("dag_runs", [])}
    run = run_id()
    status, body = client.trigger(DAG_ID, run)
    assert status == 200, body
    assert client.wait_for_run(DAG_ID, run, timeout=300)["state"] == "success"

    tis = task_instances(client, DAG_ID, run)
    nodes = {t: ti for t, ti in tis.items() if t != "dbt_producer_watcher"}
    # One task per model with its tests (test behavior build), one per seed.
    assert set(nodes) == {
        "raw_users_seed_build", "raw_applications_seed_build", "stg_users_model_build",
        "stg_applications_model_build", "fct_users_model_build", "fct_applications_model_build",
    }  # fmt: skip
    assert all(ti["state"] == "success" for ti in nodes.values()), nodes
    # No worker process ran a node: they started and ended in the triggerer, on their first try.
    assert all(not ti["hostname"] and ti["try_number"] == 1 for ti in nodes.values())
    assert tis["dbt_producer_watcher"]["hostname"], "the build itself ran on a worker"
    # The build handed Cosmos' parser only the dbt events it acts on (watcher/producer.py).
    _, build_log = client.request(
        "GET", f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances/dbt_producer_watcher/logs/1"
    )
    counts = re.search(
        r"dbt events: (\d+) handed to Cosmos' watcher parser, (\d+) debug", json.dumps(build_log)
    )
    assert counts and int(counts[1]) > 0 and int(counts[2]) > 0, build_log
    assert query(warehouse, "select count(*) from inventory_transforms.fct_users")[0][0] == 12
    # Lineage: each model's task has its START and COMPLETE, with the model's table as its output,
    # though the task ended in the triggerer (the build's task emits them, once it has reported its
    # state, from its callback: transformations/lineage.py, watcher/producer.py).
    models = ("stg_users", "stg_applications", "fct_users", "fct_applications")
    wait_for(
        lambda: len([e for e in lineage_events(DAG_ID, run) if "_model_build" in e["job"]["name"]]) >= 8,
        60,
        "each model task's START and COMPLETE in the lineage file",
    )
    assert_model_lineage(lineage_events(DAG_ID, run), DAG_ID, {m: f"{m}_model_build" for m in models})
    # Tracing: the run is one trace; the build's dbt invocation has a span per model. The root span
    # is written by the DAG's success callback, which the dag-processor runs soon after.
    wait_for(lambda: _has_root_span(DAG_ID, run), 120, "the run's root span in the trace file")
    spans = assert_run_trace(DAG_ID, run, list(models))
    assert any(
        s["name"] == "dbt build" and s["attributes"]["airflow.task_id"] == "dbt_producer_watcher"
        for s in spans
    )
    # The stack's triggerer is the project's launcher: each node's task went to its trigger runner
    # alone, not with the whole DAG (include/dbt_platform/runtime/triggerer.py).
    _, dag_run = client.request("GET", f"/dags/{DAG_ID}/dagRuns/{run}")
    versions = [v["id"] for v in dag_run["dag_versions"]]
    triggerer_log = (LIVE_TARGET.home / "component-logs" / "triggerer.log").read_text()
    assert any(
        f"DAG {DAG_ID} version {v}: each start_from_trigger task goes to the runner alone" in triggerer_log
        for v in versions
    ), versions
    assert "a database round at most every 0.5 s" in triggerer_log  # its supervisor is paced
    # Each model's task emitted its model's asset as it succeeded in the triggerer (which registers
    # it: runtime/triggerer.py), not the build at its end.
    assert "asset events of the tasks that succeed in it" in triggerer_log
    assert asset_events_by_task(client, run) == {f"{m}_model_build": f"dbt://{DAG_ID}/{m}" for m in models}
    # The scheduler queued the build before it deferred the node tasks (runtime/scheduler_order.py):
    # the build was scheduled no later than the first node task started (deferred) in the triggerer.
    scheduler_log = (LIVE_TARGET.home / "component-logs" / "scheduler.log").read_text()
    assert scheduler_order.INSTALLED in scheduler_log
    build_scheduled = _ts(tis["dbt_producer_watcher"]["scheduled_when"])
    assert all(build_scheduled <= _ts(ti["start_date"]) for ti in nodes.values()), (build_scheduled, nodes)

    def downstream_run():
        _, runs = client.request("GET", "/dags/inventory_marts_report/dagRuns?limit=100")
        new = [r for r in runs.get("dag_runs", []) if r["dag_run_id"] not in known]
        return next((r for r in new if r["state"] in ("success", "failed")), None)

    downstream = wait_for(downstream_run, 120, "inventory_marts_report to run on the marts' assets")
    assert downstream["run_type"] == "asset_triggered"
    assert downstream["state"] == "success"


def asset_events_by_task(client, run: str) -> dict[str, str]:
    """The run's asset events: the task that emitted each, and its asset's URI (one per task)."""
    _, found = client.request("GET", f"/assets/events?source_dag_id={DAG_ID}&source_run_id={run}&limit=100")
    events = found.get("asset_events", [])
    by_task = {e["source_task_id"]: e["uri"] for e in events}
    assert len(by_task) == len(events), events
    return by_task


FLAKY_MODELS = {
    "needs_input.sql": "select id from {{ target.schema }}_ext.input\n",
    "after_input.sql": "select id * 2 as id from {{ ref('needs_input') }}\n",
    "independent.sql": "select 1 as id\n",
}


@pytest.fixture(scope="module")
def flaky_project(live_airflow, warehouse_module) -> str:
    """A project whose `needs_input` model fails until the table it reads exists."""
    from tests.harness import build_manifest

    root = LIVE_PROJECTS_DIR / FLAKY
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "dbt_project.yml").write_text(
        f"name: {FLAKY}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {FLAKY}\n"
        "models:\n  +materialized: table\n"
    )
    for name, body in FLAKY_MODELS.items():
        (root / "models" / name).write_text(body)
    (root / "models" / "_models.yml").write_text(
        "version: 2\nmodels:\n"
        + "".join(
            f"  - name: {Path(n).stem}\n    columns:\n      - name: id\n        data_tests: [not_null]\n"
            for n in FLAKY_MODELS
        )  # fmt: skip
    )
    (root / "platform.yml").write_text(f"schema: {FLAKY}\nschedule: none\n")
    build_manifest(root)
    with warehouse_module.cursor() as cur:
        cur.execute(f"drop schema if exists {FLAKY} cascade")
        cur.execute(f"drop schema if exists {FLAKY}_ext cascade")
    written = time.time()

    def parsed_since_written():
        # A DAG of that name may linger from an earlier session (stale): wait for a fresh parse.
        status, dag = live_airflow.request("GET", f"/dags/{FLAKY}")
        parsed = dag.get("last_parsed_time") if status == 200 else None
        fresh = parsed and _ts(parsed).timestamp() > written
        return fresh and not dag.get("is_stale")

    wait_for(parsed_since_written, 240, f"the dag-processor to parse {FLAKY}")
    return FLAKY


def test_a_failed_model_fails_downstream_then_retries_on_a_worker_once_fixed(
    client, flaky_project, warehouse
):
    run = run_id()
    status, body = client.trigger(flaky_project, run)
    assert status == 200, body

    def needs_input_failed_once():
        ti = task_instances(client, flaky_project, run).get("needs_input_model_build") or {}
        return (ti.get("state") == "up_for_retry" or (ti.get("try_number") or 0) >= 2) and ti

    wait_for(needs_input_failed_once, 240, "needs_input_model_build to fail its first try")
    # Nodes off the failed path are not affected (their results may land a poll later).
    wait_for(
        lambda: task_instances(client, flaky_project, run)["independent_model_build"]["state"] == "success",
        60,
        "independent_model_build to succeed",
    )
    tis = task_instances(client, flaky_project, run)
    assert tis["independent_model_build"]["try_number"] == 1
    assert tis["after_input_model_build"]["state"] in ("up_for_retry", "scheduled", "deferred", "failed")

    with warehouse.cursor() as cur:  # fix the cause: the input table appears
        cur.execute(f"create schema if not exists {flaky_project}_ext")
        cur.execute(f"create table if not exists {flaky_project}_ext.input as select 1 as id")

    final = client.wait_for_run(flaky_project, run, timeout=300)
    tis = task_instances(client, flaky_project, run)
    assert final["state"] == "success", {t: (ti["state"], ti["try_number"]) for t, ti in tis.items()}
    assert tis["needs_input_model_build"]["try_number"] >= 2 and tis["needs_input_model_build"]["hostname"], (
        "the retry ran dbt for that model on a worker"
    )
    assert (
        tis["after_input_model_build"]["state"] == "success"
        and tis["after_input_model_build"]["try_number"] >= 2
    )
    assert tis["independent_model_build"]["try_number"] == 1
    assert query(warehouse, f"select id from {flaky_project}.after_input") == [(2,)]


STALE = "stale_sources"


@pytest.fixture(scope="module")
def stale_project(live_airflow, warehouse_module) -> str:
    """Two loaded sources with a freshness: ``events`` 30 hours old (past error_after, one day),
    ``users`` 3 hours old (past warn_after only, one hour); a model reading each, one reading none."""
    from tests.harness import build_manifest

    root = LIVE_PROJECTS_DIR / STALE
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "dbt_project.yml").write_text(
        f"name: {STALE}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {STALE}\n"
        "models:\n  +materialized: table\n"
    )
    (root / "models" / "_loads__sources.yml").write_text(
        'version: 2\nsources:\n  - name: loads\n    schema: "{{ target.schema }}_raw"\n'
        "    loaded_at_field: loaded_at\n"
        "    freshness: {warn_after: {count: 1, period: hour}, error_after: {count: 1, period: day}}\n"
        "    tables: [{name: events}, {name: users}]\n"
    )
    for table in ("events", "users"):
        (root / "models" / f"stg_{table}.sql").write_text(
            f"select id from {{{{ source('loads', '{table}') }}}}\n"
        )
    (root / "models" / "calendar.sql").write_text("select 1 as day\n")
    (root / "platform.yml").write_text(f"schema: {STALE}\nschedule: none\n")
    build_manifest(root)
    with warehouse_module.cursor() as cur:
        cur.execute(f"drop schema if exists {STALE} cascade")
        cur.execute(f"drop schema if exists {STALE}_raw cascade")
        cur.execute(f"create schema {STALE}_raw")
        for table, hours in (("events", 30), ("users", 3)):
            cur.execute(
                f"create table {STALE}_raw.{table} as select 1 as id, now() - interval '{hours} hours' as loaded_at"
            )
    live_airflow.wait_for_dag(STALE, timeout=240)
    return STALE


def test_the_build_checks_source_freshness_first_and_leaves_out_what_reads_a_stale_source(
    client, stale_project, warehouse
):
    run = run_id()
    status, body = client.trigger(stale_project, run)
    assert status == 200, body

    final = client.wait_for_run(stale_project, run, timeout=300)
    tis = task_instances(client, stale_project, run)
    states = {t: (ti["state"], ti["try_number"]) for t, ti in tis.items()}
    assert final["state"] == "failed", states
    # Past error_after: the source's task fails in the triggerer, its retry on a worker checks again
    # and fails without a third try (stale data stays stale); the model reading it was not built.
    assert states["loads_events_source"] == ("failed", 2), states
    assert "retrying cannot help" in client.task_log(stale_project, run, "loads_events_source", 2)
    # The model reading it is left out of the build; its task fails (so does the run), and its
    # retries wait for the source's task and say why they do not run it.
    assert states["stg_events_model_build"][0] == "failed", states
    retried = client.task_log(
        stale_project, run, "stg_events_model_build", states["stg_events_model_build"][1]
    )
    assert "upstream task(s) ['loads_events_source'] failed" in retried
    assert query(warehouse, f"select to_regclass('{stale_project}.stg_events')") == [(None,)]
    # Past warn_after only: a warning, and its model is built; models reading no source are built.
    assert states["loads_users_source"] == ("success", 1), states
    assert "older than its warn_after" in client.task_log(stale_project, run, "loads_users_source", 1)
    assert states["stg_users_model_build"] == states["calendar_model_build"] == ("success", 1), states


def test_components_off_the_critical_path_yield_the_cpu_to_the_tasks(live_airflow):
    """The build runs in the scheduler's process tree (LocalExecutor); the dag-processor and the
    triggerer run at a lower priority, also between sessions (Linux autogroups), where a plain
    ``nice`` has no effect."""
    pids = {c: component_pid(STACK, LIVE_TARGET, c) for c in AIRFLOW_COMPONENTS}
    assert all(pids.values()), pids
    assert COMPONENT_NICENESS, "nothing is deprioritised"
    groups = set()
    for component, pid in pids.items():
        expected = COMPONENT_NICENESS.get(component, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == expected, component
        autogroup = Path(f"/proc/{pid}/autogroup")
        if autogroup.exists():  # "/autogroup-<id> nice <n>"
            group, _, nice = autogroup.read_text().split()
            assert int(nice) == expected, (component, group, nice)
            groups.add(group)
    if groups:  # each component leads its own session, hence its own group
        assert len(groups) == len(pids)


def _parent(pid: int | str) -> int:
    """The parent of ``pid``, from ``/proc/<pid>/stat`` (after the command name, which may hold spaces)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _descendants(roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = _parent(stat.parent.name)
        except OSError:
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def _in_git(pid: int) -> bool:
    """Whether ``pid`` is a git process (``git ...``, ``git-remote-http``) or runs under one: the
    credential helper git starts (``sh -c .../credential-helper.sh get`` and its ``cat``) is git's own
    credential process and inherits the credential git was handed."""
    while pid > 1:
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            pid = _parent(pid)
        except (OSError, IndexError, ValueError):
            return False
        if Path(program).name in {"git", "git-remote-http", "git-remote-https"}:
            return True
    return False


def test_no_process_of_the_stack_holds_a_secret_in_its_environment(client):
    """Every Airflow component and every task process (the build's dbt among them) runs with no
    password, DSN, key or token in its environment: they are in OpenBao or in files only the stack's
    user can read. The one exception is git's own credential: a git process (cloning the
    registered-projects bundle) and the credential helper it starts are handed the git server's
    password by their parent, as a credential helper reads it, and nothing else gets it."""
    import json

    from devstack.git_server import git_password
    from devstack.openbao import init_file, token_file
    from devstack.settings import STACK_ROLES, airflow_password, pg_password, role_password, stored_secret
    from tests.harness import secrets_admin

    bao = json.loads(init_file(STACK).read_text())
    secrets = {
        "the PostgreSQL superuser's password": pg_password(STACK),
        "Airflow's admin password": airflow_password(STACK),
        "Airflow's viewer password": stored_secret(STACK, "airflow_viewer_password"),
        "the API's JWT secret": stored_secret(STACK, "jwt_secret"),
        **{f"role {role}'s password": role_password(STACK, role) for role, _ in STACK_ROLES.values()},
        "OpenBao's root token": bao["root_token"],
        "OpenBao's unseal key": bao["unseal_key"],
        "Airflow's OpenBao token": token_file(STACK, LIVE_TARGET.secrets_mount).read_text().strip(),
        "the sagas' OpenBao token": secrets_admin().entry("platform_secrets")["password"],
        "the git server's password": git_password(STACK),
    }
    # The one credential a transformation's dbt needs: its own connection's, which Cosmos hands to
    # dbt's profile as COSMOS_CONN_* variables. Anywhere else it is a leak too.
    own = role_password(STACK, "warehouse")
    roots = [component_pid(STACK, LIVE_TARGET, c) for c in AIRFLOW_COMPONENTS]
    assert all(roots), roots
    idle = _descendants(roots)
    run = run_id()
    status, body = client.trigger(DAG_ID, run)
    assert status == 200, body
    seen: dict[int, str] = {}
    under_git: dict[int, bool] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for pid in _descendants(roots):
            if pid not in seen:
                under_git[pid] = _in_git(pid)
                try:
                    seen[pid] = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                    seen[pid] += "\0cmdline=" + Path(f"/proc/{pid}/cmdline").read_bytes().decode(
                        errors="replace"
                    )
                except OSError:
                    continue
        _, state = client.request("GET", f"/dags/{DAG_ID}/dagRuns/{run}")
        if state.get("state") in ("success", "failed"):
            break
        time.sleep(0.3)
    assert state["state"] == "success"
    assert set(seen) - idle, "the run's task processes were seen"
    for pid, env in seen.items():
        items = [item.split("=", 1) for item in env.split("\0") if "=" in item]
        assert not [n for n, _ in items if n.startswith("AIRFLOW_CONN_")], (pid, [n for n, _ in items])
        leaks = [
            (name, what)
            for name, value in items
            for what, secret in secrets.items()
            if secret in value
            and not (name.startswith("COSMOS_CONN_") and secret == own)
            and not (what == "the git server's password" and under_git[pid])
        ]
        assert not leaks, f"pid {pid} ({env.split('cmdline=')[-1][:80]!r}) holds {leaks}"


def restart_triggerer(extra_env: dict[str, str]) -> None:
    """Stop the live triggerer (SIGTERM: it gives up its triggers) and start it with ``extra_env``."""
    import signal

    from devstack.airflow import start_airflow, wait_healthy
    from tests.scheduler.live import LIVE_ENV

    pid = component_pid(STACK, LIVE_TARGET, "triggerer")
    if pid:
        os.killpg(pid, signal.SIGTERM)
        wait_for(
            lambda: component_pid(STACK, LIVE_TARGET, "triggerer") is None,
            60,
            lambda: "the triggerer to stop",
        )
    start_airflow(STACK, LIVE_TARGET, components=("triggerer",), extra_env={**LIVE_ENV, **extra_env})
    wait_healthy(STACK, LIVE_TARGET)


def test_a_triggerer_without_the_patch_still_runs_every_node(client, warehouse):
    """What a deployment gets where the patch's guard refuses (another Airflow) or it is switched
    off: the stock triggerer, slower on big DAGs; every node still runs, the models' tasks end on a
    worker so that Airflow registers their asset events, the others in the triggerer."""
    log = LIVE_TARGET.home / "component-logs" / "triggerer.log"
    start = log.stat().st_size
    restart_triggerer({"DBT_PLATFORM_TRIGGERER_PATCH": "off"})
    try:
        run = run_id()
        status, body = client.trigger(DAG_ID, run)
        assert status == 200, body
        assert client.wait_for_run(DAG_ID, run, timeout=300)["state"] == "success"
        nodes = {
            t: ti for t, ti in task_instances(client, DAG_ID, run).items() if t != "dbt_producer_watcher"
        }
        assert nodes and all(ti["state"] == "success" for ti in nodes.values()), nodes
        # A stock triggerer registers no asset events: the models' tasks (which carry their assets:
        # the DAG's outlets never depend on the switch) ended on a worker, where Airflow registers
        # them; the seeds' tasks, which carry none, ended in the triggerer.
        on_worker = {t for t, ti in nodes.items() if ti["hostname"]}
        assert on_worker == {t for t in nodes if t.endswith("_model_build")}, nodes
        models = ("stg_users", "stg_applications", "fct_users", "fct_applications")
        assert asset_events_by_task(client, run) == {
            f"{m}_model_build": f"dbt://{DAG_ID}/{m}" for m in models
        }
        since = log.read_text()[start:]
        assert "Triggerer runs stock" in since
        assert "goes to the runner alone" not in since
    finally:
        restart_triggerer({})
