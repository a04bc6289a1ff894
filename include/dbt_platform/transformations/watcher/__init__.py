"""The ``triggerer`` execution mode: Cosmos WATCHER consumers that live in the triggerer.

Cosmos' WATCHER mode runs one ``dbt build`` (the producer task) and gives every dbt node a consumer
task that reports the node's result from the producer's XComs. Each consumer still starts a worker
process twice (to defer, then to resume), so a 100-model project starts ~400 Python processes that
import Airflow and Cosmos and re-parse the DAG; on a small machine they starve the producer's own
``dbt build`` of CPU, and a deferred task's "process exited" event can race its trigger.

Here:

- every consumer *starts* in the triggerer (Airflow's ``start_from_trigger``) and *ends* there
  (``TaskSuccessEvent`` / ``TaskFailedEvent`` / ``TaskSkippedEvent``): on a first try no worker
  process is started for it. The task keeps its place in the graph, its state, its log (the
  node's dbt result line) and its retry.
- consumers are released at once (trigger rule ``always``, as Cosmos already does for root nodes):
  the triggerer's loop costs about three seconds per hop, so waiting for upstream consumers would
  add three seconds per level of the dbt graph. dbt itself enforces the order; a node downstream of
  a failure is reported failed ("skipped because an upstream node failed"), so the run fails.
- the producer also publishes every node's status in one aggregated XCom (at most twice a second),
  and one poller per DAG run in the triggerer reads it for all that run's consumers: two API calls
  per half second instead of one per consumer.
- with test behavior ``build`` (the platform's default) a model, seed or snapshot and its tests are
  one task (:class:`DbtBuildConsumerOperator`, rendered through ``RenderConfig.node_converters``):
  it reports the node's result, then its tests' aggregated result. That halves the tasks Airflow
  handles (102 instead of 202 for 100 models with a test each), which is most of the remaining cost.
- a retried or cleared consumer (try 2+) waits for the producer and for its upstream tasks, then
  resumes on a worker and runs dbt for its node alone — Cosmos' own fallback (``execute_complete``).
  So a model that failed is retried once its upstream is fine (``retries`` of the DAG's default
  args), and the nodes downstream of it are retried after it. A node the build never reached
  (the build failed early) is not re-run node by node: the run fails and is triggered again.

- a project that declares source freshness has a task per source (``<source>_<table>_source``):
  the build runs ``dbt source freshness`` first (Cosmos' ``_check_source_freshness``), leaves out
  every node that reads a source past its ``error_after`` (:func:`leave_out_readers_of_stale_sources`:
  their tasks fail, as they would after a failed model), and the source's task reports it: failed
  past ``error_after``, a warning past ``warn_after`` only.

Wire it with :func:`run_consumers_in_triggerer` on a DAG rendered in ``ExecutionMode.WATCHER`` (with
``TestBehavior.BUILD`` and ``node_converters=BUILD_NODE_CONVERTERS``, or ``TestBehavior.AFTER_EACH``).

    producer.py  the one ``dbt build``, publishing node results as chunks of what changed
    consumer.py  a node and its tests as one task; :func:`run_consumers_in_triggerer` wires a DAG
    trigger.py   the trigger that reports a node's result and ends its task in the triggerer

It imports Cosmos and Airflow only. The old module ``include.dbt_platform.cosmos_triggerer`` is an
alias kept so triggers already stored in a metadata database still deserialise.
"""

from include.dbt_platform.transformations.watcher.consumer import (
    BUILD_NODE_CONVERTERS,
    DbtBuildConsumerOperator,
    run_consumers_in_triggerer,
)
from include.dbt_platform.transformations.watcher.producer import (
    AggregatingProducerOperator,
    leave_out_readers_of_stale_sources,
)
from include.dbt_platform.transformations.watcher.trigger import TRIGGER_CLASSPATH, TaskEndingWatcherTrigger

__all__ = [
    "BUILD_NODE_CONVERTERS",
    "TRIGGER_CLASSPATH",
    "AggregatingProducerOperator",
    "DbtBuildConsumerOperator",
    "TaskEndingWatcherTrigger",
    "run_consumers_in_triggerer",
    "leave_out_readers_of_stale_sources",
]
