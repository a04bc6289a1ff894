"""What every test tier shares: the test stack's settings and environment, and small helpers.

Importing this module sets the environment the tests run with (before anything imports Airflow):
their own databases (``*_test``) and Airflow home under ``.local/test``, so they never touch the
stack that ``make run`` started. Nothing here starts a server: the integration and scheduler tiers
ask for the ``database`` fixture (root conftest), the unit tier never does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devstack.airflow import airflow_env, isolated_target, write_airflow_config
from devstack.distributed import profile
from devstack.settings import admin_dsn, get_stack_settings, role_dsn
from include.dbt_platform.config import REPO_ROOT

STACK = get_stack_settings()
TEST_ROOT = STACK.local_dir / "test"
# The tests' own target (API on +100). `make chaos` and `make bench-saga` read their own stacks
# through the same helpers (the leak inventory of tests/saga_support.py): DBT_PLATFORM_TEST_TARGET
# names their profile (devstack/distributed.py).
_PROFILE = os.environ.get("DBT_PLATFORM_TEST_TARGET", "test")
TARGET = (
    isolated_target(STACK, "test", port_offset=100) if _PROFILE == "test" else profile(STACK, _PROFILE).target
)
TEST_ENV = {
    **airflow_env(STACK, TARGET),
    "SAGA_FAULT_INJECTION": "1",
    "DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS": "1",
    # dag.test() runs tasks one by one in this process: no triggerer, so the in-process tests use
    # Cosmos LOCAL; the triggerer mode is tested on the real scheduler (tests/scheduler).
    "DBT_PLATFORM_EXECUTION_MODE": "local",
    # dag.test() runs one saga at a time; the per-requester gate is tested on its own (a run left
    # holding a turn by an aborted session must not make the next session wait).
    "DBT_PLATFORM_SAGAS_PER_REQUESTER": "0",
}
os.environ.update(TEST_ENV)
# Airflow reads airflow.cfg (the metadata database's DSN) when it is first imported: write it now.
write_airflow_config(STACK, TARGET)


def admin(database: str = "postgres") -> str:
    """The superuser's DSN: for setting up and inspecting, never what the code under test runs as."""
    return admin_dsn(STACK, database)


def warehouse_dsn() -> str:
    """The warehouse as the role the bundled projects' dbt runs as (it owns the warehouse database)."""
    return role_dsn(STACK, TARGET.warehouse_db)


def secrets_admin():
    """The test target's connections in OpenBao, read with the administrator's token (inspecting)."""
    from devstack.openbao import root_client
    from include.dbt_platform.adapters.secrets import VaultConnectionStore

    return VaultConnectionStore(root_client(STACK), TARGET.secrets_mount)


def git_admin():
    """The test target's org on the git server (the platform's credentials)."""
    from devstack.git_server import git_password
    from include.dbt_platform.adapters.git import LoopbackGitServer

    return LoopbackGitServer(f"{STACK.git_url}/{TARGET.git_org}", "dbt-platform", git_password(STACK))


def registered_dagbag(folder: Path):
    """The registered-projects bundle at its newest commit, checked out into ``folder`` and loaded
    like the dag-processor does (its DAG files and projects)."""
    from airflow.dag_processing.dagbag import DagBag

    from include.dbt_platform.adapters import git
    from include.dbt_platform.transformations import bundle

    shutil.rmtree(folder, ignore_errors=True)
    git.fetch(bundle.url(git_admin()), git_admin(), folder)
    return DagBag(dag_folder=str(folder))


