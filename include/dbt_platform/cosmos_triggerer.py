"""Cosmos WATCHER consumers that live in the triggerer: no worker process per dbt node.

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

Wire it with :func:`run_consumers_in_triggerer` on a DAG rendered in ``ExecutionMode.WATCHER`` (with
``TestBehavior.BUILD`` and ``node_converters=BUILD_NODE_CONVERTERS``, or ``TestBehavior.AFTER_EACH``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import (
    StartTriggerArgs,
    TaskFailedEvent,
    TaskSkippedEvent,
    TaskSuccessEvent,
    TriggerEvent,
)
from cosmos.constants import DbtResourceType
from cosmos.listeners.dag_run_listener import EventStatus
from cosmos.operators._watcher.aggregation import get_tests_status_xcom_key
from cosmos.operators._watcher.base import BaseConsumerSensor
from cosmos.operators._watcher.state import (
    PRODUCER_FINAL_STATES,
    DbtTestStatus,
    ProducerTaskState,
    get_dbt_event_xcom_key,
    get_status_xcom_key,
    is_dbt_node_status_failed,
    is_dbt_node_status_skipped,
    is_dbt_node_status_success,
    xcom_set_lock,
)
from cosmos.operators._watcher.triggerer import WatcherEventReason, WatcherTrigger
from cosmos.operators.watcher import DbtConsumerWatcherSensor, DbtProducerWatcherOperator

TRIGGER_CLASSPATH = f"{__name__}.TaskEndingWatcherTrigger"
AGGREGATE_XCOM_KEY = "dbt_platform_node_results"
CHUNK_COUNT_XCOM_KEY = f"{AGGREGATE_XCOM_KEY}_chunks"
UNFINISHED_TASK_STATES = {None, "none", "scheduled", "queued", "running", "deferred", "up_for_retry",
                          "up_for_reschedule", "restarting"}  # fmt: skip


# ------------------------------------------------------------------------------------- producer


class _RecordingTaskInstance:
    """Stands in for the producer's task instance inside Cosmos' log parser.

    Cosmos pushes three XComs per dbt node (status, result line, compiled SQL), each an API round
    trip made while holding a lock, from dbt's own threads: measured here, that doubled the time of
    the producer's ``dbt build``. Node statuses and result lines are kept in memory instead, and a
    flusher thread publishes what changed at most twice a second, as numbered chunks
    (:func:`chunk_xcom_key`, then their count under ``CHUNK_COUNT_XCOM_KEY``); the build's end
    publishes every result in one XCom (``AGGREGATE_XCOM_KEY``). Chunks keep the bytes moved in
    proportion to the project: re-publishing everything twice a second moved ~240 MB through the API
    server and the triggerer in a 1,000-model build. The compiled SQL is not pushed (a task re-run on
    a worker compiles its own). Other XComs go through.
    """

    def __init__(self, ti: Any, interval: float = 0.5) -> None:
        self._ti, self._interval = ti, interval
        self._results: dict[str, Any] = {}
        self._changed: dict[str, Any] = {}
        self._chunks = 0
        self._pushing = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self._flusher.start()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_cosmos_xcom_backup"):
            # Cosmos' "reliable retry" rewrites its whole XCom backup to a Variable on every push
            # (1,408 writes in one 100-model run here). It only serves a retried producer, and this
            # mode runs the producer once (retries=0): a failed build fails the run.
            return None
        return getattr(self._ti, name)

    def xcom_push(self, key: str, value: Any, **kwargs: Any) -> None:
        if key.endswith("_compiled_sql"):
            return
        if key.endswith("_dbt_event"):
            value = {"msg": value.get("msg")} if isinstance(value, dict) else value
        elif not key.endswith("_status"):
            self._ti.xcom_push(key=key, value=value, **kwargs)
            return
        self._results[key] = value  # Cosmos' parser holds xcom_set_lock here
        self._changed[key] = value

    def flush(self) -> None:
        # Take the changes under Cosmos' lock, push outside it: dbt's threads take that lock for
        # every node event and must not wait on an API round trip.
        with self._pushing:
            with xcom_set_lock:
                if not self._changed:
                    return
                chunk, self._changed = self._changed, {}
            self._chunks += 1
            self._ti.xcom_push(key=chunk_xcom_key(self._chunks), value=chunk)
            self._ti.xcom_push(key=CHUNK_COUNT_XCOM_KEY, value=self._chunks)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        self.flush()
        if self._results:
            self._ti.xcom_push(key=AGGREGATE_XCOM_KEY, value=dict(self._results))


def chunk_xcom_key(number: int) -> str:
    """The XCom holding the producer's ``number``-th chunk of node results (from 1)."""
    return f"{AGGREGATE_XCOM_KEY}_chunk_{number}"


