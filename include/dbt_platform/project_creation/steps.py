"""Each step of ``dbt_project_create`` and its compensation. Steps call adapters only.

A step receives a :class:`~include.dbt_platform.saga.definition.StepContext` whose ``request`` is the
parsed :class:`~.request.ProjectRequest`. Every effect carries the saga's id (a marker), and every
compensation removes only what carries it: it is safe to run twice, and never touches what another
saga (or a person) made.
"""

from __future__ import annotations

import secrets

from psycopg2.extensions import parse_dsn

from include.dbt_platform.adapters import git
from include.dbt_platform.adapters.postgres import Postgres, platform_dsn, projects_dsn
from include.dbt_platform.adapters.registry import Registry
from include.dbt_platform.adapters.secrets import ConnectionStore
from include.dbt_platform.boundaries import boundary
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import RequestInvalid
from include.dbt_platform.project_creation.request import ENVIRONMENTS, ProjectRequest
from include.dbt_platform.saga.definition import StepContext
from include.dbt_platform.saga.journal import Journal, SagaRecord

SAGA_NAME = "dbt_project_create"


# ---------------------------------------------------------------------------- adapters


def postgres() -> Postgres:
    """The server where project databases are made."""
    return Postgres(projects_dsn())


def registry_of() -> Registry:
    return Registry(platform_dsn())


def journal() -> Journal:
    return Journal(platform_dsn())


def connection_store() -> ConnectionStore:
    return ConnectionStore(get_settings().state_dir / "secrets" / "connections.json")


def primary_environment(req: ProjectRequest) -> str:
    """The environment the scheduled transformation DAG runs in: prod if asked for, else the highest."""
    return [e for e in ENVIRONMENTS if e in req.environments][-1]


def _environments(req: ProjectRequest) -> list[tuple[str, str]]:
    """(schema, login role) of every environment of the request."""
    return [(req.schema(env), req.login_role(env)) for env in req.environments]


# ---------------------------------------------------------------------------- steps


