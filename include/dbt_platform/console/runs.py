"""The Airflow side of the console: the DAG runs behind sagas, read from Airflow's metadata database,
and the re-drive, which is a run of ``saga_recovery`` created the way Airflow's own trigger endpoint
creates one (same validation, the person as ``triggering_user_name``, a note saying why).

Runs in the api-server, where Airflow's ORM session is at hand; nothing here runs in a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from include.dbt_platform.console.presentation import RunFacts

# dags/saga_recovery.py: conf {"saga_id": ...} re-drives one FAILED saga (docs/operations.md).
RECOVERY_DAG_ID = "saga_recovery"
UNFINISHED_RUN_STATES = ("queued", "running")


def run_facts(runs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], RunFacts]:
    """What Airflow knows of each ``(dag_id, run_id)``: one query for a whole page of sagas."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    wanted = set(runs)
    if not wanted:
        return {}
    query = select(
        DagRun.dag_id,
        DagRun.run_id,
        DagRun.state,
        DagRun.run_type,
        DagRun.triggered_by,
        DagRun.triggering_user_name,
    ).where(
        DagRun.dag_id.in_({dag_id for dag_id, _ in wanted}),
        DagRun.run_id.in_({run_id for _, run_id in wanted}),
    )
    with create_session() as session:
        rows = session.execute(query).all()
    return {
        (r.dag_id, r.run_id): RunFacts(
            state=_value(r.state),
            run_type=_value(r.run_type),
            triggered_by=_value(r.triggered_by),
            triggering_user_name=r.triggering_user_name,
        )
        for r in rows
        if (r.dag_id, r.run_id) in wanted
    }


def _value(enum_or_str) -> str | None:
    return getattr(enum_or_str, "value", enum_or_str)


@dataclass(frozen=True)
class Redrive:
    recovery_dag_id: str
    recovery_run_id: str
    paused: bool  # saga_recovery is paused: the run waits, queued, until someone unpauses it


class RedriveRefused(Exception):
    """Airflow would not create the recovery run; the message says why."""


def new_recovery_run_id(saga_id: str, now: datetime | None = None) -> str:
    return f"redrive__{saga_id}__{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%S%fZ')}"


def trigger_recovery(saga_id: str, run_id: str, *, user_name: str, from_ui: bool) -> Redrive:
    """Create the ``saga_recovery`` run that re-drives ``saga_id``, as Airflow's ``POST
    /api/v2/dags/saga_recovery/dagRuns`` would for this person (the caller checked they may)."""
    from airflow.api_fastapi.common.dagbag import create_dag_bag, get_latest_version_of_dag
    from airflow.api_fastapi.core_api.datamodels.dag_run import TriggerDAGRunPostBody
    from airflow.exceptions import ParamValidationError
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    with create_session() as session:
        dag_model = session.scalar(
            select(DagModel).where(~DagModel.is_stale, DagModel.dag_id == RECOVERY_DAG_ID).limit(1)
        )
        if dag_model is None or dag_model.has_import_errors:
            raise RedriveRefused(f"the DAG {RECOVERY_DAG_ID} is not loaded (missing or import errors)")
        try:
            dag = get_latest_version_of_dag(create_dag_bag(), RECOVERY_DAG_ID, session)
            body = TriggerDAGRunPostBody(dag_run_id=run_id, logical_date=None, conf={"saga_id": saga_id})
            params = body.validate_context(dag)
            dag.create_dagrun(
                run_id=params["run_id"],
                logical_date=params["logical_date"],
                data_interval=params["data_interval"],
                run_after=params["run_after"],
                conf=params["conf"],
                run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.UI if from_ui else DagRunTriggeredByType.REST_API,
                triggering_user_name=user_name,
                state=DagRunState.QUEUED,
                partition_key=params["partition_key"],
                partition_date=params["partition_date"],
                note=f"Re-drive of saga {saga_id}, asked for by {user_name} in the Sagas view.",
                session=session,
            )
        except (ParamValidationError, ValueError) as exc:
            raise RedriveRefused(str(exc)) from exc
        return Redrive(RECOVERY_DAG_ID, run_id, paused=bool(dag_model.is_paused))
