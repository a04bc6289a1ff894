"""What runs inside Airflow's own processes rather than in tasks.

    triggerer.py  ``python -m include.dbt_platform.runtime.triggerer``: Airflow's triggerer, with
                  each start-from-trigger task sent to its runner alone and logs read while sending
    dag_cut.py    the per-version DAG cache and the one-task cut it sends

It imports Airflow only.
"""
