"""What runs inside Airflow's own processes rather than in tasks.

    triggerer.py  a patch of Airflow's triggerer: each start-from-trigger task sent to its runner
                  alone, logs read while sending; a stock ``airflow triggerer`` installs it through
                  ``plugins/airflow_local_settings.py``
    warm_dbt.py   dbt loaded once in the processes that fork task processes (the LocalExecutor
                  scheduler, Celery workers), installed the same way
    roles.py      the platform's Airflow roles and the stack's users
    dag_cut.py    the per-version DAG cache and the one-task cut it sends

It imports Airflow only (and dbt, in ``warm_dbt``, in the processes it warms).
"""

from __future__ import annotations

import os
import sys


def airflow_command(argv: list[str] | None = None) -> list[str]:
    """The arguments after ``airflow`` if this process is Airflow's command line (the ``airflow``
    console script or ``python -m airflow``), e.g. ``["triggerer", "--skip-serve-logs"]``; else []."""
    args = sys.argv if argv is None else argv
    if len(args) < 2 or os.path.basename(args[0]) not in {"airflow", "__main__.py", "-m"}:
        return []
    return list(args[1:])
