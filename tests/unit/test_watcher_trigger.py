"""The consumer trigger must never block the triggerer's event loop on a log write.

In the triggerer a trigger's log lines go to the supervisor process through a socket; the supervisor
reads it only between messages, and it sends new ``start_from_trigger`` triggers to the runner as one
large message that the runner's event loop reads. A log write made from the event loop while that
message is in flight waited for ever (seen in the benchmark: 201 consumers, every deferred task
stuck). Here the log sink behaves like that socket: a write waits until the event loop has run
(standing for "the runner read the supervisor's message, so the supervisor drains the logs"), and
gives up after a few seconds, recording a deadlock. The build's results are handed to the trigger
directly instead of through the Execution API: what is under test is the trigger's own loop.

Also here: how the producer publishes node results (only what changed, in numbered chunks) and how
the triggerer's poller reads them (only the new chunks), against an in-memory XCom store; the real
Execution API path runs on the real scheduler (tests/test_transformations_on_scheduler.py).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent, TriggerEvent
from cosmos.operators._watcher.state import get_dbt_event_xcom_key, get_status_xcom_key

from include.dbt_platform.transformations.watcher.producer import AGGREGATE_XCOM_KEY
from include.dbt_platform.transformations.watcher.trigger import TaskEndingWatcherTrigger

NODE = "model.shop.orders"


class SocketLikeLog:
    """A log whose writes wait until the event loop sets ``drained``, as a full socket would."""

    def __init__(self) -> None:
        self.drained = threading.Event()
        self.lines: list[tuple[str, str]] = []
        self.loop_thread: int | None = None
        self.written_from_loop = 0
        self.deadlocked = False

    def _write(self, level: str, msg: str, *args, **_kwargs) -> None:
        if threading.get_ident() == self.loop_thread:
            self.written_from_loop += 1
        if not self.drained.wait(timeout=3):
            self.deadlocked = True
        self.lines.append((level, msg % args if args else msg))

    def info(self, msg, *args, **kwargs):
        self._write("info", msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs):
        self._write("warning", msg, *args, **kwargs)

    def error(self, msg, *args, **kwargs):
        self._write("error", msg, *args, **kwargs)


def run_trigger(node_status: str, node: str = NODE, **kwargs) -> tuple[list, SocketLikeLog]:
    trigger = TaskEndingWatcherTrigger(
        model_unique_id=node, producer_task_id="dbt_producer_watcher", dag_id="shop", run_id="r1", **kwargs
    )
    trigger.task_instance = None
    log = trigger._log = SocketLikeLog()  # what LoggingMixin.log returns
    results = {
        get_status_xcom_key(node): {"status": node_status},
        get_dbt_event_xcom_key(node): {
            "msg": f"1 of 1 OK created sql view model shop.orders ({node_status})"
        },
    }
    reads: list[str] = []

    async def producer_state() -> str:
        return "success"

    async def xcom(key: str):
        reads.append(key)
        return results if key == AGGREGATE_XCOM_KEY else None

    trigger._get_producer_task_status = producer_state
    trigger.get_xcom_val = xcom

    async def scenario() -> list:
        log.loop_thread = threading.get_ident()

        async def read_supervisor_message() -> None:
            await asyncio.sleep(0.3)  # the event loop is free: the message gets read, logs drain
            log.drained.set()

        reader = asyncio.create_task(read_supervisor_message())
        events = [event async for event in trigger.run()]
        await reader
        return events

    events = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert reads == [AGGREGATE_XCOM_KEY], "one poller read for the run's results"
    return events, log


@pytest.mark.parametrize(
    ("status", "event_type"), [("success", TaskSuccessEvent), ("error", TaskFailedEvent)]
)
def test_consumer_logs_its_result_without_blocking_the_event_loop(status, event_type):
    events, log = run_trigger(status)
    assert [type(e) for e in events] == [event_type]
    assert not log.deadlocked, "a log write waited on a sink only the event loop could drain"
    assert log.written_from_loop == 0
    # The user still gets the node's dbt line and its outcome in the task's log.
    assert log.lines[0] == ("info", f"dbt: 1 of 1 OK created sql view model shop.orders ({status})")
    level, text = log.lines[1]
    assert NODE in text and status in text
    assert level == ("info" if status == "success" else "error")


@pytest.mark.parametrize("registers", [True, False], ids=["patched-triggerer", "stock-triggerer"])
def test_a_model_with_an_asset_ends_on_a_worker_where_the_triggerer_would_not_register_it(
    registers, monkeypatch
):
    """Stock Airflow registers a task's asset events only when it ends on a worker; the platform's
    triggerer patch registers them in the triggerer (sets the flag). A task without outlets, or one in
    a patched triggerer, ends where it is; one with outlets in a stock triggerer resumes on a worker,
    where Cosmos' execute_complete takes this event as a success."""
    import include.dbt_platform.runtime as runtime

    monkeypatch.setattr(runtime, "TRIGGERER_REGISTERS_OUTLETS", registers)
    events, log = run_trigger("success", emits_assets=True)
    if registers:
        assert [type(e) for e in events] == [TaskSuccessEvent]
    else:
        assert [type(e) for e in events] == [TriggerEvent]
        assert events[0].payload == {"status": "success"}
        assert any("Ending on a worker" in text for _, text in log.lines), log.lines
    events, _ = run_trigger("success", emits_assets=False)
    assert [type(e) for e in events] == [TaskSuccessEvent], "no outlets: ends in the triggerer either way"
    events, _ = run_trigger("error", emits_assets=True)
    assert [type(e) for e in events] == [TaskFailedEvent], "a failure never needs a worker"


