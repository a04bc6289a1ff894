"""dbt loaded once, in the Airflow processes that fork task processes: installed by
``airflow_local_settings``.

Every task that runs dbt in process (the manifest build of ``register_transformations``, a
transformation DAG's build, ``warehouse_setup``) starts cold: it imports dbt, its adapter and their
dependencies (1.5-1.7 s here), and its first invocation builds what dbt caches for the process
(the JSON schemas of its contracts, the adapter plugin, ~1 s more). Measured on this 2-core machine,
``dbt parse`` of a new project's scaffold takes 3.6 s in a fresh process, 0.9 s in a process forked
after one earlier parse.

On Linux, Airflow 3 starts every task process with a bare ``os.fork()`` of the process that
supervises it: a LocalExecutor worker (forked from the scheduler when the executor starts) or a
Celery pool process (forked from ``airflow celery worker``). So :func:`install` parses a throwaway
copy of the scaffold once, in those parent processes only, at start-up: every task forked from them
begins with dbt imported and warm. Nothing of the warm-up's project stays (a temporary folder),
and its profile never connects (:func:`~include.dbt_platform.transformations.dbt.parse_profile`).

Cost: the scheduler (with LocalExecutor) and each Celery worker start ~4 s later and hold dbt in
memory (shared copy-on-write with the processes forked from them). No thread is left running; dbt's
parse starts the ``multiprocessing`` resource tracker (a helper process dbt would start in every
task anyway). Switched off with ``DBT_PLATFORM_WARM_DBT=off``; any error during the warm-up is one
warning and the process starts as usual (tasks then start cold).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from include.dbt_platform.runtime import airflow_command

log = logging.getLogger(__name__)
SWITCH = "DBT_PLATFORM_WARM_DBT"
WARMUP_PROJECT = "platform_warmup"


def forks_task_processes(argv: list[str] | None = None, executor: str | None = None) -> bool:
    """This process is ``airflow celery worker``, or ``airflow scheduler`` with a LocalExecutor
    (the ``airflow`` console script or ``python -m airflow``)."""
    command = airflow_command(argv)
    if command[:2] == ["celery", "worker"]:
        return True
    if command[:1] != ["scheduler"]:
        return False
    if executor is None:
        from airflow.configuration import conf

        executor = conf.get("core", "executor", fallback="")
    return "LocalExecutor" in executor


# What every task process imports after the fork, whatever it runs (measured with a probe task that
# listed the modules it had that its LocalExecutor worker had not): the git DAG bundle's module and
# GitPython (the task runner loads every configured bundle: ``registered_projects`` is a
# GitDagBundle) and the PythonOperator. ~0.15 s of every task on this machine; imported once here.
PRELOADED = ("airflow.providers.git.bundles.git", "airflow.providers.standard.operators.python")


def warm() -> float:
    """Import dbt and parse a throwaway copy of the scaffold in this process, then import what every
    task imports (:data:`PRELOADED`); seconds it took."""
    import importlib

    from include.dbt_platform.config import get_settings
    from include.dbt_platform.project_creation.scaffold import scaffold
    from include.dbt_platform.transformations import dbt
    from include.dbt_platform.transformations.projects import DbtProjectError, load_project

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dbt-platform-warmup-") as folder:
        path = Path(folder, WARMUP_PROJECT)
        for name, text in scaffold(WARMUP_PROJECT, "dbt-platform", "").items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        project = load_project(path, get_settings())
        with dbt.parse_profile(project) as profile:
            outcome = dbt.run(project, ["parse", "--no-partial-parse", "--quiet", "--log-level-file", "none"],
                              profile, log_path=Path(folder, "logs"))  # fmt: skip
        if not outcome.success:
            raise DbtProjectError(f"dbt parse of the warm-up project failed: {outcome.error}")
    for module in PRELOADED:
        importlib.import_module(module)
    return time.monotonic() - started


_attempted = False  # inherited by forked processes: a task never warms up again


def install(argv: list[str] | None = None, executor: str | None = None) -> str:
    """Called by ``airflow_local_settings`` in every Airflow process, and again wherever Airflow's
    plugin manager executes the plugins folder's files (in every task process, forked from a process
    that has already tried: then nothing happens). Returns what it did."""
    global _attempted
    if _attempted:
        return "already tried in this process or its parent"
    if os.environ.get(SWITCH, "on").strip().lower() in {"off", "false", "0"}:
        return "switched off"
    try:
        if not forks_task_processes(argv, executor):
            return "not a process that forks tasks"
        _attempted = True
        seconds = warm()
    except Exception as err:  # never keep the component from starting
        log.warning("dbt platform: dbt not preloaded, tasks start it cold: %r", err)
        return f"failed: {err!r}"
    message = f"dbt platform: dbt preloaded for the task processes forked from here ({seconds:.1f} s)"
    if logging.getLogger().handlers:
        log.info(message)
    else:  # Airflow configures its logging after importing its local settings: say it on stderr
        print(message, file=sys.stderr, flush=True)
    return "warm"
