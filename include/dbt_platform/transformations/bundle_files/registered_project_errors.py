"""
# Registered dbt projects that cannot be loaded

Raises an import error naming every project of the registered-projects bundle that cannot become an
Airflow DAG, so it shows in the Airflow UI under "DAG Import Errors" while the healthy projects' DAGs
keep loading from `registered_projects.py`. This file defines no DAG.
"""

from pathlib import Path

from include.dbt_platform.transformations.factory import raise_for_unloadable_projects

raise_for_unloadable_projects(registered=Path(__file__).parent / "projects")
