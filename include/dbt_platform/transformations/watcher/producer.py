"""The producer: Cosmos' watcher ``dbt build``, publishing node results as chunks of what changed."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

from cosmos.operators._watcher import base as cosmos_parser
from cosmos.operators._watcher.state import (
    DBT_UPSTREAM_FAILURE_SKIP_EVENT_NAMES,
    DbtNodeStatus,
    is_dbt_node_status_terminal,
    xcom_set_lock,
)
from cosmos.operators.watcher import DbtProducerWatcherOperator

from include.dbt_platform.transformations import lineage

log = logging.getLogger(__name__)
AGGREGATE_XCOM_KEY = "dbt_platform_node_results"
CHUNK_COUNT_XCOM_KEY = f"{AGGREGATE_XCOM_KEY}_chunks"


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


# The dbt events Cosmos' watcher parser (``cosmos.operators._watcher.base.store_dbt_resource_status_from_log``)
# acts on by name: the node lifecycle and error events it keeps per node, the startup events it
# records (dbt's and the adapter's versions), the two that mark a node skipped for an upstream failure.
COSMOS_EVENT_NAMES = frozenset(
    cosmos_parser._DBT_EVENT_ALLOWLIST
    | {"MainReportVersion", "AdapterRegistered"}
    | DBT_UPSTREAM_FAILURE_SKIP_EVENT_NAMES
)
COSMOS_EVENT_CALLBACK = "DbtProducerWatcherOperator.run_dbt_runner.<locals>._event_callback"


def read_by_cosmos(event: Any) -> bool:
    """Whether Cosmos' watcher parser does anything with this dbt event (an ``EventMsg``) when its
    logger does not log debug lines: any event at info level or above (it logs the message), one of
    :data:`COSMOS_EVENT_NAMES`, or one carrying a node that has finished (its status is recorded).

    A ``dbt build`` fires ~45-48 events per model (22,600-24,000 at 500 models), 92% debug events
    about connections, queries and the cache; Cosmos turns every one into JSON and parses it back
    before finding it has nothing to do: 2.7-2.9 s of the build's 25 s of CPU at 500 models,
    measured side by side on the same build outside Airflow, in the one process the run waits for.
    """
    info = event.info
    if info.level != "debug" or info.name in COSMOS_EVENT_NAMES:
        return True
    data = event.data
    if "node_info" in data.DESCRIPTOR.fields_by_name and data.HasField("node_info"):
        return is_dbt_node_status_terminal(data.node_info.node_status)
    return False


class _EventsSeen:
    def __init__(self) -> None:
        # itertools.count's next() is atomic under the GIL: dbt fires events from its threads.
        self.handed, self.left_out = itertools.count(), itertools.count()

    def counts(self) -> tuple[int, int]:
        """(handed to Cosmos, left out) so far."""
        return next(self.handed), next(self.left_out)


def only_what_cosmos_reads(callback: Any, seen: _EventsSeen) -> Any:
    """Cosmos' per-event callback, called only for the events it does something with (all of them
    while Cosmos' logger logs debug lines, as it then logs every one)."""

    def on_what_cosmos_reads(event: Any) -> None:
        try:
            wanted = read_by_cosmos(event) or cosmos_parser.logger.isEnabledFor(logging.DEBUG)
        except Exception:  # noqa: BLE001 - an event of an unexpected shape: Cosmos decides
            wanted = True
        if wanted:
            next(seen.handed)
            callback(event)
        else:
            next(seen.left_out)

    on_what_cosmos_reads.__wrapped__ = callback  # type: ignore[attr-defined]
    on_what_cosmos_reads._leaves_out = True  # type: ignore[attr-defined]
    return on_what_cosmos_reads