class AggregatingProducerOperator(DbtProducerWatcherOperator):
    """Cosmos' watcher producer, also publishing every node's result in one aggregated XCom."""

    def run_dbt_runner(self, command: list[str], env: dict[str, str], cwd: str, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        if context is None or context.get("_check_source_freshness"):
            return super().run_dbt_runner(command, env, cwd, **kwargs)
        recorder = _RecordingTaskInstance(context["ti"])
        kwargs["context"] = {**context, "ti": recorder, "task_instance": recorder}
        try:
            return super().run_dbt_runner(command, env, cwd, **kwargs)
        finally:
            recorder.close()


# ----------------------------------------------------------------------------- one task per node


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


# ------------------------------------------------------------------------------------- triggerer


class _RunWatch:
    """One poller per DAG run in this triggerer process, shared by all that run's consumer triggers."""

    watches: dict[tuple[str, str, str], _RunWatch] = {}

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.producer_state: str | None = None
        self.chunks_read = 0
        self.changed = asyncio.Condition()
        self.users = 0
        self.task: asyncio.Task | None = None

    @classmethod
    def acquire(cls, trigger: TaskEndingWatcherTrigger) -> _RunWatch:
        key = (trigger.dag_id, trigger.run_id, trigger.producer_task_id)
        watch = cls.watches.get(key)
        if watch is None:
            watch = cls.watches[key] = _RunWatch()
        watch.users += 1
        if watch.task is None or watch.task.done():
            watch.task = asyncio.get_running_loop().create_task(watch._poll(trigger, key))
        return watch

    def release(self) -> None:
        self.users -= 1

    async def _poll(self, trigger: TaskEndingWatcherTrigger, key) -> None:
        try:
            while self.users > 0:
                try:
                    state = await trigger._get_producer_task_status()
                    # Read the results after the state: a final state then comes with final results.
                    new = await self._read_new_results(trigger, state)
                except Exception as exc:  # noqa: BLE001 - an API hiccup must not strand the run's tasks
                    await trigger._say(
                        "warning", "reading the build's results failed; retrying", exc_info=exc
                    )
                    await asyncio.sleep(max(trigger.poke_interval, 1.0))
                    continue
                async with self.changed:
                    if new or state != self.producer_state:
                        self.producer_state = state
                        self.results.update(new)
                        self.changed.notify_all()
                await asyncio.sleep(trigger.poke_interval)
        finally:
            if self.users <= 0:
                self.watches.pop(key, None)

    async def _read_new_results(self, trigger: TaskEndingWatcherTrigger, state: str | None) -> dict:
        """The results published since the last read: the new chunks, or all at once after the build."""
        if state in PRODUCER_FINAL_STATES and self.chunks_read == 0:
            whole = await trigger.get_xcom_val(AGGREGATE_XCOM_KEY)
            if whole is not None:
                self.chunks_read = -1  # read in one go; no chunks needed any more
                return whole
        if self.chunks_read < 0:
            return {}
        count = await trigger.get_xcom_val(CHUNK_COUNT_XCOM_KEY) or 0
        new: dict[str, Any] = {}
        while self.chunks_read < count:
            chunk = await trigger.get_xcom_val(chunk_xcom_key(self.chunks_read + 1))
            if chunk is None:  # not readable yet: the next poll picks it up
                break
            new.update(chunk)
            self.chunks_read += 1
        return new

    async def wait(self) -> None:
        async with self.changed:
            await self.changed.wait()


class TaskEndingWatcherTrigger(WatcherTrigger):
    """Reports one dbt node's result from the producer and ends the task in the triggerer.

    The run id comes from the task instance the triggerer hands to a ``start_from_trigger`` task,
    so the kwargs are static (fixed when the DAG is serialised).
    """

    def __init__(
        self,
        model_unique_id: str,
        producer_task_id: str,
        dag_id: str,
        run_id: str | None = None,
        map_index: int | None = -1,
        poke_interval: float = 0.5,
        is_test_sensor: bool = False,
        upstream_task_ids: list[str] | None = None,
        with_tests: bool = False,
    ) -> None:
        super().__init__(
            model_unique_id=model_unique_id,
            producer_task_id=producer_task_id,
            dag_id=dag_id,
            run_id=run_id or "",
            map_index=map_index,
            poke_interval=poke_interval,
            is_test_sensor=is_test_sensor,
        )
        self.upstream_task_ids = list(upstream_task_ids or [])
        self.with_tests = with_tests  # a build task: the node, then its tests

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            TRIGGER_CLASSPATH,
            {
                "model_unique_id": self.model_unique_id,
                "producer_task_id": self.producer_task_id,
                "dag_id": self.dag_id,
                "run_id": self.run_id or None,
                "map_index": self.map_index,
                "poke_interval": self.poke_interval,
                "is_test_sensor": self.is_test_sensor,
                "upstream_task_ids": self.upstream_task_ids,
                "with_tests": self.with_tests,
            },
        )

    @property
    def _status_key(self) -> str:
        if self.is_test_sensor:
            return get_tests_status_xcom_key(self.model_unique_id)
        return get_status_xcom_key(self.model_unique_id)

    def _status_from(self, results: dict[str, Any]) -> str | None:
        value = results.get(self._status_key)
        status = value.get("status") if isinstance(value, dict) else value
        if self.with_tests and is_dbt_node_status_success(status):
            # The node is done; the task's outcome is its tests' (None until all have reported).
            return results.get(get_tests_status_xcom_key(self.model_unique_id))
        return status

    async def _say(self, level: str, msg: str, *args: Any, **kwargs: Any) -> None:
        """Log without ever blocking the triggerer's event loop.

        A trigger's log lines go to the triggerer's supervisor process through a socket, and a plain
        ``self.log.info`` in ``run()`` writes to it from the event loop. The supervisor reads that
        socket only between messages, and it sends new triggers to this process as one message (with
        ``start_from_trigger``, each carries the whole serialised DAG unless the triggerer runs through
        include/dbt_platform/triggerer.py: tens of MB for a few hundred tasks), which the event loop
        reads. If the log socket fills while such a message is in
        flight, each side waits for the other for ever: the triggerer stops, and every deferred task
        of every DAG with it (seen here with 201 consumers). So the write happens in a worker
        thread, as Airflow's own ``ainfo`` does, and the event loop keeps reading.
        """
        await asyncio.to_thread(getattr(self.log, level), msg, *args, **kwargs)

    async def get_xcom_val(self, key: str) -> Any | None:
        # Cosmos' version logs every read at INFO from the event loop (see _say); the poller reads
        # twice a second.
        return await self.get_xcom_val_af3(key)

    async def _log_result_line(self, results: dict[str, Any]) -> None:
        event = results.get(get_dbt_event_xcom_key(self.model_unique_id))
        if isinstance(event, dict) and event.get("msg"):
            await self._say("info", "dbt: %s", event["msg"])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        ti = self.task_instance
        try_number = 1
        if ti is not None:
            self.run_id = self.run_id or ti.run_id
            self.map_index = ti.map_index
            try_number = ti.try_number or 1
        if try_number > 1:
            async for event in self._rerun_on_worker():
                yield event
            return
        watch = _RunWatch.acquire(self)
        started = time.monotonic()
        try:
            while True:
                status = self._status_from(watch.results)
                producer = watch.producer_state
                if status is not None or producer in PRODUCER_FINAL_STATES:
                    break
                await watch.wait()
        finally:
            watch.release()
        await self._log_result_line(watch.results)
        what = f"{'tests of ' if self.is_test_sensor else ''}{self.model_unique_id}"
        if self.with_tests:
            what += " and its tests"
        if is_dbt_node_status_success(status):
            await self._say(
                "info", "dbt %s: %s (reported after %.1fs)", what, status, time.monotonic() - started
            )
            yield TaskSuccessEvent()
        elif is_dbt_node_status_skipped(status):
            await self._say("info", "dbt %s was skipped by dbt", what)
            yield TaskSkippedEvent()
        elif is_dbt_node_status_failed(status):
            if self.with_tests and status == DbtTestStatus.FAIL:
                what = f"{self.model_unique_id} succeeded, but one or more of its tests"
            await self._say(
                "error",
                "dbt %s: %s. The task '%s' has dbt's full output.",
                what,
                status,
                self.producer_task_id,
            )
            yield TaskFailedEvent()
        elif producer == ProducerTaskState.SUCCESS:
            await self._say(
                "info", "dbt %s was not part of this build (ephemeral or empty): nothing to do", what
            )
            yield TaskSuccessEvent()
        elif producer == ProducerTaskState.SKIPPED:
            # The producer skipped itself (a re-run of the whole DAG run): run this node on a worker.
            yield TriggerEvent({"status": EventStatus.FAILED, "reason": WatcherEventReason.PRODUCER_SKIPPED})
        else:
            await self._say(
                "error",
                "dbt %s: the build in '%s' ended %s before reporting it; see that task's log.",
                what,
                self.producer_task_id,
                producer,
            )
            yield TaskFailedEvent()

    async def _rerun_on_worker(self) -> AsyncIterator[TriggerEvent]:
        """A retry or a cleared task: once nothing upstream is unfinished, run dbt for this node."""
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        from asgiref.sync import sync_to_async

        watched = [self.producer_task_id, *self.upstream_task_ids]
        while True:
            found = await sync_to_async(RuntimeTaskInstance.get_task_states)(
                dag_id=self.dag_id, task_ids=watched, run_ids=[self.run_id]
            )
            states = {t: (str(s) if s is not None else None) for t, s in found.get(self.run_id, {}).items()}
            if not any(states.get(t) in UNFINISHED_TASK_STATES for t in watched):
                break
            await asyncio.sleep(max(self.poke_interval, 1.0))
        if states.get(self.producer_task_id) == ProducerTaskState.FAILED:
            results = await _RunWatch()._read_new_results(self, ProducerTaskState.FAILED)
            if self._status_from(results) is None:
                # dbt never reached this node (the build failed early, e.g. the database was down):
                # re-running every node alone would start one worker per node. Re-run the DAG instead.
                await self._say(
                    "error",
                    "Not re-running %s: the build in '%s' failed before reaching it. Fix the cause and "
                    "trigger the DAG again (or clear '%s' with its downstream tasks).",
                    self.model_unique_id,
                    self.producer_task_id,
                    self.producer_task_id,
                )
                yield TaskFailedEvent()
                return
        failed = [t for t in self.upstream_task_ids if states.get(t) in {"failed", "upstream_failed"}]
        if failed:
            await self._say(
                "error",
                "Not re-running %s: upstream task(s) %s failed; re-run them first.",
                self.model_unique_id,
                failed,
            )
            yield TaskFailedEvent()
            return
        await self._say("info", "Re-running dbt for %s on a worker", self.model_unique_id)
        yield TriggerEvent({"status": EventStatus.FAILED, "reason": WatcherEventReason.PRODUCER_SKIPPED})


def run_consumers_in_triggerer(dag, poke_interval: float = 0.5) -> int:
    """Make every Cosmos watcher consumer of ``dag`` start and end in the triggerer. Returns how many."""
    from airflow.sdk import TriggerRule

    count = 0
    producers = [t for t in dag.tasks if isinstance(t, DbtProducerWatcherOperator)]
    tests_per_model = producers[0].tests_per_model if producers else {}
    for task in dag.tasks:
        if isinstance(task, DbtProducerWatcherOperator):
            # Cosmos has no hook to choose the producer's class: specialise the one it built.
            task.__class__ = AggregatingProducerOperator
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
            },
            next_method="execute_complete",
            next_kwargs=None,
            timeout=None,
        )
        count += 1
    return count
