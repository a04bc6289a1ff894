"""The first step of ``dbt_project_create``: is this request allowed, and is everything it names free?

No side effects: a request refused here changes nothing and frees its idempotency key. What
``request.py`` can tell from the request alone is checked there; what needs the server (names
taken, databases that may be adopted, reader roles that are platform roles) is checked here.
"""

from __future__ import annotations

from psycopg2.extensions import parse_dsn

from include.dbt_platform.adapters import git
from include.dbt_platform.adapters.breaker import guarded
from include.dbt_platform.adapters.postgres import Postgres, connection_params, marker
from include.dbt_platform.config import NEVER_ADOPTED_DATABASES, airflow_metadata_database, get_settings
from include.dbt_platform.errors import Conflict, RequestInvalid
from include.dbt_platform.project_creation.request import ProjectRequest
from include.dbt_platform.project_creation.steps import postgres, registry_of
from include.dbt_platform.saga.definition import StepContext


def validate_request(ctx: StepContext) -> dict:
    with guarded():  # refused at once while the warehouse's or git's circuit breaker is open
        return _validate(ctx)


def _validate(ctx: StepContext) -> dict:
    req: ProjectRequest = ctx.request
    settings = get_settings()
    registry = registry_of()
    registry.ensure_registry()
    owner = registry.project_owner_saga(req.project_name)
    if owner is not None and owner != ctx.saga_id:
        raise Conflict(f"project name '{req.project_name}' is already taken")
    if req.project_name in bundled_project_names(settings):
        raise Conflict(f"project name '{req.project_name}' is the name of a bundled dbt project")
    pg = postgres()
    db_marker = pg.database_marker(req.database_name)
    if req.database_mode == "existing":
        _check_adoptable(req, ctx.saga_id, db_marker, pg, registry, settings)
    elif db_marker not in (None, marker(ctx.saga_id)):
        raise Conflict(f"database '{req.database_name}' already exists; use database_mode 'existing'")
    missing = [r for r in req.readers if not pg.role_exists(r)]
    if missing:
        raise RequestInvalid(f"reader role(s) {missing} do not exist")
    for reader in req.readers:
        if reasons := pg.platform_role_reasons(reader):
            raise RequestInvalid(f"reader role '{reader}' is a platform role ({', '.join(reasons)})")
    repository = git.git_host().repository(req.project_name)  # the git server is reached
    if repository is not None and repository.saga_id != ctx.saga_id:
        raise Conflict(f"a repository named '{req.project_name}' already exists on the git server")
    return {
        "project_name": req.project_name,
        "database": req.database_name,
        "environments": list(req.environments),
    }


def _check_adoptable(req, saga_id, db_marker, pg, registry, settings) -> None:
    """``database_mode: existing`` only for a database the platform was told may be adopted."""
    name = req.database_name
    platform_databases = {_platform_database(pg), airflow_metadata_database(), _warehouse_database(settings)}
    if name in NEVER_ADOPTED_DATABASES | platform_databases or pg.is_template(name):
        raise RequestInvalid(f"database '{name}' belongs to the platform and can never hold a project")
    if db_marker is None:
        raise RequestInvalid(f"database '{name}' does not exist (database_mode 'existing')")
    if name not in settings.adoptable_databases:
        raise RequestInvalid(
            f"database '{name}' is not one the platform may adopt (DBT_PLATFORM_ADOPTABLE_DATABASES: "
            f"{sorted(settings.adoptable_databases) or 'none'}); ask the platform team to add it"
        )
    others = {p for p, s in registry.projects_using_database(name).items() if s != saga_id}
    if others:
        raise Conflict(f"database '{name}' belongs to project(s) {sorted(others)}")


def _platform_database(pg: Postgres) -> str:
    return parse_dsn(pg.dsn).get("dbname", "")


def _warehouse_database(settings) -> str | None:
    try:
        return connection_params(settings.warehouse_conn_id)["dbname"]
    except Exception:  # noqa: BLE001 - no warehouse connection here: nothing to protect
        return None


def bundled_project_names(settings) -> set[str]:
    """dbt project names under the bundled projects folder (their DAG ids)."""
    from include.dbt_platform.transformations.projects import DbtProjectError, load_project

    names = set()
    if settings.dbt_projects_dir.is_dir():
        for path in settings.dbt_projects_dir.glob("*/dbt_project.yml"):
            try:
                names.add(load_project(path.parent, settings).name)
            except DbtProjectError:
                names.add(path.parent.name)
    return names
