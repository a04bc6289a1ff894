"""``airflow api-server`` builds the Task Execution API's routes as it starts, not on the first
task's call (include/dbt_platform/runtime/execution_api.py)."""

from __future__ import annotations

import pytest

from include.dbt_platform.runtime import execution_api
from tests.harness import run_as_airflow_command

# The API server's app as `airflow api-server` builds it (airflow.api_fastapi.main), then one request
# to the Task Execution API: routes built before any request, and they answer.
BUILT_BEFORE_ANY_REQUEST = (
    "import airflow.api_fastapi.app as api\n"
    "from starlette.testclient import TestClient\n"
    "from include.dbt_platform.runtime.execution_api import unbuilt_cadwyn_apps\n"
    "app = api.cached_app(apps='all')\n"
    "unbuilt = unbuilt_cadwyn_apps(app)\n"
    "status = TestClient(app).get('/execution/health').status_code\n"
    "print('built' if not unbuilt else f'unbuilt: {unbuilt}', status)\n"
)
WRAPPED = (
    "import airflow.api_fastapi.app as api\n"
    "print('patched' if getattr(api.create_app, '_dbt_platform_patch', False) else 'stock')\n"
)


def test_the_api_server_app_has_its_execution_routes_built_before_any_request(database):
    last, output = run_as_airflow_command(["airflow", "api-server"], None, BUILT_BEFORE_ANY_REQUEST)
    assert last == "built 200", output[-3000:]
    assert "Task Execution API routes built at start" in output


@pytest.mark.parametrize(
    ("version", "env", "expected", "says"),
    [
        (None, {}, "patched", ""),
        ("3.4.0", {}, "stock", "first request (stock): written for Airflow 3.3.x, this is 3.4.0"),
        (None, {execution_api.SWITCH: "off"}, "stock", ""),
    ],
)
def test_it_comes_through_airflow_local_settings_only_where_its_guard_holds(version, env, expected, says):
    last, output = run_as_airflow_command(["airflow", "api-server"], version, WRAPPED, env)
    assert last == expected, output[-2000:]
    assert says in output


def test_cadwyn_still_builds_the_execution_api_on_its_first_request():
    # The patch exists because of this; an upgrade that builds the routes up front makes it useless
    # (and its guard then leaves the API server stock): this fails first, to say so.
    from airflow.api_fastapi.execution_api.app import create_task_execution_api_app

    assert execution_api.unsupported() is None
    app = create_task_execution_api_app()
    assert app._cadwyn_initialized is False
    assert execution_api.build_routes(app) == 0  # not mounted in anything: nothing to build