def emit_pending_lineage(context: Any) -> None:
    """The producer's callback (success, failure, retry): its build's per-model OpenLineage events,
    once. Nothing when there are none (a failure callback the dag-processor runs for a task process
    that died, say). Once a task reported success, Airflow ends its process after
    ``[core] task_success_overtime`` (20 s by default; the stack sets 120 s): the events stop a few
    seconds before that, leaving room for the provider's own event of the task, and say so."""
    task = context.get("task")
    events = getattr(task, "_pending_lineage", None)
    if events is None:
        return
    task._pending_lineage = None
    lineage.emit_node_events(task.dag, context, events, deadline=time.monotonic() + _lineage_budget())


def _lineage_budget() -> float:
    try:
        from airflow.configuration import conf

        overtime = conf.getfloat("core", "task_success_overtime", fallback=20.0)
    except Exception:  # noqa: BLE001 - Airflow's own default
        overtime = 20.0
    return max(overtime - 5.0, overtime / 2)


def _callbacks(given: Any) -> list:
    if given is None:
        return []
    return list(given) if isinstance(given, list | tuple) else [given]


def chunk_xcom_key(number: int) -> str:
    """The XCom holding the producer's ``number``-th chunk of node results (from 1)."""
    return f"{AGGREGATE_XCOM_KEY}_chunk_{number}"


