"""dbt is loaded once in the Airflow processes that fork task processes, through
``airflow_local_settings`` as Airflow imports it; a task forked from there runs dbt as usual.

Each case runs a fresh interpreter that does what the component's start does (Airflow's settings
import ``plugins/airflow_local_settings.py`` as ``import airflow`` runs). That the stack's own
scheduler is warm is checked on the live stack (tests/scheduler/test_saga_on_scheduler.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.runtime import warm_dbt

CHECK = """
import os, sys, tempfile, threading
sys.argv = {argv!r}
import logging; logging.basicConfig(level=logging.INFO)
import airflow, airflow_local_settings
assert airflow_local_settings.__file__.endswith('plugins/airflow_local_settings.py')
print('threads', threading.active_count())
print('leftovers', [n for n in os.listdir(tempfile.gettempdir()) if n.startswith('dbt-platform-warmup-')])
print('warm' if 'dbt.cli.main' in sys.modules and 'dbt.adapters.postgres' in sys.modules else 'cold')
from include.dbt_platform.runtime.warm_dbt import PRELOADED
print('preloaded', [m for m in PRELOADED if m in sys.modules])
# What the saga DAGs' files import (dags/project_create.py ...): a saga step's task parses it first.
SAGA_MODULES = ['include.dbt_platform.project_creation.definition', 'include.dbt_platform.saga.tasks',
                'include.dbt_platform.project_lifecycle.decommission']
print('dag_imports', [m for m in SAGA_MODULES if m in sys.modules])
from dbt_common.tests import test_caching_enabled
from include.dbt_platform.runtime.warm_dbt import DBT_CACHES
print('dbt_caches', test_caching_enabled(), [
    len(getattr(sys.modules[module], name)) > 0 for module, name in DBT_CACHES if name.startswith('_TESTING')])
"""

# A task forked from the warmed process: dbt parses a project there (what register_transformations does).
FORKED_TASK = """
import os, pathlib, tempfile
from include.dbt_platform.project_creation.scaffold import scaffold
from include.dbt_platform.transformations import dbt as platform_dbt
from include.dbt_platform.transformations.projects import load_project
from include.dbt_platform.runtime import warm_dbt
pid = os.fork()
if pid == 0:
    # Airflow's plugin manager executes airflow_local_settings.py again in the task: no second warm-up.
    if not warm_dbt.install().startswith('already tried'):
        os._exit(2)
    folder = pathlib.Path(tempfile.mkdtemp(), 'forked_task')
    for name, text in scaffold('forked_task', 'alice', '').items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    project = load_project(folder)
    with platform_dbt.parse_profile(project) as profile:
        outcome = platform_dbt.run(project, ['parse', '--no-partial-parse', '--quiet'], profile)
    ok = outcome.success and (folder / 'target' / 'manifest.json').exists()
    os._exit(0 if ok else 1)
_, status = os.waitpid(pid, 0)
print('forked_task', 'parsed' if os.waitstatus_to_exitcode(status) == 0 else 'failed')
"""


def run_component(argv: list[str], env: dict[str, str], extra: str = "") -> subprocess.CompletedProcess:
    """The component's start, in a fresh interpreter with a temporary folder of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", CHECK.format(argv=argv) + extra],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}", "TMPDIR": tmp,
                 "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"), **env},
        )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def lines(out: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split(" ", 1) if " " in line else (line, "") for line in out.stdout.splitlines())


