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
            env={**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'plugins'}:{REPO_ROOT}", "TMPDIR": tmp, **env},
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
