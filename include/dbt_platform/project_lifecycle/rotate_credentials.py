"""``dbt_project_rotate_credentials``: new passwords for a project's login roles, as a saga.

| step | does | compensation | retries | timeout |
|---|---|---|---|---|
| validate_request | the project is ACTIVE and free, the environments are its own (no effects) | — | 2 | 2 min |
| claim_project | the project is held by this saga | give it back | 3 | 2 min |
| rotate_passwords | per environment: the connection gets a new password (the old one kept aside), then the role | the previous password back, in the connection and the role | 3 | 5 min |
| notify_owner | pivot: tell the owner | — | 3 | 2 min |

The old password stops working the moment its role gets the new one. The connection is updated an
instant before the role, so there is a short window (two statements, milliseconds apart) in which a
dbt run starting with the new password is refused; its task's retry succeeds. A run already connected
keeps its session. Completion forgets the old passwords.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from functools import cache

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import RequestInvalid
from include.dbt_platform.project_creation.definition import configured
from include.dbt_platform.project_creation.request import ENVIRONMENTS
from include.dbt_platform.project_lifecycle import common
from include.dbt_platform.project_lifecycle.requests import RotateCredentialsRequest, parse_rotate_credentials
from include.dbt_platform.saga.definition import SagaDefinition, Step, StepContext

SAGA_NAME = "dbt_project_rotate_credentials"


def _environments(req: RotateCredentialsRequest, project) -> dict[str, str]:
    """Environment -> the saga that made its role and connection."""
    wanted = req.environments or tuple(project.environments)
    unknown = [e for e in wanted if e not in project.environments]
    if unknown:
        raise RequestInvalid(f"project '{project.name}' has no environment(s) {unknown}")
    return {env: project.environments[env][1] for env in wanted}


def validate_request(ctx: StepContext) -> dict:
    project = common.project_of(ctx)
    return {"project_name": project.name, "environments": sorted(_environments(ctx.request, project))}


def claim_project(ctx: StepContext) -> dict:
    return common.claim(ctx)


def rotate_passwords(ctx: StepContext) -> dict:
    from airflow.sdk.log import mask_secret

    req: RotateCredentialsRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    pg, store = common.postgres(), common.connection_store()
    rotated = []
    for env, made_by in _environments(req, project).items():
        password = secrets.token_urlsafe(32)
        mask_secret(password)
        store.rotate(req.conn_id(env), created_by=made_by, saga_id=ctx.saga_id, password=password)
        boundary("the connection has the new password, the role not yet")
        pg.set_password(req.login_role(env), made_by, password)
        rotated.append(env)
    return {"rotated": rotated}


def restore_passwords(ctx: StepContext) -> None:
    req: RotateCredentialsRequest = ctx.request
    project = common.registry().project(req.project_name)
    if project is None:
        return
    pg, store = common.postgres(), common.connection_store()
    for env, made_by in _environments(req, project).items():
        previous = store.undo_rotation(req.conn_id(env), ctx.saga_id)
        if previous is not None:
            pg.set_password(req.login_role(env), made_by, previous)
            store.finish_rotation(req.conn_id(env), ctx.saga_id)


def notify_owner(ctx: StepContext) -> dict:
    req: RotateCredentialsRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    envs = sorted(_environments(req, project))
    return common.tell_owner(
        ctx,
        project,
        f"dbt project {project.name}: credentials rotated",
        f"The passwords of {', '.join(req.login_role(e) for e in envs)} were replaced; the Airflow "
        f"connections {', '.join(req.conn_id(e) for e in envs)} hold the new ones. The old ones no longer work.\n",
    )


def finish(saga_id: str, req: RotateCredentialsRequest) -> None:
    """On completion: forget the old passwords, give the project back."""
    store = common.connection_store()
    for env in ENVIRONMENTS:  # whichever it rotated
        store.finish_rotation(req.conn_id(env), saga_id)
    common.release_on_completion(saga_id, req)


def _declared() -> SagaDefinition:
    return SagaDefinition(
        name=SAGA_NAME,
        journal=common.journal,
        timeout=timedelta(minutes=30),
        parse_request=parse_rotate_credentials,
        idempotency_key=lambda params: params.get("idempotency_key") or None,
        on_alert=common.alert,
        on_completed=finish,
        fault_injection_enabled=lambda: get_settings().fault_injection_enabled,
        pivot="notify_owner",
        steps=[
            Step("validate_request", validate_request, None, common.CHECK, timedelta(minutes=2),
                 doc="The project is ACTIVE and free; the environments are its own. Changes nothing."),
            Step("claim_project", claim_project, common.release, common.DB_STEP, timedelta(minutes=2),
                 doc="The project is held by this saga until it ends."),
            Step("rotate_passwords", rotate_passwords, restore_passwords, common.DB_STEP, timedelta(minutes=5),
                 doc="New passwords: the connection, then the role (the old one stops working)."),
            Step("notify_owner", notify_owner, None, common.DB_STEP, timedelta(minutes=2),
                 doc="Pivot: tell the owner."),
        ],
    )  # fmt: skip


@cache
def definition() -> SagaDefinition:
    return configured(_declared())
