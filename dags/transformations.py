"""
# dbt transformations (Cosmos)

One Airflow DAG per dbt project under `dbt_projects/` and per project registered by the
`dbt_project_create` saga. Cosmos renders each dbt model as a task (with its tests) from the
project's manifest. A project that cannot be loaded is reported by `transformation_import_errors.py`.
"""

from include.dbt_platform.transformations.factory import build_transformation_dags

# Module-level names are how the Airflow DAG processor finds DAGs.
globals().update(build_transformation_dags())
