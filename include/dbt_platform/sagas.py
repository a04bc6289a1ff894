"""Every saga the platform runs, by name (what ``saga_recovery`` finishes and re-drives)."""

from __future__ import annotations

from include.dbt_platform.saga.definition import SagaDefinition


def definitions() -> dict[str, SagaDefinition]:
    from include.dbt_platform.project_creation import definition as create
    from include.dbt_platform.project_lifecycle import add_environment, decommission, rotate_credentials

    sagas = [
        create.definition(),
        add_environment.definition(),
        rotate_credentials.definition(),
        decommission.definition(),
    ]
    return {saga.name: saga for saga in sagas}
