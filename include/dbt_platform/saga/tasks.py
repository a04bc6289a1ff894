"""The Airflow task graph of a saga, built from its definition (see :mod:`.engine` for the shape)."""

from __future__ import annotations

from typing import Any

from include.dbt_platform.saga import engine
from include.dbt_platform.saga.definition import SagaDefinition
from include.dbt_platform.saga.engine import compensate_task, report_outcome, run_step
from include.dbt_platform.saga.recovery import recover_run


def build_tasks(definition: SagaDefinition) -> dict[str, Any]:
    """Create the saga's tasks in the current DAG context and wire them: a task per step, in a chain
    (the first also waits for the requester's turn, the last also completes the saga), then
    ``compensate`` and ``report_outcome``."""
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import TriggerRule, chain

    bookkeeping = definition.task_retry
    pool = {"pool": definition.pool} if definition.pool else {}
    forward = []
    for number, step in enumerate(definition.steps):
        # The first step waits for the requester's turn when there is a limit: its checks, every few
        # seconds, must not take the pool's slots from other sagas' work.
        waits = number == 0 and bool(definition.per_requester)
        forward.append(
            PythonOperator(
                task_id=step.name,
                python_callable=_bind(run_step, definition, step),
                retries=step.retry.retries,
                retry_delay=step.retry.delay,
                retry_exponential_backoff=True,
                max_retry_delay=step.retry.max_delay,
                execution_timeout=step.timeout,
                doc_md=step.doc or None,
                **({} if waits else pool),
            )
        )
    compensate = PythonOperator(  # noqa: AIR001 - name of the graph role
        task_id="compensate",
        python_callable=_bind(compensate_task, definition),
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=bookkeeping.retries,
        retry_delay=bookkeeping.delay,
        retry_exponential_backoff=True,
        doc_md="Runs only when a forward step failed for good: undoes, newest first, what this saga did.",
        **pool,
    )
    outcome = PythonOperator(  # noqa: AIR001 - name of the graph role
        task_id="report_outcome",
        python_callable=_bind(report_outcome, definition),
        trigger_rule=TriggerRule.ALL_DONE,
        retries=bookkeeping.retries,
        retry_delay=bookkeeping.delay,
        doc_md="The run's verdict: succeeds only when the saga COMPLETED.",
    )
    if definition.per_requester:
        forward[0].doc_md = (
            f"{forward[0].doc_md or ''}\n\nFirst waits, rescheduled every "
            f"{engine.TURN_POKE_INTERVAL.total_seconds():.0f} s, until the requester has fewer than "
            f"{definition.per_requester} sagas going."
        ).strip()
    chain(*forward)
    # Only the steps up to the pivot: a failure after it is retried forward by the failure callback and
    # the recovery sweep, never compensated.
    names = [s.name for s in definition.steps]
    last = names.index(definition.pivot) if definition.pivot else len(names) - 1
    for task in forward[: last + 1]:
        task >> compensate
    [forward[-1], compensate] >> outcome
    return {"forward": forward, "compensate": compensate, "outcome": outcome}


def _bind(fn, *args):
    def call(**context):
        return fn(*args, context)

    call.__name__ = fn.__name__
    return call


def failure_callback(definition: SagaDefinition):
    """The DAG's ``on_failure_callback`` (run by the dag-processor): also fires on ``dagrun_timeout``,
    when Airflow marks the unfinished tasks skipped and ``compensate`` never runs."""

    def compensate_unfinished_saga(context) -> None:
        run = context["dag_run"]
        recover_run(
            definition, run.dag_id, run.run_id, reason=f"run ended {run.state}: {context.get('reason')}"
        )

    return compensate_unfinished_saga


def saga_dag(
    definition: SagaDefinition, *, params: dict, doc_md: str, tags: list[str], triggered_by: str | None = None
):
    """The saga's DAG (id: the saga's name): its params as the trigger form, manual and REST triggers
    only, ``dagrun_timeout`` the saga's timeout, the failure callback that finishes what the run left.
    ``triggered_by``: a role (of the FAB auth manager) granted to read and trigger this DAG."""
    from datetime import UTC, datetime

    from airflow.sdk import DAG

    with DAG(
        dag_id=definition.name,
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=definition.max_active_runs,
        dagrun_timeout=definition.timeout,
        params=params,
        doc_md=doc_md,
        tags=tags,
        default_args={"owner": "data-platform"},
        on_failure_callback=failure_callback(definition),
        render_template_as_native_obj=True,
        access_control=(
            {triggered_by: {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}}
            if triggered_by
            else None
        ),
    ) as dag:
        build_tasks(definition)
    return dag
