"""dbt docs per project in Airflow's UI: a FastAPI app mounted by ``plugins/dbt_docs.py`` under
``/dbt-docs`` in the api-server, with a "dbt docs" link in the nav bar and a "dbt docs" tab on
every DAG.

    GET  /dbt-docs/                   every project the caller may read, one entry each, with its docs
    GET  /dbt-docs/{project}/         the project's dbt docs (dbt's own single-page site)
    GET  /dbt-docs/api/projects       the same list as JSON

The docs are dbt's own site with the project's manifest inlined, put together at each
request from what the manifest build leaves (:func:`~include.dbt_platform.transformations.manifests.docs_page`),
for the bundled projects and the ones a saga created alike: the list is read at every request from the projects folder and from the
registered-projects bundle on the git server (the api-server has no bundle checkout of its own: this
app keeps one, fetched again only when the bundle's head moves), so a new project appears without
restarting the api-server.

Why not Cosmos's dbt-docs plugin (``[cosmos] dbt_docs_projects``, Cosmos 1.15): it reads its list
of projects once, when the api-server starts (a project the saga creates later would need a
restart), and it serves every project's docs to anyone, with no authentication. Here a caller is
authenticated as Airflow's REST API does it and sees a project's docs only if they may read its DAG
(the DAG id is the project's name): admins and viewers every project, a project's owner role its
own (:mod:`.access`). Without a token the JSON answers 401 and a page sends the browser to
Airflow's login.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

from fastapi import FastAPI
from fastapi.requests import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from include.dbt_platform.console import access

URL_PREFIX = "/dbt-docs"
HERE = Path(__file__).parent


log = logging.getLogger(__name__)
_bundle_lock = threading.Lock()
_bundle: dict = {"commit": None, "dir": None}


def _registered_dir() -> Path | None:
    """The projects folder of a checkout of the registered-projects bundle at its head (or the last
    one fetched, while the git server does not answer); None before any project is registered."""
    from include.dbt_platform.adapters import git
    from include.dbt_platform.transformations import bundle

    with _bundle_lock:
        try:
            host = git.git_host()
            head = git.head(bundle.url(host), host)
            if head is not None and head != _bundle["commit"]:
                fresh = Path(tempfile.mkdtemp(prefix="dbt-docs-bundle-"))
                git.fetch(bundle.url(host), host, fresh / "tree", head)
                old, _bundle["dir"], _bundle["commit"] = _bundle["dir"], fresh, head
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - the bundled projects are still listed
            log.warning("dbt docs: the registered-projects bundle could not be read: %s", exc)
        return _bundle["dir"] / "tree" / bundle.PROJECTS if _bundle["dir"] else None


def _projects() -> list:
    from include.dbt_platform.transformations.projects import discover

    bundled = discover().projects
    registered_dir = _registered_dir()
    # With a folder of registered projects, discover() returns those alone (the bundled ones are the
    # other DAG file's), with the same rule that a registered one never takes a bundled one's name.
    registered = discover(registered=registered_dir).projects if registered_dir else []
    return sorted([*bundled, *registered], key=lambda p: p.name)


def _entry(project, base: str) -> dict:
    docs = project.manifest_path
    built = datetime.fromtimestamp(docs.stat().st_mtime, UTC).isoformat() if docs.exists() else None
    return {
        "project": project.name,
        "owner": project.owner,
        "description": project.description,
        "tags": list(project.tags),
        "docs_built_at": built,
        "links": {"docs": f"{base}/{project.name}/" if built else None},
    }


def _visible(user) -> list:
    return [p for p in _projects() if access.may_read_dag(user, p.name)]


def create_app() -> FastAPI:
    app = FastAPI(title="dbt docs", version="1", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())

    def base_of(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/") or URL_PREFIX

    def notice(request: Request, user, message: str, status: int) -> HTMLResponse:
        html = templates.get_template("docs.html").render(
            base=base_of(request), user=access.user_name(user), entries=None, message=message
        )
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    @app.get("/api/projects", summary="Projects whose dbt docs the caller may read")
    def list_docs(request: Request, user: access.Caller) -> dict:
        entries = [_entry(p, base_of(request)) for p in _visible(user)]
        return {"projects": entries, "total_entries": len(entries)}

    @app.get("/", include_in_schema=False)
    def index(request: Request, user: access.PageCaller):
        if user is None:
            return RedirectResponse(access.login_url(request), status_code=303)
        entries = [_entry(p, base_of(request)) for p in _visible(user)]
        html = templates.get_template("docs.html").render(
            base=base_of(request), user=access.user_name(user), entries=entries, message=None
        )
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/{name}", include_in_schema=False)
    def without_slash(request: Request, name: str):
        return RedirectResponse(f"{base_of(request)}/{name}/", status_code=307)

    @app.get("/{name}/", include_in_schema=False)
    def project_docs(request: Request, name: str, user: access.PageCaller):
        if user is None:
            return RedirectResponse(access.login_url(request), status_code=303)
        if not access.may_read_dag(user, name):
            return notice(request, user, f"You may not read the project {name}.", 403)
        project = next((p for p in _projects() if p.name == name), None)
        if project is None:  # also every DAG that is not a dbt project (the tab is on every DAG)
            return notice(request, user, f"{name} is not a dbt project of this platform.", 404)
        from include.dbt_platform.transformations.manifests import docs_page

        page = docs_page(project)
        if page is None:
            message = f"The dbt docs of {name} are not built yet: they are built with its manifest."
            return notice(request, user, message, 404)
        return HTMLResponse(
            page, headers={"Cache-Control": "no-store", "Content-Security-Policy": "frame-ancestors 'self'"}
        )

    return app
