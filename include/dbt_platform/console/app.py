"""The saga console's FastAPI app, mounted by the plugin under ``/sagas`` in Airflow's api-server.

Pages (HTML shells; ``static/console.js`` fills them from the JSON API below):

    GET  /sagas/                          the list
    GET  /sagas/s/{saga_id}               one saga
    GET  /sagas/runs/{dag_id}/{run_id}    the saga of a DAG run (the "Saga" tab of a run)

JSON API (the pages use it; so can REST callers, with the same bearer token as ``/api/v2``):

    GET  /sagas/api/sagas?state=&limit=&offset=     newest first, with counts by state
    GET  /sagas/api/sagas/{saga_id}                  request, timeline, resources, events
    GET  /sagas/api/runs/{dag_id}/{run_id}           which saga a run drove
    POST /sagas/api/sagas/{saga_id}/redrive          re-drive a FAILED saga (HTTP 202)
    GET  /sagas/api/projects[/{name}]                projects: state, owner, environments (.projects)

Without a token the API answers 401 and a page sends the browser to Airflow's login; what a user
may see and do is :mod:`.access`'s (Airflow's auth manager).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import psycopg2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from include.dbt_platform.console import access, presentation, projects, runs
from include.dbt_platform.saga import journal_schema as j
from include.dbt_platform.saga.journal_views import JournalViews

URL_PREFIX = "/sagas"
HERE = Path(__file__).parent
MAX_PAGE = 100


def _compensable_steps(saga_name: str) -> set[str] | None:
    """The steps whose results name resources (those a compensation undoes), from the saga's
    definition (every saga the platform runs, ``include/dbt_platform/sagas.py``)."""
    from include.dbt_platform.sagas import definitions

    definition = definitions().get(saga_name)
    if definition is None:
        return None
    return {step.name for step in definition.steps if step.compensate}


def _journal_dsn() -> str:
    # The api-server has no task context, but it marks itself a server process
    # (_AIRFLOW_PROCESS_CONTEXT=server, airflow/api_fastapi/main.py): airflow.sdk's connection lookup,
    # the one the saga's tasks use, then reads the server's chain (the configured secrets backend,
    # environment variables, the metadata database). The live tests read the journal through it.
    from include.dbt_platform.adapters.postgres import platform_dsn

    return platform_dsn()


def _views() -> JournalViews:
    return JournalViews(_journal_dsn())


def _links(request: Request) -> presentation.Links:
    console_base = request.scope.get("root_path", "").rstrip("/") or URL_PREFIX
    return presentation.Links(ui_base=console_base.removesuffix(URL_PREFIX), console_base=console_base)


def _asset_version() -> str:
    digest = hashlib.sha1()
    for name in ("console.js", "console.css"):
        digest.update((HERE / "static" / name).read_bytes())
    return digest.hexdigest()[:10]


def create_app() -> FastAPI:
    app = FastAPI(
        title="Saga console",
        description="The sagas of the dbt platform, from their journal: list, detail, re-drive.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
    version = _asset_version()

    @app.exception_handler(psycopg2.OperationalError)
    def journal_unreachable(request: Request, exc: psycopg2.OperationalError) -> JSONResponse:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return JSONResponse({"detail": f"the saga journal is unreachable: {first_line}"}, status_code=503)

    def page(request: Request, user, view: str, **data) -> HTMLResponse:
        links = _links(request)
        html = templates.get_template("page.html").render(
            view=view,
            base=links.console_base,
            ui_base=links.ui_base,
            user=access.user_name(user),
            version=version,
            embedded=request.query_params.get("embedded") == "run",
            data=data,
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    def list_page(request: Request, user: access.PageCaller):
        if user is None:
            return RedirectResponse(access.login_url(request), status_code=303)
        return page(request, user, "list")

    @app.get("/s/{saga_id}", include_in_schema=False)
    def saga_page(request: Request, saga_id: str, user: access.PageCaller):
        if user is None:
            return RedirectResponse(access.login_url(request), status_code=303)
        return page(request, user, "detail", saga_id=saga_id)

    @app.get("/runs/{dag_id}/{run_id}", include_in_schema=False)
    def run_page(request: Request, dag_id: str, run_id: str, user: access.PageCaller):
        if user is None:
            return RedirectResponse(access.login_url(request), status_code=303)
        if access.may_read(user, dag_id) and (saga_id := _views().saga_of_run(dag_id, run_id)):
            # Shown in the run's own page: no need for the console's header there.
            return RedirectResponse(f"{_links(request).saga(saga_id)}?embedded=run", status_code=303)
        return page(request, user, "no-saga", dag_id=dag_id, run_id=run_id)

    @app.get("/api/sagas", summary="Sagas, newest first")
    def list_sagas(
        request: Request,
        user: access.Caller,
        state: Annotated[str | None, Query(description=f"one of {', '.join(j.SAGA_STATES)}")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 25,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        if state is not None and state.upper() not in j.SAGA_STATES:
            raise HTTPException(400, f"unknown state {state!r}; one of {', '.join(j.SAGA_STATES)}")
        result = _views().list_sagas(
            dag_ids=access.readable_dag_ids(user),
            state=state.upper() if state else None,
            limit=limit,
            offset=offset,
        )
        facts = runs.run_facts((s["dag_id"], s["run_id"]) for s in result.sagas)
        links, now = _links(request), datetime.now(UTC)
        return {
            "sagas": [
                presentation.summary(s, facts.get((s["dag_id"], s["run_id"])), links, now)
                for s in result.sagas
            ],
            "total_entries": result.total,
            "counts": {s: result.counts.get(s, 0) for s in j.SAGA_STATES},
            "limit": limit,
            "offset": offset,
        }

    @app.get("/api/sagas/{saga_id}", summary="One saga: request, timeline, resources, events")
    def get_saga(request: Request, saga_id: str, user: access.Caller) -> dict:
        detail = _readable(user, saga_id)
        saga = detail.saga
        facts = runs.run_facts([(saga["dag_id"], saga["run_id"])])
        redrive_runs = [
            (e["detail"]["recovery_dag_id"], e["detail"]["recovery_run_id"])
            for e in detail.events
            if e["event"] == presentation.REDRIVE_EVENT and (e["detail"] or {}).get("recovery_run_id")
        ]
        run_states = {run_id: f.state for (_, run_id), f in runs.run_facts(redrive_runs).items()}
        return presentation.detail_view(
            saga,
            detail.steps,
            detail.events,
            detail.duplicate_runs,
            run=facts.get((saga["dag_id"], saga["run_id"])),
            links=_links(request),
            now=datetime.now(UTC),
            run_states=run_states,
            may_redrive=access.may_redrive(user, saga["dag_id"]),
            compensable=_compensable_steps(saga["saga_name"]),
        )

    @app.get("/api/runs/{dag_id}/{run_id}", summary="The saga a DAG run drove")
    def saga_of_run(request: Request, dag_id: str, run_id: str, user: access.Caller) -> dict:
        if not access.may_read(user, dag_id):
            raise HTTPException(403, f"you may not read the runs of {dag_id}")
        saga_id = _views().saga_of_run(dag_id, run_id)
        if saga_id is None:
            raise HTTPException(404, f"no saga for the run {dag_id}/{run_id}")
        return {"saga_id": saga_id, "links": {"detail": _links(request).saga(saga_id)}}

    @app.post("/api/sagas/{saga_id}/redrive", status_code=202, summary="Re-drive a FAILED saga")
    def redrive(request: Request, saga_id: str, user: access.Caller) -> dict:
        """Trigger ``saga_recovery`` with ``{"saga_id": ...}`` (the documented re-drive), journaled
        first as a ``redrive_requested`` event naming the person. Only for a FAILED saga, only
        for who may trigger both the saga's DAG and ``saga_recovery``, one at a time."""
        detail = _readable(user, saga_id)
        saga, name = detail.saga, access.user_name(user)
        if not access.may_redrive(user, saga["dag_id"]):
            raise HTTPException(
                403,
                f"{name} may not re-drive: it takes the right to trigger {saga['dag_id']} and {runs.RECOVERY_DAG_ID}",
            )
        if saga["state"] != j.FAILED:
            raise HTTPException(409, f"only a FAILED saga can be re-driven; this one is {saga['state']}")
        requested = [e["detail"] for e in detail.events if e["event"] == presentation.REDRIVE_EVENT]
        if requested and (last := requested[-1]).get("recovery_run_id"):
            states = runs.run_facts([(last["recovery_dag_id"], last["recovery_run_id"])])
            state = next(iter(states.values())).state if states else None
            if state in runs.UNFINISHED_RUN_STATES:
                raise HTTPException(409, f"a re-drive is already {state}: run {last['recovery_run_id']}")
        run_id = runs.new_recovery_run_id(saga_id)
        journal = _journal()
        journal.record_event(
            saga_id,
            presentation.REDRIVE_EVENT,
            {"user": name, "recovery_dag_id": runs.RECOVERY_DAG_ID, "recovery_run_id": run_id},
        )
        try:
            started = runs.trigger_recovery(
                saga_id, run_id, user_name=name, from_ui=bool(request.headers.get("referer"))
            )
        except runs.RedriveRefused as exc:
            journal.record_event(saga_id, "redrive_not_started", {"user": name, "error": str(exc)})
            raise HTTPException(409, f"Airflow did not start the re-drive: {exc}") from exc
        return {
            "saga_id": saga_id,
            "requested_by": name,
            "recovery_dag_id": started.recovery_dag_id,
            "recovery_run_id": started.recovery_run_id,
            "recovery_dag_paused": started.paused,
            "links": {"recovery_run": _links(request).run(started.recovery_dag_id, started.recovery_run_id)},
        }

    projects.add_routes(app)
    return app


def _journal():
    from include.dbt_platform.saga.journal import Journal

    return Journal(_journal_dsn())


def _readable(user, saga_id: str):
    detail = _views().detail(saga_id)
    if detail is None:
        raise HTTPException(404, f"no saga {saga_id}")
    if not access.may_read(user, detail.saga["dag_id"]):
        raise HTTPException(403, f"you may not read the runs of {detail.saga['dag_id']}")
    return detail
