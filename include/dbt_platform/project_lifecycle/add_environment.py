"""``dbt_project_add_environment``: a new environment for an active project, as a saga.

| step | does | compensation | retries | timeout |
|---|---|---|---|---|
| validate_request | the project is ACTIVE and free, the environment is new (no effects) | — | 2 | 2 min |
| claim_project | the project is held by this saga (no other lifecycle saga meanwhile) | give it back | 3 | 2 min |
| create_environment | schema `<project>_<env>` + its registry record | drop exactly that schema and record | 3 | 5 min |
| create_credentials | LOGIN role `<project>_<env>_rw` + connection `dbt_<project>_<env>` | drop both | 3 | 5 min |
| grant_access | the grants every environment has (login, owner, reader) | revoke the reader's defaults | 3 | 5 min |
| retarget_transformations | if the new environment becomes the primary one (prod, else the highest), the project's DAG targets it | target the previous one | 3 | 5 min |
| notify_owner | pivot: tell the owner | — | 3 | 2 min |
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from functools import cache

from psycopg2.extensions import parse_dsn

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import Conflict
from include.dbt_platform.project_creation.definition import configured
from include.dbt_platform.project_lifecycle import common
from include.dbt_platform.project_lifecycle.requests import AddEnvironmentRequest, parse_add_environment
from include.dbt_platform.saga.definition import SagaDefinition, Step, StepContext

SAGA_NAME = "dbt_project_add_environment"


def validate_request(ctx: StepContext) -> dict:
    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx)
    if req.environment in project.environments:
        raise Conflict(f"project '{project.name}' already has the environment '{req.environment}'")
    return {"project_name": project.name, "environment": req.environment}


def claim_project(ctx: StepContext) -> dict:
    return common.claim(ctx)


def create_environment(ctx: StepContext) -> dict:
    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    schema = req.schema(req.environment)
    common.postgres().create_schema(project.database, schema, ctx.saga_id)
    boundary("schema made, environment not yet recorded")
    common.registry().record_environment(project.name, req.environment, schema, ctx.saga_id)
    return {"schema": schema}


def drop_environment(ctx: StepContext) -> None:
    req: AddEnvironmentRequest = ctx.request
    project = common.registry().project(req.project_name)
    if project is not None:
        common.postgres().drop_schema(project.database, req.schema(req.environment), ctx.saga_id)
    common.registry().delete_environment(req.project_name, req.environment, ctx.saga_id)


def create_credentials(ctx: StepContext) -> dict:
    from airflow.sdk.log import mask_secret

    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    pg = common.postgres()
    role, password = req.login_role(req.environment), secrets.token_urlsafe(32)
    mask_secret(password)
    pg.create_role(role, ctx.saga_id, password=password)
    boundary("login role made, its connection not yet stored")
    target = parse_dsn(pg.dsn)
    common.connection_store().put(
        req.conn_id(req.environment),
        saga_id=ctx.saga_id,
        host=target.get("host", "127.0.0.1"),
        port=int(target.get("port", 5432)),
        login=role,
        password=password,
        database=project.database,
        schema=req.schema(req.environment),
    )
    return {"role": role, "connection": req.conn_id(req.environment)}


def drop_credentials(ctx: StepContext) -> None:
    req: AddEnvironmentRequest = ctx.request
    project = common.registry().project(req.project_name)
    common.connection_store().delete(req.conn_id(req.environment), ctx.saga_id)
    common.postgres().drop_role(
        req.login_role(req.environment), ctx.saga_id, [project.database] if project else []
    )


def grant_access(ctx: StepContext) -> dict:
    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    common.postgres().grant_environment_access(
        project.database,
        schema=req.schema(req.environment),
        login_role=req.login_role(req.environment),
        owner_role=req.owner_role,
        reader_role=req.reader_role,
    )
    return {"granted": req.login_role(req.environment)}


def revoke_access(ctx: StepContext) -> None:
    req: AddEnvironmentRequest = ctx.request
    project = common.registry().project(req.project_name)
    if project is not None:  # the reader's default privileges outlive the login role: revoke them
        common.postgres().revoke_reader_defaults(
            project.database,
            reader_role=req.reader_role,
            environments=[(req.schema(req.environment), req.login_role(req.environment))],
            saga_id=ctx.saga_id,
        )


def _retarget(req: AddEnvironmentRequest, environments) -> dict:
    """Point the registered project (in the registered-projects bundle) at the primary one of
    ``environments``: its connection and schema; its manifest is rebuilt."""
    from include.dbt_platform.adapters import git
    from include.dbt_platform.transformations import bundle

    env = common.primary_environment(environments)
    commit = bundle.retarget(
        git.git_host(), req.project_name, {"conn_id": req.conn_id(env), "schema": req.schema(env)}
    )
    return {"environment": env, "changed": commit is not None}


def retarget_transformations(ctx: StepContext) -> dict:
    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    return _retarget(req, {*project.environments, req.environment})


def restore_target(ctx: StepContext) -> None:
    req: AddEnvironmentRequest = ctx.request
    project = common.registry().project(req.project_name)
    if project is not None:
        before = {e for e, (_, saga) in project.environments.items() if saga != ctx.saga_id}
        if before:
            _retarget(req, before)


def notify_owner(ctx: StepContext) -> dict:
    req: AddEnvironmentRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    env = req.environment
    return common.tell_owner(
        ctx,
        project,
        f"dbt project {project.name}: environment {env} is ready",
        f"Your dbt project '{project.name}' has a new environment '{env}': schema {req.schema(env)} in "
        f"database {project.database}, Airflow connection {req.conn_id(env)}.\n",
    )


def _declared() -> SagaDefinition:
    return SagaDefinition(
        name=SAGA_NAME,
        journal=common.journal,
        timeout=timedelta(minutes=30),
        parse_request=parse_add_environment,
        idempotency_key=lambda params: params.get("idempotency_key") or None,
        on_alert=common.alert,
        on_completed=common.release_on_completion,
        fault_injection_enabled=lambda: get_settings().fault_injection_enabled,
        pivot="notify_owner",
        steps=[
            Step("validate_request", validate_request, None, common.CHECK, timedelta(minutes=2),
                 doc="The project is ACTIVE and free, the environment is new. Changes nothing."),
            Step("claim_project", claim_project, common.release, common.DB_STEP, timedelta(minutes=2),
                 doc="The project is held by this saga until it ends."),
            Step("create_environment", create_environment, drop_environment, common.DB_STEP, timedelta(minutes=5),
                 doc="The environment's schema and its registry record."),
            Step("create_credentials", create_credentials, drop_credentials, common.DB_STEP, timedelta(minutes=5),
                 doc="A LOGIN role; its password goes only to the Airflow connection."),
            Step("grant_access", grant_access, revoke_access, common.DB_STEP, timedelta(minutes=5),
                 doc="The grants every environment has."),
            Step("retarget_transformations", retarget_transformations, restore_target, common.DB_STEP,
                 timedelta(minutes=5), doc="The project's DAG targets the primary environment."),
            Step("notify_owner", notify_owner, None, common.DB_STEP, timedelta(minutes=2),
                 doc="Pivot: tell the owner."),
        ],
    )  # fmt: skip


@cache
def definition() -> SagaDefinition:
    return configured(_declared())
