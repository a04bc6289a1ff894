"""The project-creation saga, declared in one place: nine steps in order, each with its compensation,
retry policy and timeout.

| step | does | compensation | retries | timeout |
|---|---|---|---|---|
| validate_request | checks the request (no effects) | — | 2 | 2 min |
| create_project | registry row, status PROVISIONING | delete the row | 3 | 2 min |
| provision_database | CREATE DATABASE (new) / verify (existing) | drop it if this saga created it | 3 | 5 min |
| create_environments | one schema per environment + records | drop exactly the schemas this saga made | 3 | 5 min |
| setup_repository | git repo with a dbt scaffold, initial commit | remove the repo | 3 | 5 min |
| create_credentials | LOGIN role per environment + Airflow connection | drop roles, delete connections | 3 | 5 min |
| assign_entitlements | owner/reader roles, grants, reader groups | revoke and drop | 3 | 5 min |
| register_transformations | the project gets its own Cosmos DAG | unregister | 3 | 5 min |
| notify_owner | pivot: notify the owner | — | 3 | 2 min |

Retries back off exponentially from 5 s (at most a minute apart). Once the owner is notified (the
pivot), the saga only goes forward: a later failure is retried until the saga completes. The whole saga has 30 minutes
(the DAG's ``dagrun_timeout``). ``DBT_PLATFORM_SAGA_TIMEOUTS`` and
``DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS`` override them for drills and tests.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from functools import cache

from include.dbt_platform.adapters.breaker import record_unavailable
from include.dbt_platform.config import get_settings
from include.dbt_platform.project_creation import steps, validation
from include.dbt_platform.project_creation.request import idempotency_key_of, parse_request
from include.dbt_platform.saga.definition import RetryPolicy, SagaDefinition, Step

SAGA_NAME = steps.SAGA_NAME
DB_STEP = RetryPolicy(retries=3, delay=timedelta(seconds=5), max_delay=timedelta(minutes=1))


def _declared() -> SagaDefinition:
    return SagaDefinition(
        name=SAGA_NAME,
        journal=steps.journal,
        timeout=timedelta(minutes=30),
        parse_request=parse_request,
        idempotency_key=idempotency_key_of,
        on_alert=steps.alert,
        on_completed=steps.mark_active,
        fault_injection_enabled=lambda: get_settings().fault_injection_enabled,
        pivot="notify_owner",
        steps=[
            Step(
                "validate_request",
                validation.validate_request,
                retry=RetryPolicy(retries=2),
                timeout=timedelta(minutes=2),
                doc="Checks the request. A bad request fails at once, changing nothing.",
            ),
            Step(
                "create_project",
                steps.create_project,
                steps.delete_project,
                DB_STEP,
                timedelta(minutes=2),
                doc="Registry row for the project (PROVISIONING). Exactly one saga wins a name.",
            ),
            Step(
                "provision_database",
                steps.provision_database,
                steps.drop_database,
                DB_STEP,
                timedelta(minutes=5),
                doc="CREATE DATABASE (mode new) or verify it (mode existing).",
            ),
            Step(
                "create_environments",
                steps.create_environments,
                steps.drop_environments,
                DB_STEP,
                timedelta(minutes=5),
                doc="One schema per environment.",
            ),
            Step(
                "setup_repository",
                steps.setup_repository,
                steps.remove_repository,
                DB_STEP,
                timedelta(minutes=5),
                doc="A git repository with a runnable dbt project scaffold.",
            ),
            Step(
                "create_credentials",
                steps.create_credentials,
                steps.drop_credentials,
                DB_STEP,
                timedelta(minutes=5),
                doc="A LOGIN role per environment; its password goes only to the Airflow connection.",
            ),
            Step(
                "assign_entitlements",
                steps.assign_entitlements,
                steps.revoke_entitlements,
                DB_STEP,
                timedelta(minutes=5),
                doc="Owner and reader roles, grants, default privileges, reader groups.",
            ),
            Step(
                "register_transformations",
                steps.register_transformations,
                steps.unregister_transformations,
                DB_STEP,
                timedelta(minutes=5),
                doc="The project gets its own Cosmos transformation DAG.",
            ),
            Step(
                "notify_owner",
                steps.notify_owner,
                None,
                DB_STEP,
                timedelta(minutes=2),
                doc="Pivot: tell the owner. After this the saga only completes.",
            ),
        ],
    )


def configured(saga: SagaDefinition) -> SagaDefinition:
    """A saga with the operators' overrides from the settings applied (drills and tests shorten them):
    ``DBT_PLATFORM_SAGA_TIMEOUTS`` (the names of this saga's steps, and ``saga``) and
    ``DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS``, and the back-pressure settings (runs at once, the
    pool, sagas per requester). Every saga of the platform reads the same settings."""
    settings = get_settings()
    known = {"saga", *(s.name for s in saga.steps)}
    saga = saga.with_timeouts({k: v for k, v in settings.saga_timeouts.items() if k in known})
    if settings.saga_retry_delay_seconds is not None:
        saga = saga.with_retry_delay(timedelta(seconds=settings.saga_retry_delay_seconds))
    return replace(
        saga,
        max_active_runs=settings.saga_max_active_runs,
        pool=settings.saga_pool,
        per_requester=settings.sagas_per_requester,
        on_unavailable=record_unavailable,
    )


@cache
def definition() -> SagaDefinition:
    """The project-creation saga as declared, with the operators' overrides applied."""
    return configured(_declared())