def test_a_local_executor_scheduler_preloads_dbt_and_its_forked_tasks_run_dbt():
    out = run_component(
        ["airflow", "scheduler", "--skip-serve-logs"],
        {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"},
        FORKED_TASK,
    )
    seen = lines(out)
    assert "warm" in seen, out.stdout + out.stderr[-2000:]
    assert "dbt preloaded for the task processes forked from here" in out.stderr
    assert seen["preloaded"] == repr(list(warm_dbt.PRELOADED)), "what every task imports is loaded too"
    assert len(eval(seen["dag_imports"])) == 3, "and what the DAG files import"
    assert seen["dbt_caches"] == "True [True, True, True]", "dbt's parse caches are on and filled"
    # Forking is safe: the warm-up leaves no thread running, and nothing of its project behind.
    assert seen["threads"] == "1"
    assert seen["leftovers"] == "[]"
    assert seen["forked_task"] == "parsed"


def test_a_celery_worker_preloads_dbt():
    out = run_component(["airflow", "celery", "worker"], {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"})
    assert "warm" in lines(out), out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize(
    "argv, executor, env, expected",
    [
        (["/venv/bin/airflow", "celery", "worker"], "CeleryExecutor", {}, "warm"),
        (["airflow", "scheduler", "--skip-serve-logs"], "LocalExecutor", {}, "warm"),
        (["/x/airflow/__main__.py", "scheduler"], "LocalExecutor", {}, "warm"),  # python -m airflow
        # With Celery the scheduler runs no task: it stays as it is.
        (["airflow", "scheduler"], "CeleryExecutor", {}, "not a process that forks tasks"),
        (["airflow", "api-server"], "LocalExecutor", {}, "not a process that forks tasks"),
        (["airflow", "dag-processor"], "LocalExecutor", {}, "not a process that forks tasks"),
        (["airflow", "triggerer"], "LocalExecutor", {}, "not a process that forks tasks"),
        (["airflow", "celery", "flower"], "CeleryExecutor", {}, "not a process that forks tasks"),
        (["pytest"], "LocalExecutor", {}, "not a process that forks tasks"),
        (["airflow", "scheduler"], "LocalExecutor", {"DBT_PLATFORM_WARM_DBT": "off"}, "switched off"),
    ],
)
def test_only_the_processes_that_fork_tasks_preload_dbt(argv, executor, env, expected, monkeypatch):
    """Which processes warm up (the warm-up itself is the cases above and below, in their own
    interpreters): decided from the command line and the executor, as Airflow's components start."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if expected == "warm":
        assert warm_dbt.forks_task_processes(argv, executor)
    else:
        assert warm_dbt.install(argv, executor) == expected


# The same project parsed without dbt's parse caches, then after the warm-up (caches on and filled by
# another project, as in a forked task), then again (its own templates cached): the same manifest.
SAME_MANIFEST = """
import json, shutil, sys, tempfile
from pathlib import Path
from include.dbt_platform.transformations import dbt
from include.dbt_platform.transformations.projects import load_project
from include.dbt_platform.runtime import warm_dbt
from dbt_common.tests import test_caching_enabled

VARYING = {"created_at", "generated_at", "invocation_id", "invocation_started_at", "run_started_at"}

def manifest(src):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, src.name)
        shutil.copytree(src, path, ignore=shutil.ignore_patterns("target", "logs"))
        project = load_project(path)
        with dbt.parse_profile(project) as profile:
            outcome = dbt.run(project, ["parse", "--no-partial-parse", "--quiet"], profile,
                              log_path=Path(folder, "logs"))
        assert outcome.success, outcome.error
        text = (path / "target" / "manifest.json").read_text().replace(str(path), "<project>")
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in VARYING}
        return [strip(v) for v in o] if isinstance(o, list) else o
    return strip(json.loads(text))

src = Path(sys.argv[1])
cold = manifest(src)
assert not test_caching_enabled()
warm_dbt.warm()
assert test_caching_enabled()
first, second = manifest(src), manifest(src)
print("macros", len(cold["macros"]), "nodes", len(cold["nodes"]))
print("same" if cold == first == second else "different")
"""


@pytest.mark.parametrize("project", ["inventory_transforms", "a new project's scaffold"])
def test_dbts_parse_caches_change_nothing_in_a_manifest(project, tmp_path):
    if project == "inventory_transforms":
        source = REPO_ROOT / "dbt_projects" / project
    else:  # what register_transformations parses
        from include.dbt_platform.project_creation.scaffold import scaffold

        source = tmp_path / "sales_mart"
        for name, text in scaffold("sales_mart", "alice@example.com", "Sales").items():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_text(text)
    out = subprocess.run(
        [sys.executable, "-c", SAME_MANIFEST, str(source)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "same", out.stdout
    counts = next(line.split() for line in out.stdout.splitlines() if line.startswith("macros "))
    assert int(counts[1]) > 400, "dbt's and the adapter's macros are in the manifest"


def test_the_dag_files_imports_are_found_and_one_that_fails_is_skipped(tmp_path):
    (tmp_path / "saga_dag.py").write_text(
        '"""An Airflow DAG."""\nimport json\nfrom email.mime import text\n'
        "from .relative import nothing  # not absolute: skipped\n"
        "from no_such_module_anywhere import x\n"
        "def f():\n    import csv  # not top level: skipped\n"
    )
    (tmp_path / "helper.py").write_text("import wave\n")  # no 'dag' and 'airflow' in it: not a DAG file
    (tmp_path / "ignored_dag.py").write_text("# airflow dag\nimport csv\n")
    (tmp_path / ".airflowignore").write_text("ignored_dag.py\n")  # the dag-processor skips it too
    (tmp_path / "broken_dag.py").write_text("# airflow dag\nimport (\n")  # the dag-processor reports it
    sub = tmp_path / "team"
    sub.mkdir()
    (sub / "other_dag.py").write_text("# airflow dag\nimport json, zipfile\n")
    assert warm_dbt.dag_file_imports(tmp_path) == [
        "json", "email.mime", "no_such_module_anywhere", "zipfile",
    ]  # fmt: skip
    loaded, failed = warm_dbt.preload_dag_imports(tmp_path)
    assert loaded == ["json", "email.mime", "zipfile"]
    assert list(failed) == ["no_such_module_anywhere"]
    assert "ModuleNotFoundError" in failed["no_such_module_anywhere"]
    assert warm_dbt.dag_file_imports(tmp_path / "missing") == []


def test_a_failing_warm_up_is_one_warning_and_the_scheduler_starts_and_runs_dbt_cold():
    # dbt cannot write its target folder: the warm-up's parse fails, for real.
    out = run_component(
        ["airflow", "scheduler"],
        {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "DBT_TARGET_PATH": "/proc/no-such-folder"},
        "os.environ.pop('DBT_TARGET_PATH')\n" + FORKED_TASK,
    )
    warnings = [line for line in out.stderr.splitlines() if "dbt not preloaded" in line]
    assert len(warnings) == 1, out.stderr[-2000:]
    assert "/proc/no-such-folder" in warnings[0]
    assert lines(out)["forked_task"] == "parsed"
