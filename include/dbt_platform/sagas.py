"""Every saga the platform runs, by name (what ``saga_recovery`` finishes and re-drives)."""

from __future__ import annotations

import json

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


def lineage_emission_policy() -> str:
    """The ``[openlineage] emission_policy`` the platform's deployments set: no OpenLineage task
    events from the sagas' tasks; their DAG-run events stay.

    A saga's steps read and write no dataset, so their START and COMPLETE events carry nothing a
    lineage backend uses (a saga is observed through its journal, metrics and trace); the START event
    took ~0.05 s of every step's critical path here, the COMPLETE as much again of its process after
    the state was reported (building each event, masking secrets in it, the transport). A
    deployment-wide rule rather than the provider's per-task authoring flag: that flag is a task
    param, and a task's params reach the saga's request, which refuses keys it does not know.
    """
    return json.dumps(
        [
            {"scope": {"dag_id": name}, "controls": {"emit_task_events": False}}
            for name in sorted(definitions())
        ]
    )
