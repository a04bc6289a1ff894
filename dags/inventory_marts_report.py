"""
# `inventory_marts_report` — runs when the inventory marts are refreshed (data-aware scheduling)

Scheduled on the assets of `inventory_transforms`' marts, not on time: a run starts once both
`fct_users` and `fct_applications` have been refreshed since the last run. It reads the marts and
logs a small summary (users per department, applications per criticality), returned as XCom.

The assets are `dbt://inventory_transforms/fct_users` and `dbt://inventory_transforms/fct_applications`
(see `include/dbt_platform/transformations/assets.py`); the transformation DAG emits them when the models are built.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, task

from include.dbt_platform.config import get_settings
from include.dbt_platform.transformations.assets import model_asset

MARTS = [
    model_asset("inventory_transforms", "fct_users"),
    model_asset("inventory_transforms", "fct_applications"),
]

with DAG(
    dag_id="inventory_marts_report",
    schedule=MARTS,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["dbt", "downstream", "assets"],
    default_args={"owner": "analytics", "retries": 2, "retry_delay": timedelta(seconds=30)},
):

    @task(inlets=MARTS)
    def summarize(triggering_asset_events=None) -> dict:
        from include.dbt_platform.transformations.marts_report import summarize_marts

        for asset, events in (triggering_asset_events or {}).items():
            for event in events:
                print(
                    f"{asset.uri} refreshed at {event.timestamp} by {event.source_dag_id}/{event.source_run_id}"
                )
        return summarize_marts(get_settings().warehouse_conn_id, schema="inventory_transforms")

    summarize()
