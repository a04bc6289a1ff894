"""What runs inside Airflow's own processes rather than in tasks.

    triggerer.py  a patch of Airflow's triggerer: each start-from-trigger task sent to its runner
                  alone, logs read while sending; a stock ``airflow triggerer`` installs it through
                  ``plugins/airflow_local_settings.py``
    scheduler_wakeup.py  the scheduler's idle sleep ends when a task ends (a PostgreSQL
                  notification), installed the same way
    scheduler_order.py  the scheduler queues a run's worker tasks before it defers its
                  trigger-started ones, installed the same way
    execution_api.py  the API server builds the Task Execution API's routes as it starts, not on
                  the first task's call (which waited 7-9 s for them), installed the same way
    warm_dbt.py   dbt loaded once in the processes that fork task processes (the LocalExecutor
                  scheduler, Celery workers), installed the same way
    roles.py      the platform's Airflow roles and the stack's users
    dag_cut.py    the per-version DAG cache and the one-task cut it sends

It imports Airflow only (and dbt, in ``warm_dbt``, in the processes it warms).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

# Set in the triggerer by its patch (triggerer.install_outlet_registration) when it registers the asset
# events of the tasks that succeed in it; its trigger runner, forked from it, reads it.
TRIGGERER_REGISTERS_OUTLETS = False


def airflow_command(argv: list[str] | None = None) -> list[str]:
    """The arguments after ``airflow`` if this process is Airflow's command line (the ``airflow``
    console script or ``python -m airflow``), e.g. ``["triggerer", "--skip-serve-logs"]``; else []."""
    args = sys.argv if argv is None else argv
    if len(args) < 2 or os.path.basename(args[0]) not in {"airflow", "__main__.py", "-m"}:
        return []
    return list(args[1:])


class PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``module`` is imported, wraps its loader so that ``then`` runs right
    after the module has executed (the triggerer and the scheduler import their job runners after
    Airflow's settings)."""

    def __init__(self, module: str, then) -> None:
        self.module, self.then = module, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute, then = spec.loader.exec_module, self.then

        def exec_module(module) -> None:
            execute(module)
            then()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def switched_off(switch: str) -> bool:
    """Whether the environment variable ``switch`` (default on) says off, false or 0."""
    return os.environ.get(switch, "on").strip().lower() in {"off", "false", "0"}


def install_when_imported(module: str, install, *, log, refused: str):
    """Run ``install`` now if ``module`` is already imported, else right after it is (Airflow's
    components import their job runners after its settings). An exception from ``install`` becomes
    one warning on ``log`` (``refused``: what then runs stock), never a failed start. Returns what
    ``install`` returned when it ran now, else that it installs on import."""

    def install_safely():
        try:
            return install()
        except Exception as err:  # never keep an Airflow component from starting
            log.warning("%s: %r", refused, err)
            return f"not installed: {err!r}"

    if module in sys.modules:
        return install_safely()
    if not any(isinstance(f, PatchAfterImport) and f.module == module for f in sys.meta_path):
        sys.meta_path.insert(0, PatchAfterImport(module, install_safely))
    return "installs when it is imported"
