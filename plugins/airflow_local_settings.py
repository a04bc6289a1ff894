"""Airflow's local settings for this project: Airflow imports this module in every process it starts
(it puts its plugins folder on ``sys.path``), before any DAG or task runs.

It gives a stock ``airflow triggerer`` the platform's triggerer patch (see
``include/dbt_platform/runtime/triggerer.py``: each trigger-started task goes to the trigger runner
alone, not its whole DAG; guarded by exact version checks, with one warning and stock behaviour
where they fail), and loads dbt once in the processes that fork task processes (``airflow
scheduler`` with a LocalExecutor, ``airflow celery worker``; see
``include/dbt_platform/runtime/warm_dbt.py``), so that tasks running dbt start warm. Every other
process is left as it is. A deployment with its own ``$AIRFLOW_HOME/config/airflow_local_settings.py``
(which Airflow finds first) adds the imports and the calls below to it instead.

It also wakes ``airflow scheduler`` from its idle sleep when a task ends (a PostgreSQL notification;
see ``include/dbt_platform/runtime/scheduler_wakeup.py``), so a task's successor starts at once,
queues a run's worker tasks (a transformation's build) before it defers the run's
trigger-started ones (``include/dbt_platform/runtime/scheduler_order.py``), and has ``airflow
api-server`` build the Task Execution API's routes as it starts rather than on
the first task's call, which then waited 7–9 s (``include/dbt_platform/runtime/execution_api.py``).
"""

import logging

try:
    from include.dbt_platform.runtime import scheduler_order, warm_dbt
    from include.dbt_platform.runtime.execution_api import install_in_api_server
    from include.dbt_platform.runtime.scheduler_wakeup import install_in_scheduler
    from include.dbt_platform.runtime.triggerer import install_in_triggerer
except ImportError as err:  # the project is not on PYTHONPATH: Airflow must still start
    logging.getLogger(__name__).warning(
        "dbt platform: triggerer patch, scheduler wake-up, API server warm start and dbt preload not loaded: %s",
        err,
    )
else:
    install_in_triggerer()
    install_in_scheduler()
    scheduler_order.install_in_scheduler()
    install_in_api_server()
    warm_dbt.install()
