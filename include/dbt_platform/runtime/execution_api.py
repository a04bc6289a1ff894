"""``airflow api-server`` builds the Task Execution API's routes as it starts, not on its first
request: installed by ``airflow_local_settings``.

Airflow 3.3 mounts the Task Execution API (what every task's supervisor calls to start, heartbeat
and finish it) as a Cadwyn app, and Cadwyn generates its versioned routes and models on the app's
first request, in the event loop. On this 2-core machine that took 7–9 s, during which the API
server answered nothing: after every start of the API server, the first task's first call
(``PATCH /execution/task-instances/{id}/run``) timed out on the worker's side (5 s), was retried,
and the task started 7–9 s late (its first attempt answered 400). Every benchmark's and every
deployment's first run after a restart paid it: the first saga took 17–21 s instead of 8, and the
first transformation build carried the same seconds.

:func:`install` wraps ``airflow.api_fastapi.app.create_app`` so that the app it returns has had
those routes built (the same Cadwyn call the first request makes): the API server's start takes
those seconds instead of a task. It wraps only ``create_app``, which only API servers call, so
``dag.test()`` and the other components, which use the execution API in process, are left alone.
With one uvicorn worker (as the stack runs it: the only setup measured) the routes are built before
the server listens; under gunicorn (``[api] server_type``) the master builds the app once and its
workers inherit it; uvicorn with several workers listens first and each worker builds its own.
Guarded like the other patches: on the Airflow versions it was written against
(:data:`PATCHED_AIRFLOW`) and while Cadwyn still builds on the first request (otherwise there is
nothing to do); ``DBT_PLATFORM_EXECUTION_API_AT_START=off`` leaves the API server stock.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time

from include.dbt_platform.runtime import airflow_command, install_when_imported, switched_off

log = logging.getLogger("include.dbt_platform.runtime.execution_api")

SWITCH = "DBT_PLATFORM_EXECUTION_API_AT_START"
APP_MODULE = "airflow.api_fastapi.app"
PATCHED_AIRFLOW = ("3.3.",)
MARK = "_dbt_platform_patch"


def unbuilt_cadwyn_apps(app) -> list:
    """The Cadwyn apps mounted in ``app`` whose versioned routes are not built yet."""
    from cadwyn import Cadwyn
    from starlette.routing import Mount

    return [
        route.app
        for route in getattr(app, "routes", [])
        if isinstance(route, Mount) and isinstance(route.app, Cadwyn) and not route.app._cadwyn_initialized
    ]


def build_routes(app) -> int:
    """Build the routes of every Cadwyn app mounted in ``app`` now, as their first request would;
    returns how many apps it built."""
    apps = unbuilt_cadwyn_apps(app)
    for sub in apps:
        sub._cadwyn_initialize()
    return len(apps)


def unsupported() -> str | None:
    """Why this Airflow and Cadwyn cannot take the patch (or have no need of it), or None."""
    from airflow import __version__

    if not __version__.startswith(PATCHED_AIRFLOW):
        return f"written for Airflow {'/'.join(PATCHED_AIRFLOW)}x, this is {__version__}"
    from cadwyn import Cadwyn

    if not hasattr(Cadwyn, "_cadwyn_initialize"):
        return "Cadwyn has no _cadwyn_initialize"
    lazily = inspect.getsource(Cadwyn.__call__)
    if "self._cadwyn_initialize()" not in lazily or "self._cadwyn_initialized" not in lazily:
        return "Cadwyn no longer builds its routes on the first request (as _cadwyn_initialized says)"
    return None


def install() -> str:
    """Wrap the imported ``airflow.api_fastapi.app.create_app``; returns what it did."""
    module = sys.modules[APP_MODULE]
    if getattr(module.create_app, MARK, False):
        return "installed"
    if reason := unsupported():
        log.warning("API server builds the Task Execution API on its first request (stock): %s", reason)
        return f"not installed: {reason}"
    original = module.create_app

    @functools.wraps(original)
    def create_app(*args, **kwargs):
        app = original(*args, **kwargs)
        began = time.monotonic()
        try:
            built = build_routes(app)
        except Exception as err:  # the first request builds them instead, as stock
            log.warning("Task Execution API routes not built at start (its first request will): %r", err)
        else:
            if built:
                log.info("Task Execution API routes built at start in %.1f s", time.monotonic() - began)
        return app

    setattr(create_app, MARK, True)
    module.create_app = create_app
    return "installed"


def install_in_api_server() -> str:
    """Called by ``airflow_local_settings`` in every Airflow process (only API servers create the
    app it wraps). Returns what it did."""
    if switched_off(SWITCH):
        if airflow_command()[:1] == ["api-server"]:  # Airflow configures its logging after this
            print(
                f"dbt platform: Task Execution API built on its first request: {SWITCH}=off", file=sys.stderr
            )
        return "switched off"
    return install_when_imported(
        APP_MODULE, install, log=log, refused="API server builds the Task Execution API on its first request"
    )
