"""``dbt_project_decommission``: take a project down, as a saga; its name can be used again after.

| step | does | compensation | retries | timeout |
|---|---|---|---|---|
| validate_request | the project is ACTIVE and free (no effects) | — | 2 | 2 min |
| claim_project | the project is DECOMMISSIONING, held by this saga | ACTIVE again | 3 | 2 min |
| pause_transformations | the project's DAG is paused (through Airflow's API) | unpaused, if it was not paused before | 3 | 2 min |
| wait_for_runs | no run of the DAG is queued or running (retried while one is; no effects) | — | 3 | 2 min |
| unregister_transformations | the project's DAG is unregistered (no longer scheduled, gone from the UI) | registered again | 3 | 5 min |
| disable_logins | the project's login roles may no longer log in | they may again | 3 | 2 min |
| archive_repository | the repository, every ref, in `<state>/archives/` (kept) | the archive removed | 3 | 5 min |
| drop_roles | pivot: the project's roles (login, owner, reader) and what they own, in one transaction | — | 3 | 5 min |
| delete_connections | the project's Airflow connections | — (forward) | 3 | 2 min |
| remove_repository | the repository and the unregistered copy | — (forward) | 3 | 5 min |
| drop_database | the database, if the request says so and the project created it (an adopted one never) | — (forward) | 3 | 5 min |
| retire_project | the registry row moves to `platform.project_history`: the name is free | — (forward) | 3 | 2 min |
| notify_owner | tell the owner | — (forward) | 3 | 2 min |

Pausing goes through Airflow's REST API as the platform's service account
(:mod:`include.dbt_platform.adapters.airflow_api`); a run still going is waited for (the step is
retried) and, if it does not end, the saga gives the project back as it was. Without a service
account the step records that it did not pause, and unregistering alone takes the DAG away at the
dag-processor's next parse.

Until the pivot everything can be undone, so a failure there leaves the project as it was. Dropping
the roles cannot be undone (their passwords are gone): once it succeeded the saga only goes forward,
and what follows is retried (by the run, its failure callback and the recovery sweep) until done.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from functools import cache

from include.dbt_platform.adapters import git
from include.dbt_platform.boundaries import boundary
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import TransientError
from include.dbt_platform.project_creation.definition import configured
from include.dbt_platform.project_lifecycle import common
from include.dbt_platform.project_lifecycle.requests import DecommissionRequest, parse_decommission
from include.dbt_platform.saga.definition import SagaDefinition, Step, StepContext

SAGA_NAME = "dbt_project_decommission"


def _project(ctx: StepContext):
    """The project this saga holds (or held: after retire_project it is history, so None)."""
    return common.registry().project(ctx.request.project_name)


def _roles(req: DecommissionRequest, project) -> dict[str, str]:
    """Every role of the project -> the saga that made it (whose marker it carries)."""
    roles = {req.login_role(env): saga for env, (_, saga) in project.environments.items()}
    return {**roles, req.owner_role: project.saga_id, req.reader_role: project.saga_id}


def _archive_path(ctx: StepContext):
    return get_settings().state_dir / "archives" / f"{ctx.request.project_name}.{ctx.saga_id[:8]}.bundle"


def validate_request(ctx: StepContext) -> dict:
    project = common.project_of(ctx)
    return {"project_name": project.name, "owner": project.owner, "database": project.database,
            "drop_database": ctx.request.drop_database}  # fmt: skip


def claim_project(ctx: StepContext) -> dict:
    return common.claim(ctx, status_to="DECOMMISSIONING")


def pause_transformations(ctx: StepContext) -> dict:
    from include.dbt_platform.adapters import airflow_api

    project = common.project_of(ctx, claimed=True)
    api = airflow_api.configured()
    if api is None:
        return {"paused": False, "why": "no Airflow API service account configured"}
    dag = api.dag(project.name)
    if dag is None:
        return {"paused": False, "why": f"Airflow has no DAG {project.name}"}
    was_paused = bool(dag.get("is_paused"))
    if not was_paused:
        api.set_paused(project.name, True)
        # A crash here: the retry finds the DAG paused and takes it for the owner's doing, so a
        # compensation leaves it paused. The safe side: nothing runs that was meant to stop.
        boundary("DAG paused, not yet journaled")
    return {"paused": True, "was_paused": was_paused}


def unpause_transformations(ctx: StepContext) -> None:
    from include.dbt_platform.adapters import airflow_api

    result = common.journal().step(ctx.saga_id, "pause_transformations").result or {}
    api = airflow_api.configured()
    # Only what this saga paused: a DAG its owner had paused stays paused.
    if api is not None and result.get("paused") and not result.get("was_paused"):
        api.set_paused(ctx.request.project_name, False)


def wait_for_runs(ctx: StepContext) -> dict:
    from include.dbt_platform.adapters import airflow_api

    project = common.project_of(ctx, claimed=True)
    api = airflow_api.configured()
    running = api.unfinished_runs(project.name) if api is not None else []
    if running:
        raise TransientError(
            f"the DAG {project.name} still has {len(running)} run(s) going "
            f"({', '.join(running[:5])}): waiting for them to end"
        )
    return {"runs_going": 0}


def unregister_transformations(ctx: StepContext) -> dict:
    common.project_of(ctx, claimed=True)
    registered = get_settings().registry_dir / ctx.request.project_name
    return {"set_aside": str(git.move_aside(registered, ctx.saga_id))}


def register_again(ctx: StepContext) -> None:
    git.move_back(get_settings().registry_dir / ctx.request.project_name, ctx.saga_id)


def disable_logins(ctx: StepContext) -> dict:
    req: DecommissionRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    logins = {req.login_role(env): saga for env, (_, saga) in project.environments.items()}
    common.postgres().set_login(logins, allowed=False)
    return {"disabled": sorted(logins)}


def enable_logins(ctx: StepContext) -> None:
    req: DecommissionRequest = ctx.request
    project = _project(ctx)
    if project is not None:
        common.postgres().set_login(
            {req.login_role(e): s for e, (_, s) in project.environments.items()}, allowed=True
        )


def archive_repository(ctx: StepContext) -> dict:
    common.project_of(ctx, claimed=True)
    repository = get_settings().repositories_dir / ctx.request.project_name
    if not repository.exists():
        return {"archive": None}
    return {"archive": str(git.archive(repository, _archive_path(ctx)))}


def remove_archive(ctx: StepContext) -> None:
    _archive_path(ctx).unlink(missing_ok=True)


def drop_roles(ctx: StepContext) -> dict:
    req: DecommissionRequest = ctx.request
    project = common.project_of(ctx, claimed=True)
    return {"dropped": common.postgres().drop_roles(project.database, _roles(req, project))}


def delete_connections(ctx: StepContext) -> dict:
    req: DecommissionRequest = ctx.request
    project = _project(ctx)
    if project is None:
        return {"deleted": []}
    store = common.connection_store()
    deleted = [
        req.conn_id(env)
        for env, (_, saga) in project.environments.items()
        if store.delete(req.conn_id(env), saga)
    ]
    return {"deleted": deleted}


def remove_repository(ctx: StepContext) -> dict:
    project = _project(ctx)
    settings = get_settings()
    if project is not None:
        git.remove_repository(settings.repositories_dir / project.name, project.saga_id)
    aside = git.move_aside(settings.registry_dir / ctx.request.project_name, ctx.saga_id)
    shutil.rmtree(aside, ignore_errors=True)
    return {"removed": ctx.request.project_name}


def drop_database(ctx: StepContext) -> dict:
    project = _project(ctx)
    if project is None or not ctx.request.drop_database:
        return {"dropped": False}
    # drop_database checks the marker: a database adopted in 'existing' mode carries none of ours.
    return {"dropped": common.postgres().drop_database(project.database, project.saga_id)}


def retire_project(ctx: StepContext) -> dict:
    project = _project(ctx)
    if project is not None:
        kept = common.postgres().database_marker(project.database) is not None
        common.registry().retire(project.name, ctx.saga_id, database_kept=kept)
    return {"retired": ctx.request.project_name}


def notify_owner(ctx: StepContext) -> dict:
    from include.dbt_platform.adapters.registry import ProjectRecord

    journal = common.journal()
    owner = (journal.step(ctx.saga_id, "validate_request").result or {}).get("owner")
    record = ProjectRecord(ctx.request.project_name, "", owner or "data-platform-oncall", "", "", None, {})
    kept = "kept" if not ctx.request.drop_database else "dropped (if the platform created it)"
    return common.tell_owner(
        ctx,
        record,
        f"dbt project {record.name} was decommissioned",
        f"Your dbt project '{record.name}' was decommissioned: its DAG, roles, connections and repository "
        f"are gone (the repository is archived under {_archive_path(ctx).name}); its database was {kept}.\n",
    )


def _declared() -> SagaDefinition:
    db, check = common.DB_STEP, common.CHECK
    return SagaDefinition(
        name=SAGA_NAME,
        journal=common.journal,
        timeout=timedelta(minutes=30),
        parse_request=parse_decommission,
        idempotency_key=lambda params: params.get("idempotency_key") or None,
        on_alert=common.alert,
        fault_injection_enabled=lambda: get_settings().fault_injection_enabled,
        pivot="drop_roles",
        steps=[
            Step("validate_request", validate_request, None, check, timedelta(minutes=2),
                 doc="The project is ACTIVE and free. Changes nothing."),
            Step("claim_project", claim_project, common.release, db, timedelta(minutes=2),
                 doc="The project is DECOMMISSIONING, held by this saga."),
            Step("pause_transformations", pause_transformations, unpause_transformations, db,
                 timedelta(minutes=2), doc="The project's DAG is paused."),
            Step("wait_for_runs", wait_for_runs, None, db, timedelta(minutes=2),
                 doc="No run of the DAG is going. Changes nothing."),
            Step("unregister_transformations", unregister_transformations, register_again, db,
                 timedelta(minutes=5), doc="The project's DAG is no longer registered."),
            Step("disable_logins", disable_logins, enable_logins, db, timedelta(minutes=2),
                 doc="The project's login roles may no longer log in."),
            Step("archive_repository", archive_repository, remove_archive, db, timedelta(minutes=5),
                 doc="The repository, every ref, archived (and kept)."),
            Step("drop_roles", drop_roles, None, db, timedelta(minutes=5),
                 doc="Pivot: the project's roles and what they own, in one transaction."),
            Step("delete_connections", delete_connections, None, db, timedelta(minutes=2),
                 doc="The project's Airflow connections."),
            Step("remove_repository", remove_repository, None, db, timedelta(minutes=5),
                 doc="The repository and the unregistered copy."),
            Step("drop_database", drop_database, None, db, timedelta(minutes=5),
                 doc="The database, if asked and the project created it."),
            Step("retire_project", retire_project, None, db, timedelta(minutes=2),
                 doc="Into the history: the name is free again."),
            Step("notify_owner", notify_owner, None, db, timedelta(minutes=2), doc="Tell the owner."),
        ],
    )  # fmt: skip


@cache
def definition() -> SagaDefinition:
    return configured(_declared())