class AggregatingProducerOperator(DbtProducerWatcherOperator):
    """Cosmos' watcher producer, also publishing every node's result in one aggregated XCom.

    One recorder (:class:`_RecordingTaskInstance`) per try carries every node result the triggers
    read: the source freshness pre-check's (each source's status, the nodes left out because of a
    stale source), then the build's.

    Each model's own OpenLineage events (its task ends in the triggerer, where no listener runs:
    transformations/lineage.py) are sent by a callback of this task, :func:`emit_pending_lineage`:
    Airflow runs a task's callbacks after it has reported a success (or a retry), so a run that
    succeeds does not wait for them (4.4 s for a 500-model build here, when they were sent at the
    end of ``execute``). A failure is reported when the task's process ends: then it waits.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_lineage_from_callbacks()

    @classmethod
    def specialise(cls, producer: DbtProducerWatcherOperator) -> None:
        """Make the producer Cosmos built one of these (Cosmos has no hook to choose its class)."""
        producer.__class__ = cls
        producer._send_lineage_from_callbacks()

    def _send_lineage_from_callbacks(self) -> None:
        for kind in ("on_success_callback", "on_failure_callback", "on_retry_callback"):
            callbacks = _callbacks(getattr(self, kind, None))
            if emit_pending_lineage not in callbacks:
                setattr(self, kind, [*callbacks, emit_pending_lineage])

    @property
    def _dbt_runner_callbacks(self) -> list | None:
        """The callbacks Cosmos hands dbt; its own watcher callback sees only what it reads
        (:func:`read_by_cosmos`). Cosmos sets this list (its ``__init__``, then its producer's
        ``run_dbt_runner`` appends the watcher callback) and reads it when it starts dbt; a property,
        as Cosmos has no hook for it. Kept in the instance's ``__dict__``, where Cosmos' own
        attribute is, so a producer specialised after Cosmos built it keeps its callbacks."""
        callbacks = self.__dict__.get("_dbt_runner_callbacks")
        if not callbacks:
            return callbacks
        seen = self.__dict__.get("_dbt_events_seen") or _EventsSeen()
        return [
            only_what_cosmos_reads(cb, seen)
            if getattr(cb, "__qualname__", "") == COSMOS_EVENT_CALLBACK
            else cb
            for cb in callbacks
        ]

    @_dbt_runner_callbacks.setter
    def _dbt_runner_callbacks(self, callbacks: list | None) -> None:
        # Cosmos appends to the list it read: keep the callbacks themselves, not the wrappers.
        self.__dict__["_dbt_runner_callbacks"] = (
            [getattr(cb, "__wrapped__", cb) if getattr(cb, "_leaves_out", False) else cb for cb in callbacks]
            if callbacks
            else callbacks
        )

    def execute(self, context: Any, **kwargs: Any) -> Any:
        self._recorder = _RecordingTaskInstance(context["ti"])
        self._dbt_lineage: dict = {}
        self._pending_lineage = None
        try:
            return super().execute(context, **kwargs)
        finally:
            recorder, self._recorder = self._recorder, None
            recorder.close()
            self._pending_lineage = self._dbt_lineage.get("events")

    def calculate_openlineage_events_completes(self, env, project_dir, dbt_command_line=None) -> bool:
        base = super()._get_dbt_local_artifact_processor()
        if base is not None and hasattr(self, "_dbt_lineage"):
            capturing = lineage.capturing_processor(base, self._dbt_lineage)
            self._get_dbt_local_artifact_processor = lambda: capturing  # this call's processor
        return super().calculate_openlineage_events_completes(env, project_dir, dbt_command_line)

    def run_dbt_runner(self, command: list[str], env: dict[str, str], cwd: str, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        if context is None or context.get("_check_source_freshness"):
            return super().run_dbt_runner(command, env, cwd, **kwargs)  # Cosmos adds no callback
        recorder = getattr(self, "_recorder", None)
        if recorder is not None:
            kwargs["context"] = {**context, "ti": recorder, "task_instance": recorder}
        self.__dict__["_dbt_events_seen"] = seen = _EventsSeen()
        try:
            return super().run_dbt_runner(command, env, cwd, **kwargs)
        finally:
            del self.__dict__["_dbt_events_seen"]
            handed, left_out = seen.counts()
            log.info(
                "dbt events: %d handed to Cosmos' watcher parser, %d debug events it does nothing with left out",
                handed,
                left_out,
            )

    def _push_source_freshness_results(self, context: Any) -> None:
        super()._push_source_freshness_results(
            {**context, "ti": getattr(self, "_recorder", None) or context["ti"]}
        )

    def _push_node_state_xcom(self, ti: Any, unique_id: str, state: str) -> None:
        super()._push_node_state_xcom(getattr(self, "_recorder", None) or ti, unique_id, state)


FRESHNESS_FAILED_STATUSES = {"error", "runtime error"}


def leave_out_readers_of_stale_sources(
    context: Any, dag: Any, task_group: Any, nodes: Any, sources_json: Any
):
    """The producer's ``freshness_callback``: which nodes the build leaves out after ``dbt source freshness``.

    Every model, seed and snapshot that reads, directly or through other nodes, a source past its
    ``error_after`` (or whose freshness could not be checked) is left out of the build, none of
    them built on stale data, as in LOCAL mode (where they are ``upstream_failed``). Their tasks
    end *failed*, not skipped: Airflow decides a run's state from its leaf tasks, and a run whose
    leaves were skipped would end green; a retry of them waits for the source's task and says
    that it failed. A source past ``warn_after`` only is reported by its task and its models run.
    (Cosmos' default skips for a warning too, and only nodes all of whose inputs are stale.)
    """
    results = (sources_json or {}).get("results") or []
    failed = {
        r["unique_id"] for r in results if r.get("unique_id") and r.get("status") in FRESHNESS_FAILED_STATUSES
    }
    if not failed or not nodes:
        return []
    dependents: dict[str, set[str]] = {}
    for node_id, node in nodes.items():
        for parent in node.depends_on:
            dependents.setdefault(parent, set()).add(node_id)
    reached: set[str] = set()
    todo = list(failed)
    while todo:
        for child in dependents.get(todo.pop(), ()):
            if child not in reached:
                reached.add(child)
                todo.append(child)
    # Tests are left out with the node they test; their ids are not valid dbt --exclude selectors.
    buildable = {"model", "seed", "snapshot"}
    left_out = sorted(uid for uid in reached if uid in nodes and _resource_type(nodes[uid]) in buildable)
    if left_out:
        log.warning(
            "Source(s) %s failed their freshness check (past error_after, or not checkable): not building %s",
            sorted(failed),
            left_out,
        )
    return [(uid, DbtNodeStatus.FAILED.value) for uid in left_out]


def _resource_type(node: Any) -> str:
    kind = node.resource_type
    return str(getattr(kind, "value", kind))
