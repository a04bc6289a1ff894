"""What the lifecycle sagas share: the project they work on, claiming it, telling its owner."""

from __future__ import annotations

from datetime import timedelta

from include.dbt_platform.adapters import secrets as secrets_adapter
from include.dbt_platform.adapters.breaker import guarded
from include.dbt_platform.adapters.postgres import Postgres, platform_dsn, projects_dsn
from include.dbt_platform.adapters.registry import ProjectRecord, Registry
from include.dbt_platform.adapters.secrets import ConnectionStore
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import Conflict, RequestInvalid
from include.dbt_platform.project_creation.request import ENVIRONMENTS
from include.dbt_platform.saga.definition import RetryPolicy, StepContext
from include.dbt_platform.saga.journal import Journal

DB_STEP = RetryPolicy(retries=3, delay=timedelta(seconds=5), max_delay=timedelta(minutes=1))
CHECK = RetryPolicy(retries=2)


def postgres() -> Postgres:
    return Postgres(projects_dsn())


def registry() -> Registry:
    return Registry(platform_dsn())


def journal() -> Journal:
    return Journal(platform_dsn())


def connection_store() -> ConnectionStore:
    return secrets_adapter.connection_store()


def project_of(ctx: StepContext, *, claimed: bool = False) -> ProjectRecord:
    """The project the request names; ACTIVE and free (or, once claimed, held by this saga).
    At validation (not yet claimed) the services' circuit breakers are consulted first."""
    if not claimed:
        with guarded():
            project = _project_of(ctx, claimed=False)
            postgres().database_marker(project.database)  # the warehouse is reached
            return project
    return _project_of(ctx, claimed=True)


def _project_of(ctx: StepContext, *, claimed: bool) -> ProjectRecord:
    reg = registry()
    reg.ensure_registry()
    project = reg.project(ctx.request.project_name)
    if project is None:
        raise RequestInvalid(f"there is no project '{ctx.request.project_name}'")
    if claimed:
        if project.busy_saga != ctx.saga_id:
            raise Conflict(f"project '{project.name}' is not held by saga {ctx.saga_id}")
        return project
    if project.busy_saga not in (None, ctx.saga_id):
        raise Conflict(
            f"project '{project.name}' is busy with saga {project.busy_saga}; try again when it is done"
        )
    if project.status != "ACTIVE" and project.busy_saga != ctx.saga_id:
        raise Conflict(f"project '{project.name}' is {project.status}, not ACTIVE")
    return project


def primary_environment(environments) -> str:
    """The environment the scheduled transformation DAG runs in: prod if there, else the highest."""
    return [e for e in ENVIRONMENTS if e in environments][-1]


def validate(ctx: StepContext) -> dict:
    project = project_of(ctx)
    return {"project_name": project.name, "environments": sorted(project.environments)}


def claim(ctx: StepContext, *, status_to: str | None = None) -> dict:
    if not registry().claim(ctx.request.project_name, ctx.saga_id, status_to=status_to):
        raise Conflict(f"project '{ctx.request.project_name}' is busy with another saga or not ACTIVE")
    return {"claimed": ctx.request.project_name}


def release(ctx: StepContext) -> None:
    """Compensation of a claim: the project is ACTIVE and free again (if this saga held it)."""
    registry().release(ctx.request.project_name, ctx.saga_id, status="ACTIVE")


def release_on_completion(saga_id: str, request) -> None:
    registry().release(request.project_name, saga_id)


def tell_owner(ctx: StepContext, project: ProjectRecord, subject: str, body: str) -> dict:
    from include.dbt_platform.adapters.notifications import OwnerNotifier

    settings = get_settings()
    OwnerNotifier(
        to=project.owner,
        subject=subject,
        body=body,
        record_name=ctx.saga_id,
        smtp_conn_id=settings.smtp_conn_id,
    ).notify({})
    return {"notified": project.owner}


def alert(saga, failures: list[str]) -> None:
    from include.dbt_platform.project_creation.steps import alert as creation_alert

    creation_alert(saga, failures)
