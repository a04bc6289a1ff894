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

The warm-up also switches on dbt's in-process caches of parsed Jinja (``dbt_common.tests``'
``enable_test_caching``, which dbt's own functional tests switch on for every invocation they run in
one process): keyed by the source text, they keep the parsed templates of the macros of dbt and its
adapter, which every parse parses again and which are ~85% of a new project's parse (profiled with
py-spy). Tasks forked after the warm-up find them filled: the scaffold's ``dbt parse`` took 0.5 s
instead of 2.1 s here. A task's own templates are cached in the task's process only, gone when it
ends. :data:`DBT_CACHES` names the internals this relies on; a test pins them.

Every task process also parses its DAG file first: for the platform's own DAGs that is mostly
importing the modules the file imports (0.15 s of a saga step's 0.5 s here, against 0.01 s once they
are loaded). So :func:`install` then imports what the DAG files of the DAGs folder import
(:func:`preload_dag_imports`, as the dag-processor's ``parsing_pre_import_modules`` does for its own
parsing processes, not limited to Airflow's modules).

Cost: the scheduler (with LocalExecutor) and each Celery worker start ~5 s later and hold dbt in
memory (shared copy-on-write with the processes forked from them). No thread is left running; dbt's
parse starts the ``multiprocessing`` resource tracker (a helper process dbt would start in every
task anyway). Switched off with ``DBT_PLATFORM_WARM_DBT=off``; any error during the warm-up is one
warning and the process starts as usual (tasks then start cold).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

from include.dbt_platform.runtime import airflow_command, switched_off

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


# dbt's switch and the caches it fills (a test checks each one exists and is filled by a parse).
DBT_CACHES = (
    ("dbt_common.tests", "enable_test_caching"),
    ("dbt_common.clients.jinja", "_TESTING_PARSE_CACHE"),
    ("dbt_common.clients.jinja", "_TESTING_BLOCKS_CACHE"),
    ("dbt.clients.jinja_static", "_TESTING_MACRO_CACHE"),
)


def enable_dbt_parse_caches() -> bool:
    """Switch on dbt's caches of parsed Jinja in this process (and the processes forked from it);
    False where this dbt lacks them (the warm-up then parses as before)."""
    import importlib

    try:
        for module, name in DBT_CACHES:
            getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        log.warning("dbt platform: dbt's parse caches not found (%r): each parse starts from scratch", err)
        return False
    from dbt_common.tests import enable_test_caching

    enable_test_caching()
    return True


def dag_file_imports(folder: Path) -> list[str]:
    """The modules the DAG files in ``folder`` import at their top level (absolute imports), in
    order, each once. The DAG files are those the dag-processor parses (Airflow's own discovery:
    ``.airflowignore``, safe mode's heuristic); a file that does not parse is skipped (the
    dag-processor reports it)."""
    import ast

    from airflow.utils.file import list_py_file_paths

    found: dict[str, None] = {}
    for path in sorted(map(Path, list_py_file_paths(folder))) if folder.is_dir() else ():
        try:
            tree = ast.parse(path.read_text(), str(path))
        except (OSError, SyntaxError, ValueError):  # a zipped DAG file is not text: skipped
            continue
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.setdefault(node.module)
            elif isinstance(node, ast.Import):
                found.update(dict.fromkeys(alias.name for alias in node.names))
    return list(found)


def preload_dag_imports(folder: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Import what the DAG files of ``folder`` (default: Airflow's DAGs folder) import; returns the
    modules imported and, by module, why one could not be (the task that needs it then fails
    importing it, as it would have anyway)."""
    import importlib

    if folder is None:
        from airflow.configuration import conf

        folder = Path(conf.get("core", "dags_folder"))
    loaded, failed = [], {}
    for module in dag_file_imports(folder):
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - reported by the task that imports it
            failed[module] = repr(err)
        else:
            loaded.append(module)
    return loaded, failed


def warm() -> float:
    """Import dbt and parse a throwaway copy of the scaffold in this process, then import what every
    task imports (:data:`PRELOADED`) and what the DAG files import; seconds it took."""
    import importlib

    from include.dbt_platform.config import get_settings
    from include.dbt_platform.project_creation.scaffold import scaffold
    from include.dbt_platform.transformations import dbt
    from include.dbt_platform.transformations.projects import DbtProjectError, load_project

    started = time.monotonic()
    enable_dbt_parse_caches()
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
    _, failed = preload_dag_imports()
    for module, error in failed.items():
        log.debug("dbt platform: %s not preloaded: %s", module, error)
    return time.monotonic() - started


_attempted = False  # inherited by forked processes: a task never warms up again


def install(argv: list[str] | None = None, executor: str | None = None) -> str:
    """Called by ``airflow_local_settings`` in every Airflow process, and again wherever Airflow's
    plugin manager executes the plugins folder's files (in every task process, forked from a process
    that has already tried: then nothing happens). Returns what it did."""
    global _attempted
    if _attempted:
        return "already tried in this process or its parent"
    if switched_off(SWITCH):
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
