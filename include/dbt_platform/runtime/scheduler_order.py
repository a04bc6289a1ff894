"""``airflow scheduler`` queues a run's worker tasks before it defers its trigger-started ones:
installed by ``airflow_local_settings``.

When a transformation DAG's run starts, one scheduler loop finds all its tasks ready: the build
task (``dbt_producer_watcher``, which runs on a worker) and every node's task (``start_from_trigger``,
released at once). Airflow 3.3's ``DagRun.schedule_tis`` defers each trigger-started task first (a
trigger row and a flush each) and marks the others scheduled after them; the build is queued only
once that loop's transaction is over, so it waited for every deferral: from the run's start to the
build's start took 1.2 s at 500 models and 3.0 s at 1,000, against ~0.4 s at 100.

:func:`install` has ``schedule_tis`` take a run's worker tasks alone when both kinds are ready in
the same loop (empty tasks, which Airflow sets to success without a worker, do not count) and leave
its trigger-started ones as they are (no state) for the next loop that examines the run. Usually
that is the next loop, at once: a loop that queued a task does not sleep. When the worker task
cannot be queued (executor slots, pool or concurrency limits, another scheduler holding the
critical section) the loop sleeps its idle sleep first (a task becoming scheduled wakes no one), and
with more running runs than a loop examines (``max_dagruns_per_loop_to_schedule``) the run waits its
turn. It is put off once per worker task that becomes ready beside it, so by a bounded number of
loops: at the next examination the worker task is scheduled, no longer ready, and the others are
deferred. A run with only one kind ready is scheduled as stock. Nothing else changes: the same tasks
reach the same states through Airflow's own code.

Guarded like the other patches: only on the Airflow versions it was written against
(:data:`PATCHED_AIRFLOW`) and where ``schedule_tis`` and the task instance have the expected shape;
anywhere else, or with ``DBT_PLATFORM_SCHEDULER_ORDER=off``, the scheduler runs stock and says why
once.
"""

from __future__ import annotations

import inspect
import logging
import sys

from include.dbt_platform.runtime import airflow_command, install_when_imported, switched_off

log = logging.getLogger("include.dbt_platform.runtime.scheduler_order")

SWITCH = "DBT_PLATFORM_SCHEDULER_ORDER"
DAGRUN_MODULE = "airflow.models.dagrun"
PATCHED_AIRFLOW = ("3.3.",)
EXPECTED_PARAMETERS = ["self", "schedulable_tis", "session", "max_tis_per_query"]
INSTALLED = "scheduler queues a run's worker tasks before it defers its trigger-started tasks"
REFUSED = "Scheduler defers a run's trigger-started tasks before it queues its worker tasks"


def starts_in_triggerer(ti) -> bool:
    """What ``schedule_tis`` defers instead of scheduling (``TaskInstance.defer_task``'s test)."""
    return bool(ti.is_schedulable and ti.start_trigger_args)


def worker_tasks_first(schedule_tis):
    def schedule_worker_tasks_first(self, schedulable_tis, **kwargs):
        tis = list(schedulable_tis)
        now = [ti for ti in tis if not starts_in_triggerer(ti)]
        # Only when a task goes to a worker now (an empty task is set to success without one): the
        # trigger-started ones at the next loop.
        if len(now) < len(tis) and any(ti.is_schedulable for ti in now):
            tis = now
        return schedule_tis(self, tis, **kwargs)

    schedule_worker_tasks_first._dbt_platform_patch = True  # type: ignore[attr-defined]
    schedule_worker_tasks_first.__wrapped__ = schedule_tis  # type: ignore[attr-defined]
    return schedule_worker_tasks_first


def unsupported() -> str | None:
    """Why this Airflow cannot take the patch, or None."""
    from airflow import __version__
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    if not __version__.startswith(PATCHED_AIRFLOW):
        return f"written for Airflow {'/'.join(PATCHED_AIRFLOW)}x, this is {__version__}"
    schedule = getattr(DagRun.schedule_tis, "__wrapped__", DagRun.schedule_tis)
    if list(inspect.signature(schedule).parameters) != EXPECTED_PARAMETERS:
        return f"DagRun.schedule_tis{inspect.signature(schedule)} changed"
    source = inspect.getsource(schedule)
    if "ti.defer_task(session=session)" not in source or "not ti.is_schedulable" not in source:
        return "DagRun.schedule_tis no longer defers with ti.defer_task after ti.is_schedulable"
    for name in ("is_schedulable", "start_trigger_args"):
        if not isinstance(getattr(TaskInstance, name, None), property):
            return f"TaskInstance.{name} is gone"
    if "self.start_trigger_args" not in inspect.getsource(TaskInstance.defer_task):
        return "TaskInstance.defer_task no longer goes by start_trigger_args"
    return None


def install() -> str:
    """Patch ``DagRun.schedule_tis`` in this process; returns what it did."""
    from airflow.models.dagrun import DagRun

    if getattr(DagRun.schedule_tis, "_dbt_platform_patch", False):
        return "installed"
    if reason := unsupported():
        log.warning("%s (stock): %s", REFUSED, reason)
        return f"not installed: {reason}"
    DagRun.schedule_tis = worker_tasks_first(DagRun.schedule_tis)  # type: ignore[method-assign]
    # Airflow may not have configured its logging yet when it imports DagRun: say it on stderr.
    print(f"dbt platform: {INSTALLED}", file=sys.stderr, flush=True)
    return "installed"


def uninstall() -> None:
    from airflow.models.dagrun import DagRun

    if getattr(DagRun.schedule_tis, "_dbt_platform_patch", False):
        DagRun.schedule_tis = DagRun.schedule_tis.__wrapped__  # type: ignore[method-assign]


def install_in_scheduler(argv: list[str] | None = None) -> str:
    """Called by ``airflow_local_settings`` in every Airflow process. Returns what it did."""
    if airflow_command(argv)[:1] != ["scheduler"]:
        return "not the scheduler"
    if switched_off(SWITCH):
        print(f"dbt platform: {REFUSED.lower()} (stock): {SWITCH}=off", file=sys.stderr, flush=True)
        return "switched off"
    return install_when_imported(DAGRUN_MODULE, install, log=log, refused=f"{REFUSED} (stock)")
