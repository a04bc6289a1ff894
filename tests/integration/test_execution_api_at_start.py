"""``airflow api-server`` builds the Task Execution API's routes as it starts, not on the first
task's call (include/dbt_platform/runtime/execution_api.py)."""

from __future__ import annotations

import pytest

from include.dbt_platform.runtime import execution_api
from tests.harness import run_as_airflow_command

# The API server's app as `airflow api-server` serves it (airflow.api_fastapi.main), then requests to
# the Task Execution API in its newest and its oldest version: routes built before any request, and
# every version routed.
BUILT_BEFORE_ANY_REQUEST = (
    "import airflow.api_fastapi.app as api\n"
    "from starlette.routing import Mount\n"
    "from starlette.testclient import TestClient\n"
    "app = api.cached_app(apps='all')\n"
    "execution = next(r.app for r in app.routes if isinstance(r, Mount) and r.path == '/execution')\n"
    "built = execution._cadwyn_initialized\n"
    "client = TestClient(app)\n"
    "oldest = execution.versions.versions[-1].value\n"
    "newest = client.get('/execution/health').status_code\n"
    "old = client.get('/execution/health', headers={'Airflow-API-Version': str(oldest)}).status_code\n"
    "print(built, newest, old)\n"
)
WRAPPED = (
    "import airflow.api_fastapi.app as api\n"
    "print('patched' if getattr(api.create_app, '_dbt_platform_patch', False) else 'stock')\n"
)


def test_the_api_server_app_has_its_execution_routes_built_before_any_request(database):
    last, output = run_as_airflow_command(["airflow", "api-server"], None, BUILT_BEFORE_ANY_REQUEST)
    assert last == "True 200 200", output[-3000:]
    assert "Task Execution API routes built at start" in output


@pytest.mark.parametrize(
    ("version", "env", "expected", "says"),
    [
        (None, {}, "patched", None),
        ("3.4.0", {}, "stock", "first request (stock): written for Airflow 3.3.x, this is 3.4.0"),
        (None, {execution_api.SWITCH: "off"}, "stock", f"{execution_api.SWITCH}=off"),
    ],
)
def test_it_comes_through_airflow_local_settings_only_where_its_guard_holds(version, env, expected, says):
    last, output = run_as_airflow_command(["airflow", "api-server"], version, WRAPPED, env)
    assert last == expected, output[-2000:]
    if says is None:
        assert "first request" not in output and "=off" not in output, output[-2000:]
    else:
        assert says in output


def test_cadwyn_still_builds_the_execution_api_on_its_first_request_and_only_once():
    # The patch exists because of the first; an upgrade that builds the routes up front makes it
    # useless (and its guard then leaves the API server stock): this fails first, to say so.
    from airflow.api_fastapi.execution_api.app import create_task_execution_api_app
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    assert execution_api.unsupported() is None
    root, execution = FastAPI(), create_task_execution_api_app()
    root.mount("/execution", execution)
    assert execution._cadwyn_initialized is False
    assert execution_api.unbuilt_cadwyn_apps(root) == [execution]
    assert execution_api.build_routes(root) == 1
    assert execution._cadwyn_initialized is True and execution_api.unbuilt_cadwyn_apps(root) == []

    def built_again():
        raise AssertionError("the first request built the routes again")

    execution._cadwyn_initialize = built_again
    assert TestClient(root).get("/execution/health").status_code == 200
