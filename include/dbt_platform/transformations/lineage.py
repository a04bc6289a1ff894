"""OpenLineage events for dbt runs: a START and a COMPLETE (or FAIL) per model, in both execution modes.

Airflow's OpenLineage provider emits a START and an end event for every task it runs, with what the
operator reports; Cosmos' local operators report the inputs and outputs of the nodes they ran (from
dbt's manifest and run results, through OpenLineage's dbt integration). So:

- LOCAL: each model's task runs its node, and the provider's events for that task carry the model's
  inputs and outputs. Nothing to add.
- triggerer / watcher: one task (the producer) runs ``dbt build``; the node tasks end in the
  triggerer, where no listener runs. The provider's events for the producer carry every output
  merged; this module adds, after the build (from the producer's callbacks, once its state is
  reported: ``watcher/producer.py``), each model's (and snapshot's) own START and COMPLETE
  or FAIL, as the job of the node's task (``<dag_id>.<task_id>``, child of the DAG run, like the
  provider's), at the times dbt ran it, with its inputs, output, SQL and dbt facets. A node task
  retried on a worker runs in LOCAL fashion: the provider emits for that try.

The events go through the provider's adapter, so its configuration applies: the transport
(``[openlineage] transport``: a file in the local stack, HTTP for Marquez), the namespace, the
switch-off (``[openlineage] disabled``). A node event's run id is the one the provider would give
the node's task at the producer's try number (a cleared run clears both).
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def capturing_processor(base: type, sink: dict) -> type:
    """OpenLineage's dbt artifact processor, keeping every event it parses (Cosmos keeps only the
    completions; a failed node's event is a FAIL)."""

    class Capturing(base):
        def parse(self):
            sink["events"] = events = super().parse()
            return events

    return Capturing


def node_tasks(dag: Any) -> dict[str, str]:
    """The task of each dbt node (``unique_id`` -> task id); a node's tests' task never wins."""
    found: dict[str, str] = {}
    for task in dag.tasks:
        node = (getattr(task, "extra_context", None) or {}).get("dbt_node_config") or {}
        uid = node.get("unique_id")
        if uid and (uid not in found or "test" in found[uid].rsplit(".", 1)[-1]):
            found[uid] = task.task_id
    return found


def emit_node_events(dag: Any, context: Any, dbt_events: Any, deadline: float | None = None) -> int:
    """Emit each model's START and COMPLETE/FAIL as its own task's (see the module). Returns how many
    events were sent. Never raises: lineage must not fail a build. Past ``deadline`` (a
    ``time.monotonic()``), it stops and says how many models it left out."""
    if dbt_events is None:
        return 0
    try:
        from airflow.providers.openlineage.conf import is_disabled

        if is_disabled():
            return 0
        return _emit(dag, context, dbt_events, deadline)
    except Exception:  # noqa: BLE001 - lineage is best effort
        log.warning("could not emit the dbt nodes' OpenLineage events", exc_info=True)
        return 0


def _emit(dag: Any, context: Any, dbt_events: Any, deadline: float | None = None) -> int:
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.providers.openlineage.plugins.adapter import OpenLineageAdapter
    from airflow.providers.openlineage.utils.utils import get_task_parent_run_facet

    adapter = OpenLineageAdapter()
    tasks = node_tasks(dag)
    dag_run, ti = context["dag_run"], context["ti"]
    date = dag_run.logical_date or dag_run.run_after
    parent = get_task_parent_run_facet(
        parent_run_id=adapter.build_dag_run_id(
            dag_id=dag.dag_id, logical_date=date, clear_number=dag_run.clear_number
        ),
        parent_job_name=dag.dag_id,
        dr_conf=getattr(dag_run, "conf", None) or {},
    )
    # dbt's integration gives a model's run and its tests' assertions as two events: one task's
    # lineage, merged as Cosmos merges them in LOCAL (the tests' assertions ride on the inputs).
    ends: dict[str, list] = {}
    for event in [*dbt_events.completes, *dbt_events.fails]:
        ends.setdefault(_unique_id(event) or "", []).append(event)
    starts = {e.run.runId: e.eventTime for e in dbt_events.starts}  # a start shares its end's run id
    sent = 0
    for done, (uid, events) in enumerate(ends.items()):
        if deadline is not None and time.monotonic() > deadline:
            log.warning(
                "OpenLineage: out of time after %s of %s dbt node(s); the others' events are not sent "
                "(raise [core] task_success_overtime: Airflow ends the build task's process that long "
                "after it succeeded)",
                done,
                len(ends),
            )
            return sent
        task_id = tasks.get(uid)
        if task_id is None:
            continue
        lineage = OperatorLineage(
            inputs=_unique(d for e in events for d in e.inputs or []),
            outputs=_unique(d for e in events for d in e.outputs or []),
            run_facets={k: v for e in reversed(events) for k, v in (e.run.facets or {}).items()},
            job_facets={k: v for e in reversed(events) for k, v in (e.job.facets or {}).items()},
        )
        common = {
            "run_id": adapter.build_task_instance_run_id(
                dag_id=dag.dag_id, task_id=task_id, try_number=ti.try_number, logical_date=date, map_index=-1
            ),
            "job_name": f"{dag.dag_id}.{task_id}",
            "nominal_start_time": _iso(dag_run.data_interval_start),
            "nominal_end_time": _iso(dag_run.data_interval_end),
            "owners": [o.strip() for o in str(dag.owner).split(",")],
            "tags": sorted(dag.tags or []),
            "job_description": None,
            "run_facets": parent,
        }
        end_time = max(e.eventTime for e in events)
        adapter.start_task(
            event_time=starts.get(uid) or min(e.eventTime for e in events), task=lineage, **common
        )
        if any(e in dbt_events.fails for e in events):
            adapter.fail_task(end_time=end_time, task=lineage, error=f"dbt node {uid} failed", **common)
        else:
            adapter.complete_task(end_time=end_time, task=lineage, **common)
        sent += 2
    log.info("OpenLineage: emitted START and COMPLETE/FAIL for %s dbt node(s) of the build", sent // 2)
    return sent


def _unique_id(event: Any) -> str | None:
    facet = (event.job.facets or {}).get("dbt_node")
    return getattr(facet, "unique_id", None)


def _job_type(event: Any) -> str | None:
    return getattr((event.job.facets or {}).get("jobType"), "jobType", None)


def _unique(datasets) -> list:
    seen, kept = set(), []
    for dataset in datasets:
        key = (dataset.namespace, dataset.name)
        if key not in seen:
            seen.add(key)
            kept.append(dataset)
    return kept


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if hasattr(moment, "isoformat") else moment