@pytest.mark.parametrize(
    ("status", "event_type", "level", "says"),
    [
        ("pass", TaskSuccessEvent, "info", "source.shop.loads.events: pass"),
        ("warn", TaskSuccessEvent, "warning", "older than its warn_after; its models run"),
        (
            "error",
            TaskFailedEvent,
            "error",
            "freshness of source.shop.loads.events (past error_after or not checkable",
        ),
    ],
)
def test_a_source_task_reports_its_freshness(status, event_type, level, says):
    """In the watcher modes the build runs ``dbt source freshness`` first; a source's task reports it."""
    events, log = run_trigger(status, node="source.shop.loads.events")
    assert [type(e) for e in events] == [event_type]
    assert log.lines[1][0] == level and says in log.lines[1][1], log.lines


def test_a_source_past_error_after_keeps_every_node_that_reads_it_out_of_the_build():
    """The producer's freshness callback: unlike Cosmos' default, a warning leaves nothing out, and a
    node is left out when any of its inputs (direct or not) is stale, as LOCAL mode does; its task
    fails (a run whose leaves were skipped would end green)."""
    from pathlib import Path

    from cosmos.constants import DbtResourceType
    from cosmos.dbt.graph import DbtNode

    from include.dbt_platform.transformations.watcher import leave_out_readers_of_stale_sources

    def node(uid: str, kind: DbtResourceType, *parents: str) -> DbtNode:
        return DbtNode(uid, kind, list(parents), Path("."), Path(f"{uid}.sql"))

    model, source, test = DbtResourceType.MODEL, DbtResourceType.SOURCE, DbtResourceType.TEST
    nodes = {n.unique_id: n for n in [
        node("source.p.loads.events", source), node("source.p.loads.users", source),
        node("model.p.stg_events", model, "source.p.loads.events"),
        node("model.p.stg_users", model, "source.p.loads.users"),
        node("model.p.joined", model, "model.p.stg_events", "model.p.stg_users"),
        node("test.p.not_null_stg_events_id", test, "model.p.stg_events"),
        node("model.p.calendar", model),
    ]}  # fmt: skip

    def skipped(statuses: dict[str, str]) -> list:
        results = [{"unique_id": uid, "status": status} for uid, status in statuses.items()]
        return leave_out_readers_of_stale_sources({}, None, None, nodes, {"results": results})

    assert skipped({"source.p.loads.events": "warn", "source.p.loads.users": "pass"}) == []
    assert skipped({"source.p.loads.events": "error", "source.p.loads.users": "pass"}) == [
        ("model.p.joined", "failed"),
        ("model.p.stg_events", "failed"),
    ]
    assert skipped({"source.p.loads.events": "pass", "source.p.loads.users": "runtime error"}) == [
        ("model.p.joined", "failed"),
        ("model.p.stg_users", "failed"),
    ]


