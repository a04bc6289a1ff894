"""The Sagas view in Airflow's UI: a FastAPI app mounted by the api-server, a link in the nav bar,
and a "Saga" tab on every DAG run (it shows the run's saga, or says the run has none).

The app and everything it does live in ``include/dbt_platform/console/``.
"""

from airflow.plugins_manager import AirflowPlugin

from include.dbt_platform.console.app import URL_PREFIX, create_app


class SagaConsolePlugin(AirflowPlugin):
    name = "saga_console"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Saga console"}]
    external_views = [
        {
            "name": "Sagas",
            "href": f"{URL_PREFIX}/",
            "url_route": "sagas",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/saga.svg",
        },
        {
            "name": "Saga",
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "url_route": "saga",
            "destination": "dag_run",
            "icon": f"{URL_PREFIX}/static/saga.svg",
        },
    ]
