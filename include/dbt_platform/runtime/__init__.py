"""What runs inside Airflow's own processes rather than in tasks.

    triggerer.py  a patch of Airflow's triggerer: each start-from-trigger task sent to its runner
                  alone, logs read while sending; a stock ``airflow triggerer`` installs it through
                  ``plugins/airflow_local_settings.py``
    roles.py      the platform's Airflow roles and the stack's users
    dag_cut.py    the per-version DAG cache and the one-task cut it sends

It imports Airflow only.
"""
