"""dbt docs in Airflow's UI: a FastAPI app mounted by the api-server under ``/dbt-docs``, a "dbt docs"
link in the nav bar (one entry per project) and a "dbt docs" tab on every DAG (a project's DAG shows
its docs; another DAG says it is not a dbt project).

The app lives in ``include/dbt_platform/console/docs.py``.
"""

from airflow.plugins_manager import AirflowPlugin

from include.dbt_platform.console.docs import URL_PREFIX, create_app


class DbtDocsPlugin(AirflowPlugin):
    name = "dbt_platform_docs"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "dbt docs"}]
    external_views = [
        {
            "name": "dbt docs",
            "href": f"{URL_PREFIX}/",
            "url_route": "dbt-docs",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/dbt-docs.svg",
        },
        {
            "name": "dbt docs",
            "href": f"{URL_PREFIX}/{{DAG_ID}}/",
            "url_route": "dbt-docs",
            "destination": "dag",
            "icon": f"{URL_PREFIX}/static/dbt-docs.svg",
        },
    ]
