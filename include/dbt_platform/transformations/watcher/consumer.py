"""Consumers: one task per dbt node (a node and its tests with test behavior ``build``), started and
ended in the triggerer; :func:`run_consumers_in_triggerer` turns a Cosmos WATCHER DAG into this mode."""

from __future__ import annotations

from typing import Any

from airflow.triggers.base import StartTriggerArgs
from cosmos.constants import DbtResourceType
from cosmos.operators._watcher.base import BaseConsumerSensor
from cosmos.operators.watcher import DbtConsumerWatcherSensor, DbtProducerWatcherOperator

from include.dbt_platform.transformations.watcher.producer import AggregatingProducerOperator
from include.dbt_platform.transformations.watcher.trigger import TRIGGER_CLASSPATH


class DbtBuildConsumerOperator(DbtConsumerWatcherSensor):
    """A dbt model, seed or snapshot *and its tests* as one task (Cosmos' ``TestBehavior.BUILD``).

    In the triggerer it reports the node's result, then its tests' aggregated result, from the one
    ``dbt build``. Run on a worker (a retry, a cleared task) it runs ``dbt build --select <node>``:
    the node and its tests. Cosmos' WATCHER mode has no such task (its ``DbtBuildWatcherOperator``
    raises); this mode renders it through ``RenderConfig.node_converters``.
    """

    base_cmd = ["build"]


def _convert_to_build_consumer(
    *, dag, task_group, node, task_args, task_id, enable_owner_inheritance: bool = True, **_: Any
):
    from cosmos.airflow.graph import _get_dbt_dag_task_group_identifier

    kwargs = dict(task_args)
    if node.owner and enable_owner_inheritance:  # as Cosmos does: else the DAG's default owner
        kwargs["owner"] = node.owner
    return DbtBuildConsumerOperator(
        task_id=task_id,
        dag=dag,
        task_group=task_group,
        extra_context={
            "dbt_node_config": node.context_dict,
            "dbt_dag_task_group_identifier": _get_dbt_dag_task_group_identifier(dag, task_group),
            "package_name": node.package_name,
        },
        **kwargs,
    )


# For RenderConfig(test_behavior=TestBehavior.BUILD, node_converters=BUILD_NODE_CONVERTERS).
BUILD_NODE_CONVERTERS = {
    DbtResourceType.MODEL: _convert_to_build_consumer,
    DbtResourceType.SEED: _convert_to_build_consumer,
    DbtResourceType.SNAPSHOT: _convert_to_build_consumer,
}


def run_consumers_in_triggerer(dag, poke_interval: float = 0.5) -> int:
    """Make every Cosmos watcher consumer of ``dag`` start and end in the triggerer. Returns how many."""
    from airflow.sdk import TriggerRule

    count = 0
    producers = [t for t in dag.tasks if isinstance(t, DbtProducerWatcherOperator)]
    tests_per_model = producers[0].tests_per_model if producers else {}
    for task in dag.tasks:
        if isinstance(task, DbtProducerWatcherOperator):
            AggregatingProducerOperator.specialise(task)
            task.retries = 0  # a second build would be skipped by Cosmos anyway; the run just fails
            continue
        if not isinstance(task, BaseConsumerSensor) or not task.model_unique_id:
            continue
        task.trigger_rule = TriggerRule.ALWAYS
        task.start_from_trigger = True
        task.start_trigger_args = StartTriggerArgs(
            trigger_cls=TRIGGER_CLASSPATH,
            trigger_kwargs={
                "model_unique_id": task.model_unique_id,
                "producer_task_id": task.producer_task_id,
                "dag_id": dag.dag_id,
                "poke_interval": poke_interval,
                "is_test_sensor": task.is_test_sensor,
                "upstream_task_ids": sorted(set(task.upstream_task_ids) - {task.producer_task_id}),
                "with_tests": isinstance(task, DbtBuildConsumerOperator)
                and bool(tests_per_model.get(task.model_unique_id)),
                # Its asset: registered by the triggerer, or the task ends on a worker (trigger.py).
                "emits_assets": bool(task.outlets),
            },
            next_method="execute_complete",
            next_kwargs=None,
            timeout=None,
        )
        count += 1
    return count
