"""Projects through REST: what the registry says of each (state, owner, database, environments, and
the decommissioned ones of the same name), under the console's app:

    GET  /sagas/api/projects               every project the caller may see, newest first
    GET  /sagas/api/projects/{name}        one name: the project (if any) and its history

A caller sees a project when they may read its DAG: admins and viewers (every DAG), and the people
of the owner's role (``owner:<e-mail>``, granted by the project's DAG). Nothing secret is in a
project's description.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException

from include.dbt_platform.console import access


def _registry():
    from include.dbt_platform.adapters.postgres import platform_dsn
    from include.dbt_platform.adapters.registry import Registry

    return Registry(platform_dsn())


def _visible(user, projects: list[dict]) -> list[dict]:
    allowed = {name: access.may_read_dag(user, name) for name in {p["project_name"] for p in projects}}
    return [p for p in projects if allowed[p["project_name"]]]


def add_routes(app: FastAPI) -> None:
    @app.get("/api/projects", summary="Projects, newest first: state, owner, environments")
    def list_projects(user: access.Caller) -> dict:
        projects = _visible(user, _registry().describe())
        return {"projects": projects, "total_entries": len(projects)}

    @app.get("/api/projects/{name}", summary="One project name: the project and its history")
    def get_project(name: str, user: access.Caller) -> dict:
        found = _registry().describe({name})
        if not found:
            raise HTTPException(404, f"no project {name}")
        visible = _visible(user, found)
        if not visible:
            raise HTTPException(403, f"you may not read the project {name}")
        current = [p for p in visible if p["state"] != "DECOMMISSIONED"]
        return {
            "project": current[0] if current else None,
            "history": [p for p in visible if p["state"] == "DECOMMISSIONED"],
        }