def stub_profile(folder):
    """A Cosmos profile the operators can be built with (nothing here connects)."""
    from cosmos import ProfileConfig

    (folder / "profiles.yml").write_text("p: {}\n")
    return ProfileConfig(profile_name="p", target_name="t", profiles_yml_filepath=folder / "profiles.yml")


def test_the_producer_publishes_the_freshness_check_with_the_build_results(tmp_path):
    """Source statuses and the nodes skipped for a stale source go through the same chunks the
    triggers read (Cosmos pushes them to the task instance directly)."""
    from include.dbt_platform.transformations.watcher.producer import (
        AggregatingProducerOperator,
        _RecordingTaskInstance,
    )

    profile = stub_profile(tmp_path)
    producer = AggregatingProducerOperator(project_dir=str(tmp_path), profile_config=profile)
    store = XComStore()
    producer._recorder = _RecordingTaskInstance(store, interval=3600)
    producer._sources_json = {"results": [{"unique_id": "source.p.loads.events", "status": "error"}]}
    producer._push_source_freshness_results({"ti": store})
    producer._push_node_state_xcom(store, "model.p.stg_events", "failed")
    assert not store.values, "nothing bypasses the recorder"
    producer._recorder.close()
    assert store.values[AGGREGATE_XCOM_KEY] == {
        get_status_xcom_key("source.p.loads.events"): {"status": "error", "outlet_uris": []},
        get_status_xcom_key("model.p.stg_events"): {"status": "failed", "outlet_uris": []},
    }


def test_the_producer_sends_the_models_lineage_from_its_callbacks_once(tmp_path, monkeypatch):
    """Airflow runs a task's callbacks after the task reported its state: the models' lineage is
    sent from there (the run does not wait for it), once, beside the DAG author's own callbacks."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from airflow.sdk import DAG
    from cosmos.operators.watcher import DbtProducerWatcherOperator

    from include.dbt_platform.transformations import lineage
    from include.dbt_platform.transformations.watcher.producer import (
        AggregatingProducerOperator,
        emit_pending_lineage,
    )

    profile = stub_profile(tmp_path)
    own = []
    with DAG("unit_lineage", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=UTC)):
        # As the DAG factory gets it: the producer Cosmos built, specialised.
        producer = DbtProducerWatcherOperator(
            project_dir=str(tmp_path), profile_config=profile, on_failure_callback=own.append
        )
    AggregatingProducerOperator.specialise(producer)
    AggregatingProducerOperator.specialise(producer)  # idempotent
    assert producer.on_success_callback == [emit_pending_lineage]
    # After the DAG author's and Cosmos' own (its XCom backup on failure and retry).
    assert producer.on_retry_callback[-1] is emit_pending_lineage
    assert producer.on_failure_callback[0] == own.append
    assert producer.on_failure_callback[-1] is emit_pending_lineage
    sent, deadlines = [], []

    def emit(dag, context, events, deadline):
        sent.append(events)
        deadlines.append(deadline - time.monotonic())

    monkeypatch.setattr(lineage, "emit_node_events", emit)
    events = SimpleNamespace(starts=[], completes=[], fails=[])
    producer._pending_lineage = events  # what execute() leaves
    for callback in producer.on_success_callback:
        callback({"task": producer})
    emit_pending_lineage({"task": producer})  # a second callback of the same try: nothing more
    emit_pending_lineage({"task": SimpleNamespace()})  # the dag-processor's, for a dead process
    assert sent == [events]
    # Within Airflow's task_success_overtime, which ends the process that long after a success.
    from airflow.configuration import conf

    overtime = conf.getfloat("core", "task_success_overtime")
    assert overtime / 2 - 1 < deadlines[0] <= overtime - 5


def test_the_models_lineage_stops_at_its_deadline_and_says_so(caplog):
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from include.dbt_platform.transformations import lineage

    node = SimpleNamespace(unique_id="model.p.m")
    event = SimpleNamespace(
        job=SimpleNamespace(facets={"dbt_node": node}), run=SimpleNamespace(runId="r", facets={}),
        eventTime="2026-01-01T00:00:00Z", inputs=[], outputs=[],
    )  # fmt: skip
    when = datetime(2026, 1, 1, tzinfo=UTC)
    context = {
        "dag_run": SimpleNamespace(
            logical_date=when,
            run_after=when,
            clear_number=0,
            conf={},
            data_interval_start=when,
            data_interval_end=when,
        ),  # fmt: skip
        "ti": SimpleNamespace(try_number=1),
    }
    dag = SimpleNamespace(dag_id="p", tasks=[], owner="me", tags=[])
    events = SimpleNamespace(starts=[], completes=[event], fails=[])
    assert lineage.emit_node_events(dag, context, events, deadline=time.monotonic() - 1) == 0
    assert "out of time after 0 of 1 dbt node(s)" in caplog.text


class XComStore:
    """The producer's XComs, as the Execution API would store and return them."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.reads: list[str] = []

    def xcom_push(self, key: str, value, **_kwargs) -> None:
        self.values[key] = value

    async def get_xcom_val(self, key: str):
        self.reads.append(key)
        return self.values.get(key)


