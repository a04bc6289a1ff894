"""The trigger that reports one dbt node's result from the producer and ends its task in the triggerer.

One poller per DAG run in a triggerer process (:class:`_RunWatch`) reads the producer's chunks for all
that run's consumer triggers. A source's task (projects that declare source freshness) reports the
build's ``dbt source freshness`` result the same way. (A little over 300 lines: the poller, the
trigger's first try and its re-run on a worker share one contract with the producer; kept together.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import TaskFailedEvent, TaskSkippedEvent, TaskSuccessEvent, TriggerEvent
from cosmos.listeners.dag_run_listener import EventStatus
from cosmos.operators._watcher.aggregation import get_tests_status_xcom_key
from cosmos.operators._watcher.state import (
    PRODUCER_FINAL_STATES,
    DbtTestStatus,
    ProducerTaskState,
    get_dbt_event_xcom_key,
    get_status_xcom_key,
    is_dbt_node_status_failed,
    is_dbt_node_status_skipped,
    is_dbt_node_status_success,
)
from cosmos.operators._watcher.triggerer import WatcherEventReason, WatcherTrigger

from include.dbt_platform.transformations.watcher.producer import (
    AGGREGATE_XCOM_KEY,
    CHUNK_COUNT_XCOM_KEY,
    chunk_xcom_key,
)

TRIGGER_CLASSPATH = f"{__name__}.TaskEndingWatcherTrigger"
UNFINISHED_TASK_STATES = {None, "none", "scheduled", "queued", "running", "deferred", "up_for_retry",
                          "up_for_reschedule", "restarting"}  # fmt: skip


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
        emits_assets: bool = False,
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
        self.emits_assets = emits_assets  # the task has outlets (a model's asset)

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
                "emits_assets": self.emits_assets,
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
        include/dbt_platform/runtime/triggerer.py: tens of MB for a few hundred tasks), which the event loop
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
        source = self.model_unique_id.startswith("source.")  # a source's freshness check
        if is_dbt_node_status_success(status):
            stale = source and status == "warn"
            await self._say(
                "warning" if stale else "info",
                "dbt %s: %s (reported after %.1fs)%s",
                what,
                status,
                time.monotonic() - started,
                ": older than its warn_after; its models run" if stale else "",
            )
            yield await self._success()
        elif is_dbt_node_status_skipped(status):
            await self._say("info", "dbt %s was skipped by dbt", what)
            yield TaskSkippedEvent()
        elif is_dbt_node_status_failed(status):
            if self.with_tests and status == DbtTestStatus.FAIL:
                what = f"{self.model_unique_id} succeeded, but one or more of its tests"
            elif source:
                what = f"freshness of {what} (past error_after or not checkable: its readers are not built)"
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
            yield await self._success(WatcherEventReason.NODE_NOT_RUN)
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

    async def _success(self, reason: str | None = None) -> TriggerEvent:
        """End the task here, or, if it has outlets this triggerer would not register, on a worker.

        Stock Airflow registers a task's asset events only when it succeeds on a worker; the
        platform's triggerer patch registers them for a task that succeeds here too
        (runtime/triggerer.py: ``install_outlet_registration``). Without it such a task resumes on a
        worker (Cosmos' ``execute_complete``: it logs the node's result and succeeds), slower but with
        its events.
        """
        import include.dbt_platform.runtime as runtime

        if self.emits_assets and not runtime.TRIGGERER_REGISTERS_OUTLETS:
            await self._say(
                "info",
                "Ending on a worker so that Airflow registers this model's asset event: this triggerer "
                "does not (it runs without the platform's patch; its log says why)",
            )
            event: dict[str, Any] = {"status": EventStatus.SUCCESS}
            if reason:
                event["reason"] = reason
            return TriggerEvent(event)
        return TaskSuccessEvent()

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
