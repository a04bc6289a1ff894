"""Integration tier: every test here runs against the real PostgreSQL and Airflow metadata database."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _database(database) -> None:
    return None