def test_the_producer_publishes_only_what_changed_and_the_poller_reads_only_what_is_new():
    from include.dbt_platform.transformations.watcher.producer import (
        CHUNK_COUNT_XCOM_KEY,
        _RecordingTaskInstance,
        chunk_xcom_key,
    )
    from include.dbt_platform.transformations.watcher.trigger import _RunWatch

    store = XComStore()
    recorder = _RecordingTaskInstance(store, interval=3600)  # flushed by hand below
    nodes = [f"model.shop.m{i}" for i in range(3)]
    for node in nodes[:2]:
        recorder.xcom_push(get_status_xcom_key(node), {"status": "success"})
    recorder.xcom_push(f"{nodes[0]}_compiled_sql", "select 1")  # never pushed
    recorder.flush()
    watch = _RunWatch()
    first = asyncio.run(watch._read_new_results(store, "running"))
    assert first == {get_status_xcom_key(n): {"status": "success"} for n in nodes[:2]}
    recorder.flush()  # nothing changed: nothing pushed
    recorder.xcom_push(get_status_xcom_key(nodes[2]), {"status": "error"})
    recorder.flush()
    store.reads.clear()
    second = asyncio.run(watch._read_new_results(store, "running"))
    assert second == {get_status_xcom_key(nodes[2]): {"status": "error"}}, "only the new chunk"
    assert store.reads == [CHUNK_COUNT_XCOM_KEY, chunk_xcom_key(2)]
    assert store.values[CHUNK_COUNT_XCOM_KEY] == 2 and chunk_xcom_key(3) not in store.values
    recorder.close()
    assert store.values[AGGREGATE_XCOM_KEY] == {**first, **second}
    assert not any(key.endswith("_compiled_sql") for key in store.values)
    # A poller that starts after the build reads the whole result in one go.
    store.reads.clear()
    late = asyncio.run(_RunWatch()._read_new_results(store, "success"))
    assert late == {**first, **second} and store.reads == [AGGREGATE_XCOM_KEY]


def test_triggers_stored_under_the_old_classpath_still_deserialise():
    """Airflow stores a deferred task's trigger as (classpath, kwargs) and imports the classpath when a
    triggerer picks it up; triggers stored before the package layout name the old module."""
    from airflow._shared.module_loading import import_string  # what the triggerer uses

    from include.dbt_platform.transformations.watcher.trigger import TRIGGER_CLASSPATH

    old = "include.dbt_platform.cosmos_triggerer.TaskEndingWatcherTrigger"
    kwargs = {"model_unique_id": NODE, "producer_task_id": "dbt_producer_watcher", "dag_id": "shop",
              "run_id": "r1", "map_index": -1, "poke_interval": 0.5, "is_test_sensor": False,
              "upstream_task_ids": [], "with_tests": True}  # fmt: skip
    trigger = import_string(old)(**kwargs)
    assert isinstance(trigger, TaskEndingWatcherTrigger)
    classpath, stored = trigger.serialize()
    assert classpath == TRIGGER_CLASSPATH != old, "re-serialised under the new path"
    assert stored == {**kwargs, "emits_assets": False}, "stored before tasks carried assets"
    assert import_string(TRIGGER_CLASSPATH) is TaskEndingWatcherTrigger