def create_project(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    registry_of().insert_project(req.project_name, ctx.saga_id, req.owner, req.database_name)
    return {"project_name": req.project_name}


def delete_project(ctx: StepContext) -> None:
    registry_of().delete_project(ctx.request.project_name, ctx.saga_id)


def provision_database(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    pg = postgres()
    if req.database_mode == "existing":
        if pg.database_marker(req.database_name) is None:
            raise RequestInvalid(f"database '{req.database_name}' does not exist")
        return {"database": req.database_name, "created": False}
    pg.create_database(req.database_name, ctx.saga_id)
    return {"database": req.database_name, "created": True}


def drop_database(ctx: StepContext) -> None:
    req: ProjectRequest = ctx.request
    if req.database_mode == "new":  # an existing database is never dropped
        postgres().drop_database(req.database_name, ctx.saga_id)


def create_environments(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    pg, registry = postgres(), registry_of()
    created: list[str] = []
    for count, env in enumerate(req.environments, start=1):
        schema = req.schema(env)
        ctx.progress({"schemas": [*created, schema], "complete": False})  # intent first
        pg.create_schema(req.database_name, schema, ctx.saga_id)
        boundary("schema made, environment not yet recorded")
        registry.record_environment(req.project_name, env, schema, ctx.saga_id)
        created.append(schema)
        ctx.checkpoint(count)
    return {"schemas": created, "complete": True}


def drop_environments(ctx: StepContext) -> None:
    req: ProjectRequest = ctx.request
    pg = postgres()
    # Exactly the schemas this saga made: marker-checked, whatever the recorded progress says.
    for env in req.environments:
        pg.drop_schema(req.database_name, req.schema(env), ctx.saga_id)


def setup_repository(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    path = get_settings().repositories_dir / req.project_name
    git.create_repository(path, git.scaffold(req.project_name, req.owner, req.description), ctx.saga_id)
    return {"repository": str(path)}


def remove_repository(ctx: StepContext) -> None:
    git.remove_repository(get_settings().repositories_dir / ctx.request.project_name, ctx.saga_id)


def create_credentials(ctx: StepContext) -> dict:
    from airflow.sdk.log import mask_secret

    req: ProjectRequest = ctx.request
    pg = postgres()
    store = connection_store()
    target = parse_dsn(pg.dsn)
    for env in req.environments:
        role = req.login_role(env)
        password = secrets.token_urlsafe(32)
        mask_secret(password)
        pg.create_role(role, ctx.saga_id, password=password)
        boundary("login role made, its connection not yet stored")
        store.put(
            req.conn_id(env),
            saga_id=ctx.saga_id,
            host=target.get("host", "127.0.0.1"),
            port=int(target.get("port", 5432)),
            login=role,
            password=password,
            database=req.database_name,
            schema=req.schema(env),
        )
    return {
        "roles": [req.login_role(e) for e in req.environments],
        "connections": [req.conn_id(e) for e in req.environments],
    }


def drop_credentials(ctx: StepContext) -> None:
    req: ProjectRequest = ctx.request
    pg = postgres()
    store = connection_store()
    for env in req.environments:
        store.delete(req.conn_id(env), ctx.saga_id)
        pg.drop_role(req.login_role(env), ctx.saga_id, [req.database_name])


def assign_entitlements(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    postgres().grant_project_access(
        req.database_name,
        ctx.saga_id,
        owner_role=req.owner_role,
        reader_role=req.reader_role,
        environments=_environments(req),
        reader_groups=list(req.readers),
    )
    return {"roles": [req.owner_role, req.reader_role], "readers": list(req.readers)}


def revoke_entitlements(ctx: StepContext) -> None:
    req: ProjectRequest = ctx.request
    pg = postgres()
    pg.revoke_reader_defaults(
        req.database_name, reader_role=req.reader_role, environments=_environments(req), saga_id=ctx.saga_id
    )
    for role in (req.reader_role, req.owner_role):  # membership of readers goes with the role
        pg.drop_role(role, ctx.saga_id, [req.database_name])


def register_transformations(ctx: StepContext) -> dict:
    from include.dbt_platform.transformations.manifests import build_manifest
    from include.dbt_platform.transformations.projects import write_platform_file

    req: ProjectRequest = ctx.request
    settings = get_settings()
    dest = settings.registry_dir / req.project_name
    env = primary_environment(req)
    access_roles = owner_access_roles(req.owner)
    platform = {
        "conn_id": req.conn_id(env),
        "schema": req.schema(env),
        "owner": req.owner,
        "tags": ["self-service", req.project_name],
        "description": req.description or f"Created by {SAGA_NAME} (saga {ctx.saga_id}).",
    }
    if access_roles is not None:
        platform["access_roles"] = access_roles
    with git.cloned(settings.repositories_dir / req.project_name, dest, ctx.saga_id) as staging:
        write_platform_file(staging, platform)
    build_manifest(dest)
    return {"registered": str(dest), "environment": env, "access_roles": access_roles}


def owner_access_roles(owner: str) -> list[str] | None:
    """The Airflow roles the project's DAG grants: its owner's, if Airflow has it (a DAG naming a
    role Airflow lacks does not load). None without the platform's service account."""
    from include.dbt_platform.adapters import airflow_api

    api = airflow_api.configured()
    if api is None:
        return None
    role = airflow_api.owner_role(owner)
    return [role] if api.role_exists(role) else []


def unregister_transformations(ctx: StepContext) -> None:
    git.remove_repository(get_settings().registry_dir / ctx.request.project_name, ctx.saga_id)


def notify_owner(ctx: StepContext) -> dict:
    from include.dbt_platform.adapters.notifications import OwnerNotifier

    req: ProjectRequest = ctx.request
    settings = get_settings()
    body = (
        f"Your dbt project '{req.project_name}' is ready.\n"
        f"Database: {req.database_name}; environments: {', '.join(req.environments)}.\n"
        f"Airflow connections: {', '.join(req.conn_id(e) for e in req.environments)}.\n"
        f"Transformation DAG: {req.project_name}. Repository: {settings.repositories_dir / req.project_name}.\n"
    )
    body += _who_sees_it(journal().step(ctx.saga_id, "register_transformations"), req.owner)
    OwnerNotifier(
        to=req.owner,
        subject=f"dbt project {req.project_name} is ready",
        body=body,
        record_dir=str(settings.notifications_dir),
        record_name=ctx.saga_id,
        smtp_conn_id=settings.smtp_conn_id,
    ).notify({})
    return {"notified": req.owner}


def _who_sees_it(registered, owner: str) -> str:
    from include.dbt_platform.adapters.airflow_api import owner_role

    roles = (registered.result or {}).get("access_roles")
    if roles:
        return f"In Airflow, the DAG is yours to see and run through the role {', '.join(roles)}.\n"
    if roles == []:
        return (
            f"In Airflow, the DAG is not granted to you: Airflow has no role {owner_role(owner)}. "
            "Ask the platform team to create it (with you in it) and grant it to the DAG "
            "(the project's platform.yml, access_roles).\n"
        )
    return ""


# ---------------------------------------------------------------------------- saga hooks


def mark_active(saga_id: str, req: ProjectRequest) -> None:
    registry_of().set_project_status(req.project_name, saga_id, "ACTIVE")


def alert(saga: SagaRecord, failures: list[str]) -> None:
    from include.dbt_platform.adapters.notifications import deliver

    settings = get_settings()
    deliver(
        settings.notifications_dir / "alerts",
        saga.saga_id,
        to="data-platform-oncall",
        subject=f"saga {saga.saga_id} FAILED: compensation needs attention",
        body="Compensations that failed:\n"
        + "\n".join(failures)
        + f'\nRe-drive: trigger saga_recovery with conf {{"saga_id": "{saga.saga_id}"}}',
        smtp_conn_id=settings.smtp_conn_id,
    )
