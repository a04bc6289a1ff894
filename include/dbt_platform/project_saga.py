"""The project-creation saga, declared in one place: nine steps, each with its compensation.

| step | does | compensation |
|---|---|---|
| validate_request | checks the request (no effects) | — |
| create_project | registry row, status PROVISIONING | delete the row |
| provision_database | CREATE DATABASE (new) / verify (existing) | drop it if this saga created it |
| create_environments | one schema per environment + records | drop exactly the schemas this saga made |
| setup_repository | git repo with a dbt scaffold, initial commit | remove the repo |
| create_credentials | LOGIN role per environment + Airflow connection | drop roles, delete connections |
| assign_entitlements | owner/reader roles, grants, reader groups | revoke and drop |
| register_transformations | the project gets its own Cosmos DAG | unregister |
| notify_owner | pivot: notify the owner | — |
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import replace
from datetime import timedelta
from functools import cache

import yaml
from psycopg2 import sql
from psycopg2.extensions import make_dsn, parse_dsn

from include.dbt_platform.adapters import git_repo
from include.dbt_platform.adapters.postgres import Postgres, connection_params, ident, marker
from include.dbt_platform.adapters.secrets_store import ConnectionStore
from include.dbt_platform.config import get_settings
from include.dbt_platform.project_request import (
    ENVIRONMENTS,
    ProjectRequest,
    idempotency_key_of,
    parse_request,
)
from include.dbt_platform.saga.engine import RetryPolicy, SagaDefinition, Step, StepContext
from include.dbt_platform.saga.errors import Conflict, RequestInvalid
from include.dbt_platform.saga.journal import Journal, SagaRecord

SAGA_NAME = "dbt_project_create"


# ---------------------------------------------------------------------------- wiring


def platform_dsn() -> str:
    params = connection_params(get_settings().platform_conn_id)
    return make_dsn(**{**params, "dbname": params["dbname"] or "platform"})


def postgres() -> Postgres:
    return Postgres(platform_dsn())


def journal() -> Journal:
    return Journal(platform_dsn())


def connection_store() -> ConnectionStore:
    return ConnectionStore(get_settings().state_dir / "secrets" / "connections.json")


def request_of(ctx: StepContext) -> ProjectRequest:
    return parse_request(ctx.request)


def primary_environment(req: ProjectRequest) -> str:
    """The environment the scheduled transformation DAG runs in: prod if asked for, else the highest."""
    return [e for e in ENVIRONMENTS if e in req.environments][-1]


# ---------------------------------------------------------------------------- steps


def validate_request(ctx: StepContext) -> dict:
    req = request_of(ctx)
    pg = postgres()
    pg.ensure_registry()
    owner = pg.project_owner_saga(req.project_name)
    if owner is not None and owner != ctx.saga_id:
        raise Conflict(f"project name '{req.project_name}' is already taken")
    db_marker = pg.database_marker(req.database_name)
    if req.database_mode == "existing" and db_marker is None:
        raise RequestInvalid(f"database '{req.database_name}' does not exist (database_mode 'existing')")
    if req.database_mode == "new" and db_marker not in (None, marker(ctx.saga_id)):
        raise Conflict(f"database '{req.database_name}' already exists; use database_mode 'existing'")
    missing = [r for r in req.readers if not pg.role_exists(r)]
    if missing:
        raise RequestInvalid(f"reader role(s) {missing} do not exist")
    settings = get_settings()
    if (settings.repositories_dir / req.project_name).exists() and git_repo.marker_of(
        settings.repositories_dir / req.project_name
    ) != ctx.saga_id:
        raise Conflict(f"a repository named '{req.project_name}' already exists")
    return {
        "project_name": req.project_name,
        "database": req.database_name,
        "environments": list(req.environments),
    }


def create_project(ctx: StepContext) -> dict:
    req = request_of(ctx)
    postgres().insert_project(req.project_name, ctx.saga_id, req.owner, req.database_name)
    return {"project_name": req.project_name}


def delete_project(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    postgres().delete_project(req.project_name, ctx.saga_id)


def provision_database(ctx: StepContext) -> dict:
    req = request_of(ctx)
    pg = postgres()
    if req.database_mode == "existing":
        if pg.database_marker(req.database_name) is None:
            raise RequestInvalid(f"database '{req.database_name}' does not exist")
        return {"database": req.database_name, "created": False}
    pg.create_database(req.database_name, ctx.saga_id)
    return {"database": req.database_name, "created": True}


def drop_database(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    if req.database_mode == "new":  # an existing database is never dropped
        postgres().drop_database(req.database_name, ctx.saga_id)


def create_environments(ctx: StepContext) -> dict:
    req = request_of(ctx)
    pg = postgres()
    created: list[str] = []
    for count, env in enumerate(req.environments, start=1):
        schema = req.schema(env)
        ctx.progress({"schemas": [*created, schema], "complete": False})  # intent first
        pg.create_schema(req.database_name, schema, ctx.saga_id)
        pg.record_environment(req.project_name, env, schema, ctx.saga_id)
        created.append(schema)
        ctx.checkpoint(count)
    return {"schemas": created, "complete": True}


def drop_environments(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    pg = postgres()
    # Exactly the schemas this saga made: marker-checked, whatever the recorded progress says.
    for env in req.environments:
        pg.drop_schema(req.database_name, req.schema(env), ctx.saga_id)


def setup_repository(ctx: StepContext) -> dict:
    req = request_of(ctx)
    path = get_settings().repositories_dir / req.project_name
    git_repo.create_repository(
        path, git_repo.scaffold(req.project_name, req.owner, req.description), ctx.saga_id
    )
    return {"repository": str(path)}


def remove_repository(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    git_repo.remove_repository(get_settings().repositories_dir / req.project_name, ctx.saga_id)


def create_credentials(ctx: StepContext) -> dict:
    from airflow.sdk.log import mask_secret

    req = request_of(ctx)
    pg = postgres()
    store = connection_store()
    target = parse_dsn(pg.dsn)
    for env in req.environments:
        role = req.login_role(env)
        password = secrets.token_urlsafe(32)
        mask_secret(password)
        pg.create_role(role, ctx.saga_id, password=password)
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


def drop_credentials(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    pg = postgres()
    store = connection_store()
    for env in req.environments:
        store.delete(req.conn_id(env), ctx.saga_id)
        pg.drop_role(req.login_role(env), ctx.saga_id, [req.database_name])


def assign_entitlements(ctx: StepContext) -> dict:
    req = request_of(ctx)
    pg = postgres()
    pg.create_role(req.owner_role, ctx.saga_id)
    pg.create_role(req.reader_role, ctx.saga_id)
    db = ident(req.database_name)
    statements = [
        sql.SQL("grant connect on database {} to {}, {}").format(
            db, ident(req.owner_role), ident(req.reader_role)
        )
    ]
    for env in req.environments:
        schema, login = ident(req.schema(env)), ident(req.login_role(env))
        statements += [
            sql.SQL("grant connect on database {} to {}").format(db, login),
            sql.SQL("grant usage, create on schema {} to {}, {}").format(
                schema, login, ident(req.owner_role)
            ),
            sql.SQL("grant usage on schema {} to {}").format(schema, ident(req.reader_role)),
            sql.SQL("alter default privileges for role {} in schema {} grant select on tables to {}").format(
                login, schema, ident(req.reader_role)
            ),
        ]
    statements += [sql.SQL("grant {} to {}").format(ident(req.reader_role), ident(r)) for r in req.readers]
    pg.execute(req.database_name, statements)
    return {"roles": [req.owner_role, req.reader_role], "readers": list(req.readers)}


def revoke_entitlements(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    pg = postgres()
    if pg.database_marker(req.database_name) is not None:
        statements = []
        for env in req.environments:
            login = req.login_role(env)
            if pg.role_marker(login) == marker(ctx.saga_id) and pg.schema_marker(
                req.database_name, req.schema(env)
            ):
                statements.append(
                    sql.SQL(
                        "alter default privileges for role {} in schema {} revoke select on tables from {}"
                    ).format(ident(login), ident(req.schema(env)), ident(req.reader_role))
                )
        if pg.role_exists(req.reader_role):
            pg.execute(req.database_name, statements)
    for role in (req.reader_role, req.owner_role):  # membership of readers goes with the role
        pg.drop_role(role, ctx.saga_id, [req.database_name])


def register_transformations(ctx: StepContext) -> dict:
    from include.dbt_platform.manifests import build_manifest

    req = request_of(ctx)
    settings = get_settings()
    dest = settings.registry_dir / req.project_name
    git_repo.clone(settings.repositories_dir / req.project_name, dest, ctx.saga_id)
    env = primary_environment(req)
    (dest / "platform.yml").write_text(
        yaml.safe_dump(
            {
                "conn_id": req.conn_id(env),
                "schema": req.schema(env),
                "owner": req.owner,
                "tags": ["self-service", req.project_name],
                "description": req.description or f"Created by {SAGA_NAME} (saga {ctx.saga_id}).",
            }
        )
    )
    build_manifest(dest)
    return {"registered": str(dest), "environment": env}


def unregister_transformations(ctx: StepContext, result: dict) -> None:
    req = request_of(ctx)
    dest = get_settings().registry_dir / req.project_name
    if dest.exists() and git_repo.marker_of(dest) == ctx.saga_id:
        shutil.rmtree(dest)


def notify_owner(ctx: StepContext) -> dict:
    from include.dbt_platform.adapters.notifications import OwnerNotifier

    req = request_of(ctx)
    settings = get_settings()
    body = (
        f"Your dbt project '{req.project_name}' is ready.\n"
        f"Database: {req.database_name}; environments: {', '.join(req.environments)}.\n"
        f"Airflow connections: {', '.join(req.conn_id(e) for e in req.environments)}.\n"
        f"Transformation DAG: {req.project_name}. Repository: {settings.repositories_dir / req.project_name}.\n"
    )
    OwnerNotifier(
        to=req.owner,
        subject=f"dbt project {req.project_name} is ready",
        body=body,
        record_dir=str(settings.notifications_dir),
        record_name=ctx.saga_id,
        smtp_conn_id=settings.smtp_conn_id,
    ).notify({})
    return {"notified": req.owner}


def mark_active(saga_id: str, request: dict) -> None:
    postgres().set_project_status(parse_request(request).project_name, saga_id, "ACTIVE")


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


# ---------------------------------------------------------------------------- the saga

DB_STEP = RetryPolicy(retries=3, delay=timedelta(seconds=5), max_delay=timedelta(minutes=1))


@cache
def definition() -> SagaDefinition:
    return with_timeouts(_definition(), get_settings().saga_timeouts)


def with_timeouts(saga: SagaDefinition, seconds: dict[str, float]) -> SagaDefinition:
    """Apply ``DBT_PLATFORM_SAGA_TIMEOUTS`` (operators' drills and the real-scheduler tests)."""
    unknown = set(seconds) - {"saga", *(s.name for s in saga.steps)}
    if unknown:
        raise ValueError(f"DBT_PLATFORM_SAGA_TIMEOUTS names unknown steps: {sorted(unknown)}")
    steps = [
        replace(s, timeout=timedelta(seconds=seconds[s.name])) if s.name in seconds else s for s in saga.steps
    ]
    timeout = timedelta(seconds=seconds["saga"]) if "saga" in seconds else saga.timeout
    return replace(saga, steps=steps, timeout=timeout)


def _definition() -> SagaDefinition:
    return SagaDefinition(
        name=SAGA_NAME,
        journal=journal,
        timeout=timedelta(minutes=30),
        idempotency_key=idempotency_key_of,
        on_alert=alert,
        on_completed=mark_active,
        fault_injection_enabled=lambda: get_settings().fault_injection_enabled,
        steps=[
            Step(
                "validate_request",
                validate_request,
                retry=RetryPolicy(retries=2),
                timeout=timedelta(minutes=2),
                doc="Checks the request. A bad request fails at once, changing nothing.",
            ),
            Step(
                "create_project",
                create_project,
                delete_project,
                DB_STEP,
                timedelta(minutes=2),
                doc="Registry row for the project (PROVISIONING). Exactly one saga wins a name.",
            ),
            Step(
                "provision_database",
                provision_database,
                drop_database,
                DB_STEP,
                timedelta(minutes=5),
                doc="CREATE DATABASE (mode new) or verify it (mode existing).",
            ),
            Step(
                "create_environments",
                create_environments,
                drop_environments,
                DB_STEP,
                timedelta(minutes=5),
                doc="One schema per environment.",
            ),
            Step(
                "setup_repository",
                setup_repository,
                remove_repository,
                DB_STEP,
                timedelta(minutes=5),
                doc="A git repository with a runnable dbt project scaffold.",
            ),
            Step(
                "create_credentials",
                create_credentials,
                drop_credentials,
                DB_STEP,
                timedelta(minutes=5),
                doc="A LOGIN role per environment; its password goes only to the Airflow connection.",
            ),
            Step(
                "assign_entitlements",
                assign_entitlements,
                revoke_entitlements,
                DB_STEP,
                timedelta(minutes=5),
                doc="Owner and reader roles, grants, default privileges, reader groups.",
            ),
            Step(
                "register_transformations",
                register_transformations,
                unregister_transformations,
                DB_STEP,
                timedelta(minutes=5),
                doc="The project gets its own Cosmos transformation DAG.",
            ),
            Step(
                "notify_owner",
                notify_owner,
                None,
                DB_STEP,
                timedelta(minutes=2),
                doc="Pivot: tell the owner. After this the saga only completes.",
            ),
        ],
    )
