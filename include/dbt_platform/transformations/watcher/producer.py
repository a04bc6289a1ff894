"""The producer: Cosmos' watcher ``dbt build``, publishing node results as chunks of what changed."""

from __future__ import annotations

import threading
from typing import Any

from cosmos.operators._watcher.state import xcom_set_lock
from cosmos.operators.watcher import DbtProducerWatcherOperator

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
