"""Airflow assets for dbt models: one stable identity per (project, model), whatever the mode.

Transformation DAGs emit an event for a model's asset when the model is refreshed; downstream DAGs
schedule on them (``schedule=[model_asset("inventory_transforms", "fct_users"), ...]``). The URI does
not carry the warehouse's host or port, so the same DAG file works in every environment.
(In LOCAL mode Cosmos also emits its own ``postgres://host:port/db/schema/table`` assets.)
"""

from __future__ import annotations

from airflow.sdk import Asset


def model_asset(project: str, model: str) -> Asset:
    return Asset(name=f"dbt.{project}.{model}", uri=f"dbt://{project}/{model}", group="dbt")
