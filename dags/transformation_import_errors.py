"""
# dbt projects that cannot be loaded

Raises an import error naming every dbt project that cannot become an Airflow DAG (missing or
stale-project manifest, unreadable `dbt_project.yml`, duplicate name), so it shows in the Airflow UI
under "DAG Import Errors" while the healthy projects' DAGs keep loading from `transformations.py`.
This file defines no DAG.
"""

from include.dbt_platform.transformations.factory import raise_for_unloadable_projects

raise_for_unloadable_projects()
