"""Who the caller is and what they may do, decided by Airflow itself.

The caller is authenticated exactly as Airflow's REST API authenticates (its ``get_user``: a bearer
token, else the UI's ``_token`` cookie); what they may do is asked of the configured auth manager
through its public API (``is_authorized_dag``, ``get_authorized_dag_ids``), never of a particular
one: SimpleAuthManager's roles today, FAB's permissions tomorrow, no change here.

| action | needs (the same as Airflow's own endpoints) |
|---|---|
| list sagas | read access to the saga's DAG (only those sagas are listed) |
| read a saga | read access to the runs of its DAG |
| re-drive a saga | trigger rights (``POST`` on DAG runs) on the saga's DAG and on ``saga_recovery`` |
| read a project | read access to its DAG (every DAG, or the project's through its owner role) |
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from include.dbt_platform.console.runs import RECOVERY_DAG_ID

Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


async def caller(request: Request, bearer: Bearer) -> BaseUser:
    """The authenticated user; HTTP 401 without credentials, 403 with an invalid token (as Airflow)."""
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, bearer)


async def caller_or_none(request: Request, bearer: Bearer) -> BaseUser | None:
    """For pages: None when the caller must log in first (no token, or one that expired or is bad)."""
    try:
        return await caller(request, bearer)
    except HTTPException as exc:
        if exc.status_code in (401, 403):
            return None
        raise


Caller = Annotated[BaseUser, Depends(caller)]
PageCaller = Annotated[BaseUser | None, Depends(caller_or_none)]


def login_url(request: Request) -> str:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_url_login(next_url=str(request.url))


def user_name(user: BaseUser) -> str:
    return user.get_name()


def readable_dag_ids(user: BaseUser) -> set[str]:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager().get_authorized_dag_ids(user=user, method="GET")


def may_read_dag(user: BaseUser, dag_id: str) -> bool:
    """Whether the user may read the DAG ``dag_id``, whether or not Airflow has parsed it yet (or still
    has it): every DAG, or that one by its DAG-level permission. No team lookup (one query per DAG;
    the platform does not use Airflow's multi-team mode)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user)


def _may(user: BaseUser, method: str, dag_id: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    return get_auth_manager().is_authorized_dag(
        method=method,
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id)),
        user=user,
    )


def may_read(user: BaseUser, dag_id: str) -> bool:
    return _may(user, "GET", dag_id)


def may_redrive(user: BaseUser, saga_dag_id: str) -> bool:
    return _may(user, "POST", saga_dag_id) and _may(user, "POST", RECOVERY_DAG_ID)