def wait_for(predicate, timeout: float, what):
    """Poll ``predicate`` every second until it returns something truthy; return that.

    ``what`` names what is awaited in the failure message (a callable is asked at that time).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (the patch changes Airflow's classes); it must succeed."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def run_as_airflow_command(argv: list[str], version: str | None, probe: str, env=None) -> list[str]:
    """What ``airflow <component>`` does, in a fresh interpreter: Airflow's settings import
    ``airflow_local_settings`` (the plugins folder's, on sys.path) as ``import airflow`` runs; the CLI
    imports the component's job runner afterwards (``probe``: that import and a ``print``).
    ``version`` pretends another Airflow. Returns the last line printed and all the output."""
    code = (
        f"import sys; sys.argv = {argv!r}\n"
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "import airflow, airflow_local_settings\n"
        "assert airflow_local_settings.__file__.endswith('plugins/airflow_local_settings.py')\n"
        + (f"airflow.__version__ = {version!r}\n" if version else "")
        + probe
    )
    out = run_python(code, env)
    return [out.stdout.strip().splitlines()[-1], out.stdout + out.stderr]


def query(conn, sql: str, params=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def copy_project(name: str, dest_root: Path, schema: str) -> Path:
    """Copy a shipped dbt project (without build artefacts) and point it at its own schema."""
    dest = dest_root / name
    shutil.copytree(REPO_ROOT / "dbt_projects" / name, dest, ignore=shutil.ignore_patterns("target", "logs"))
    (dest / "platform.yml").write_text(f"schema: {schema}\n")
    return dest


def build_manifest(project_dir: Path) -> None:
    from include.dbt_platform.transformations.manifests import build_manifest as build

    build(project_dir)


def run_dag_test(dag):
    """Run a DAG in-process with ``dag.test()`` and return the DagRun and its task states."""
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    return run, states


def _all_lineage_events() -> list[dict]:
    import json

    from devstack.observability import lineage_file

    path = lineage_file(TARGET)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _dag_run_facet(event: dict) -> dict:
    facets = event["run"].get("facets") or {}
    return (facets.get("airflow") or facets.get("airflowDagRun") or {}).get("dagRun") or {}


def dag_run_lineage(dag_id: str, run_id: str) -> tuple[list[str], list[str]]:
    """The event types of one DAG run's own OpenLineage events (job: the DAG), and the job names of
    every task event that names the run (job: ``<dag_id>.<task_id>``)."""
    events = [e for e in _all_lineage_events() if _dag_run_facet(e).get("run_id") == run_id]
    return (
        [e["eventType"] for e in events if e["job"]["name"] == dag_id],
        [e["job"]["name"] for e in events if e["job"]["name"].startswith(f"{dag_id}.")],
    )


def lineage_events(dag_id: str, run_id: str) -> list[dict]:
    """The OpenLineage events of one DAG run in the stack's lineage file (the provider's file
    transport): the run's own and its tasks', found through the parent run the provider gives them."""
    events = _all_lineage_events()

    def parent_of(event: dict) -> str | None:
        return ((event["run"].get("facets") or {}).get("parent") or {}).get("run", {}).get("runId")

    runs = {
        parent_of(e)
        for e in events
        if _dag_run_facet(e).get("run_id") == run_id and e["job"]["name"].startswith(f"{dag_id}.")
    }
    return [e for e in events if parent_of(e) in runs - {None}]


def assert_model_lineage(events: list[dict], dag_id: str, models: dict[str, str]) -> None:
    """Each model (name -> its task id) has a START and a COMPLETE event as its task's job, the
    COMPLETE naming the model's table as its output and what it reads as inputs."""
    for model, task_id in models.items():
        mine = [e for e in events if e["job"]["name"] == f"{dag_id}.{task_id}"]
        kinds = [e["eventType"] for e in mine]
        assert kinds.count("START") == 1 and kinds.count("COMPLETE") == 1, (model, kinds)
        (complete,) = [e for e in mine if e["eventType"] == "COMPLETE"]
        outputs = [o["name"] for o in complete["outputs"]]
        assert [o.rsplit(".", 1)[-1] for o in outputs] == [model], (model, outputs)
        assert complete["inputs"], f"{model}: what it reads"
        assert all(o["namespace"].startswith("postgres://127.0.0.1:") for o in complete["outputs"])


def assert_run_trace(dag_id: str, run_id: str, models: list[str]) -> list[dict]:
    """A transformation run is one trace in the platform's trace file: the run's root span, a span per
    dbt invocation of its tasks under it, and a span per model dbt ran under its invocation."""
    from include.dbt_platform.config import get_settings
    from include.dbt_platform.observability.ids import hex_trace_id
    from include.dbt_platform.observability.tracing import read_spans
    from include.dbt_platform.transformations.tracing import run_ids

    trace_id, root_id = run_ids(dag_id, run_id)
    spans = [s for s in read_spans(get_settings().trace_file) if s["traceId"] == hex_trace_id(trace_id)]
    (root,) = [s for s in spans if "parentSpanId" not in s]
    assert root["name"] == f"dbt {dag_id}" and root["attributes"]["airflow.run_id"] == run_id
    invocations = {s["spanId"]: s for s in spans if s.get("parentSpanId") == root["spanId"]}
    assert invocations and all(s["name"].startswith("dbt ") for s in invocations.values()), spans
    for model in models:
        (span,) = [s for s in spans if s["name"] == f"model {model}"]
        assert span["parentSpanId"] in invocations, (model, span)
        assert span["attributes"]["dbt.node.status"] == "success"
    return spans
