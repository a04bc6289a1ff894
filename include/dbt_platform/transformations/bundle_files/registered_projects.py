"""
# dbt projects created by the platform (Airflow DAG bundle `registered_projects`)

One Airflow DAG per dbt project the `dbt_project_create` saga registered. This file, and the projects
beside it under `projects/`, live in the registered-projects bundle on the git server, written by the
platform (`include/dbt_platform/transformations/bundle.py`): each project at the commit of its own
repository that dbt last parsed (`project_sync` deploys new pushes). A project that cannot be loaded
is reported by `registered_project_errors.py`.
"""

from pathlib import Path

from include.dbt_platform.transformations.factory import build_transformation_dags

# Module-level names are how the Airflow DAG processor finds DAGs.
globals().update(build_transformation_dags(registered=Path(__file__).parent / "projects"))
