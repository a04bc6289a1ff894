"""Integration tier: every test here runs against the real PostgreSQL and Airflow metadata database."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _database(database) -> None:
    return None


@pytest.fixture(scope="module")
def saga_dag():
    """``dbt_project_create`` as the dag-processor loads it from dags/."""
    from airflow.dag_processing.dagbag import DagBag

    from include.dbt_platform.config import REPO_ROOT

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert not bag.import_errors
    return bag.dags["dbt_project_create"]
