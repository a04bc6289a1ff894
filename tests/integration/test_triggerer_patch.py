"""The triggerer launcher sends each ``start_from_trigger`` task to its runner alone, not the whole DAG,
and keeps reading the runner's log while it sends.

What the trigger runner builds from the cut data (Airflow's own ``TriggerRunner.create_runtime_ti``,
then ``get_template_context`` and the trigger's template rendering) must be what it builds from the
whole serialised DAG. Checked on the real transformation DAG (both test behaviors: ``after_each`` puts
tasks in task groups) and on a DAG with params, nested task groups and a templated trigger. The
supervisor side runs on the real scheduler (tests/test_transformations_on_scheduler.py).
"""

from __future__ import annotations

import json
import selectors
import socket
import threading
import time
import uuid
from datetime import datetime
from types import SimpleNamespace

import pytest
from airflow.executors.workloads import TaskInstanceDTO
from airflow.jobs.triggerer_job_runner import TriggerRunner
from airflow.sdk import DAG, BaseOperator, Param, TaskGroup, task
from airflow.serialization.serialized_objects import DagSerialization
from airflow.triggers.base import BaseTrigger, StartTriggerArgs

from include.dbt_platform.runtime import triggerer
from include.dbt_platform.runtime.dag_cut import _Version
from include.dbt_platform.runtime.triggerer import _send_serving_logs
from tests.harness import build_manifest, copy_project, run_as_airflow_command, run_python

RUN_ID = "manual__2026-11-23T10:00:00+00:00"
DAG_RUN = {
    "run_id": RUN_ID,
    "logical_date": "2026-11-23T10:00:00+00:00",
    "data_interval_start": "2026-11-23T10:00:00+00:00",
    "data_interval_end": "2026-11-23T10:00:00+00:00",
    "run_after": "2026-11-23T10:00:00+00:00",
    "start_date": "2026-11-23T10:00:01+00:00",
    "end_date": None,
    "run_type": "manual",
    "state": "running",
    "conf": {"who": "conf"},
    "consumed_asset_events": [],
    "partition_key": None,
}
CONTEXT_VALUES = ("run_id", "ds", "ts", "logical_date", "params", "task_instance_key_str", "conn", "var")


class Serialised:
    """What the supervisor holds: a serialised DAG model (``data``, ``dag``, its version)."""

    def __init__(self, dag) -> None:
        self.data = json.loads(json.dumps(DagSerialization.to_dict(dag)))  # as read from the table
        self.dag_version_id = uuid.uuid4()
        self.dag_hash = "h"

    @property
    def dag(self):
        return DagSerialization.from_dict(self.data)


def runtime_ti(dag_data: dict, dag_id: str, task_id: str):
    ti = TaskInstanceDTO(
        id=uuid.uuid4(), dag_version_id=uuid.uuid4(), task_id=task_id, dag_id=dag_id, run_id=RUN_ID,
        try_number=1, map_index=-1, pool_slots=1, queue="default", priority_weight=1,
    )  # fmt: skip
    return TriggerRunner.create_runtime_ti(ti, dag_data, {"dag_id": dag_id, **DAG_RUN})


def trigger_tasks(dag) -> list[str]:
    return [t.task_id for t in dag.tasks if getattr(t, "start_from_trigger", False)]


def assert_same_runtime(model: Serialised, task_id: str) -> dict:
    """The runner's task, context and rendered trigger from the cut equal those from the whole DAG."""
    cut = _Version(model).task_only(task_id)
    assert cut is not None, f"{task_id} was not cut"
    assert [t["__var"]["task_id"] for t in cut["dag"]["tasks"]] == [task_id]
    dag_id = model.data["dag"]["dag_id"]
    whole, alone = runtime_ti(model.data, dag_id, task_id), runtime_ti(cut, dag_id, task_id)
    for attr in ("task_id", "task_type", "start_trigger_args", "retries", "retry_delay", "owner",
                 "trigger_rule", "template_fields", "upstream_task_ids", "inlets", "outlets"):  # fmt: skip
        if attr == "upstream_task_ids":
            assert getattr(alone.task, attr) == set(), "the cut has no other task to point at"
            continue
        assert getattr(alone.task, attr) == getattr(whole.task, attr), attr
    for field in whole.task.template_fields:
        assert getattr(alone.task, field) == getattr(whole.task, field), field
    assert alone.task.task_group.group_id == whole.task.task_group.group_id
    assert alone.task.dag.params.dump() == whole.task.dag.params.dump()
    context_whole, context_alone = whole.get_template_context(), alone.get_template_context()
    assert set(context_alone) == set(context_whole)
    for key in CONTEXT_VALUES:
        assert repr(context_alone[key]) == repr(context_whole[key]), key
    assert context_alone["dag"].dag_id == context_whole["dag"].dag_id
    assert context_alone["task"].task_id == context_whole["task"].task_id
    assert len(json.dumps(cut)) < len(json.dumps(model.data))
    return {"whole": (whole, context_whole), "alone": (alone, context_alone)}


@pytest.mark.parametrize("test_behavior", ["build", "after_each"])
def test_every_node_of_a_transformation_dag_gets_the_same_task_and_context(tmp_path, test_behavior):
    from include.dbt_platform.transformations.factory import build_transformation_dag
    from include.dbt_platform.transformations.projects import load_project

    project = copy_project("inventory_transforms", tmp_path, "cut_check")
    (project / "platform.yml").write_text(
        f"schema: cut_check\nexecution_mode: triggerer\ntest_behavior: {test_behavior}\n"
    )
    build_manifest(project)
    model = Serialised(build_transformation_dag(load_project(project)))
    nodes = trigger_tasks(model.dag)
    assert len(nodes) >= 6
    if test_behavior == "after_each":
        assert any("." in node for node in nodes), "after_each puts a model's tasks in a task group"
    for node in nodes:
        assert_same_runtime(model, node)


MESSAGE = "{{ params.env }}/{{ dag.dag_id }}/{{ task.task_id }}/{{ run_id }}"


class Greeting(BaseTrigger):
    template_fields = ("message",)

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def serialize(self):
        return f"{type(self).__module__}.{type(self).__qualname__}", {"message": self.message}

    async def run(self):  # pragma: no cover - never run here
        yield None


class StartsInTriggerer(BaseOperator):
    template_fields = ("greeting", "message")

    def __init__(self, greeting: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.greeting = greeting
        self.message = MESSAGE
        self.start_from_trigger = True
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls=f"{Greeting.__module__}.Greeting",
            trigger_kwargs={"message": MESSAGE},
            next_method="execute_complete",
            next_kwargs=None,
            timeout=None,
        )

    def execute_complete(self, context, event=None):  # pragma: no cover - never run here
        return event


def templated_dag():
    with DAG(
        "cut_templates",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        params={"env": Param("prod", type="string")},
    ) as dag:
        first = StartsInTriggerer(task_id="first", greeting="{{ params.env }}")
        with TaskGroup("outer"), TaskGroup("inner"):
            nested = StartsInTriggerer(task_id="nested", greeting="{{ ds }}")
        last = StartsInTriggerer(task_id="last", greeting="x")
        first >> nested >> last

        @task
        def numbers():
            return [1, 2]

        @task
        def double(n):
            return n * 2

        double.expand(n=numbers())
    return dag


def test_params_groups_and_trigger_templates_render_the_same():
    model = Serialised(templated_dag())
    assert trigger_tasks(model.dag) == ["first", "outer.inner.nested", "last"]
    for task_id in trigger_tasks(model.dag):
        got = assert_same_runtime(model, task_id)
        renders = {}
        for side in ("whole", "alone"):
            ti, context = got[side]
            trigger = Greeting(message=MESSAGE)  # as the scheduler stored it from start_trigger_args
            trigger.task_instance = ti  # as TriggerRunner.create_triggers does; picks template_fields
            assert trigger.template_fields == ("message",)
            trigger.render_template_fields(context=context)
            renders[side] = trigger.message
        assert renders["alone"] == renders["whole"] == f"prod/cut_templates/{task_id}/{RUN_ID}"
    assert model.data["dag"]["task_group"]["children"]["outer"][1]["children"]["outer.inner"]


def test_a_mapped_task_keeps_the_whole_dag():
    model = Serialised(templated_dag())
    assert _Version(model).task_only("double") is None
    assert _Version(model).task_only("no_such_task") is None


def test_the_launcher_patches_this_airflow_and_only_once():
    assert triggerer.patch_applies() is None, (
        "re-check include/dbt_platform/runtime/triggerer.py on this Airflow"
    )
    code = (
        "from include.dbt_platform.runtime import triggerer\n"
        "from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor as S\n"
        "original = S._create_workload\n"
        "assert triggerer.install() and triggerer.install()\n"
        "assert S._create_workload.__wrapped__ is original\n"
        "assert S.send_msg._dbt_platform_patch\n"
        "from airflow.callbacks.database_callback_sink import DatabaseCallbackSink as D\n"
        "assert D.send._dbt_platform_patch\n"
        "assert S.run_once is triggerer.paced_run_once\n"
        "print('patched')\n"
    )
    assert "patched" in run_python(code).stdout


@pytest.mark.parametrize(
    ("argv", "version", "env", "expected", "says"),
    [
        (["airflow", "triggerer", "--skip-serve-logs"], None, {}, "patched", "DAGs cached per version"),
        (["/x/bin/airflow", "scheduler"], None, {}, "stock", ""),
        (["airflow", "triggerer"], "3.4.0", {}, "stock", "Triggerer runs unpatched"),
        (["airflow", "triggerer"], None, {"DBT_PLATFORM_TRIGGERER_PATCH": "off"}, "stock", "runs stock"),
    ],
)
def test_a_stock_airflow_triggerer_patches_itself_through_airflow_local_settings(
    argv, version, env, expected, says
):
    last, output = run_as_airflow_command(
        argv,
        version,
        "from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor as S\n"
        "print('patched' if getattr(S._create_workload, '_dbt_platform_patch', False) else 'stock')\n",
        env,
    )
    assert last == expected, output[-2000:]
    assert says in output


def test_airflow_still_ignores_the_success_callback_requests_the_triggerer_drops():
    # The dag-processor parses the DAG file for a task's success callback request and then returns
    # without running anything; if an upgrade makes it run success callbacks, dropping them would
    # lose them: this fails first, and the triggerer then files them again (its log says why).
    assert triggerer.success_callbacks_ignored() is None, (
        "re-check include/dbt_platform/runtime/triggerer.py's callback filter on this Airflow"
    )


CALLBACKS_FILED = """
import json, uuid
from include.dbt_platform.runtime import triggerer
from airflow import settings
from airflow.callbacks.callback_requests import TaskCallbackRequest
from airflow.callbacks.database_callback_sink import DatabaseCallbackSink
from airflow.models.db_callback_request import DbCallbackRequest
from sqlalchemy import select
{install}
bundle = "callback-filter-" + uuid.uuid4().hex
ti = dict(id=str(uuid.uuid4()), task_id="model.t", dag_id="d", run_id="r", try_number=1,
          dag_version_id=str(uuid.uuid4()))
session = settings.Session()
try:
    for state in ("success", "failed", "up_for_retry"):
        request = TaskCallbackRequest(filepath="d.py", bundle_name=bundle, bundle_version=None, ti=ti,
                                      task_callback_type=state)
        DatabaseCallbackSink().send(request, session=session)
    session.flush()
    rows = session.scalars(select(DbCallbackRequest).where(DbCallbackRequest.bundle_name == bundle)).all()
    print(json.dumps(sorted(r.get_callback_request().task_callback_type for r in rows)))
finally:
    session.rollback()
"""


@pytest.mark.parametrize(
    ("install", "filed"),
    [("assert triggerer.install()", ["failed", "up_for_retry"]), ("", ["failed", "success", "up_for_retry"])],
    ids=["patched", "stock"],
)
def test_the_patched_triggerer_files_failure_and_retry_callbacks_but_not_success(database, install, filed):
    # Through the real callback sink into the real metadata database (rolled back afterwards).
    out = run_python(CALLBACKS_FILED.format(install=install))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == filed


def test_another_airflow_version_runs_unpatched_and_says_so():
    code = (
        "import airflow\n"
        "airflow.__version__ = '3.4.0'\n"
        "from include.dbt_platform.runtime import triggerer\n"
        "from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor as S\n"
        "original = S._create_workload\n"
        "assert triggerer.install() is False\n"
        "assert S._create_workload is original\n"
        "from airflow.callbacks.database_callback_sink import DatabaseCallbackSink as D\n"
        "assert not hasattr(D.send, '_dbt_platform_patch')\n"
        "assert not hasattr(S.run_once, '_dbt_platform_patch')\n"
    )
    out = run_python(code)
    assert "Triggerer runs unpatched" in out.stdout + out.stderr
    assert "Airflow 3.4.0 is not one of" in out.stdout + out.stderr


class RunnerBlockedOnItsLog:
    """A trigger runner as seen from its supervisor: a request socket and a log socket.

    Its event loop first writes a burst of log lines (as it does for triggers starting), which blocks
    once the log socket is full, and only then reads the message the supervisor sends it.
    """

    LOG_BYTES = 2_000_000
    MESSAGE = b"m" * 4_000_000  # bigger than the socket buffers, as 1,000 new triggers were

    def __init__(self) -> None:
        self.requests, runner_requests = socket.socketpair()
        self.logs, runner_logs = socket.socketpair()
        self.logged = 0
        self.received = bytearray()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.requests, selectors.EVENT_READ, (lambda _s: True, lambda _s: None))
        self.selector.register(self.logs, selectors.EVENT_READ, (self._read_log, self.selector.unregister))

        def event_loop() -> None:
            try:
                runner_logs.sendall(b"l" * self.LOG_BYTES)
                while len(self.received) < len(self.MESSAGE):
                    self.received.extend(runner_requests.recv(1 << 20))
            except OSError:
                pass

        self.thread = threading.Thread(target=event_loop, daemon=True)
        self.thread.start()
        self.supervisor = SimpleNamespace(stdin=self.requests, selector=self.selector)

    def _read_log(self, sock) -> bool:
        data = sock.recv(1 << 16)
        self.logged += len(data)
        return bool(data)

    def close(self) -> None:
        self.requests.close()
        self.logs.close()


def test_a_plain_send_to_a_runner_blocked_on_its_log_locks_up():
    # What Airflow 3.3's send_msg does (sendall, logs unread meanwhile); a timeout stands for "for ever".
    runner = RunnerBlockedOnItsLog()
    try:
        runner.requests.settimeout(3)
        with pytest.raises(TimeoutError):
            runner.requests.sendall(runner.MESSAGE)
        assert runner.logged == 0
    finally:
        runner.close()


def test_the_launchers_send_serves_the_runners_log_until_the_runner_reads():
    runner = RunnerBlockedOnItsLog()
    try:
        done = threading.Event()
        sender = threading.Thread(
            target=lambda: (_send_serving_logs(runner.supervisor, runner.MESSAGE), done.set()), daemon=True
        )
        sender.start()
        assert done.wait(timeout=60), "the send locked up"
        runner.thread.join(timeout=30)
        assert bytes(runner.received) == runner.MESSAGE
        assert runner.logged > 0, "the log was served while sending"
        runner.logs.settimeout(5)
        while runner.logged < runner.LOG_BYTES and runner._read_log(runner.logs):
            pass  # what the supervisor's main loop reads next
        assert runner.logged == runner.LOG_BYTES
        assert runner.requests.gettimeout() is None, "the socket is blocking again afterwards"
    finally:
        runner.close()


CHATTY_RUNNER = """
import socket, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
end = time.monotonic() + float(sys.argv[2])
line = sys.argv[3].encode() + b"\\n"
while time.monotonic() < end:
    sock.sendall(line)  # what a busy runner's log socket carries
    time.sleep(0.02)
"""


class SupervisorRound:
    """A trigger runner supervisor as its round sees it: Airflow's own ``_service_subprocess`` over a
    real socket from a real runner process, which logs a line every 20 ms for ``seconds``; the
    round's database steps only count themselves."""

    def __init__(self, seconds: float, line: str = "trigger 1 starting") -> None:
        import subprocess
        import sys

        import psutil
        from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
        from airflow.sdk.execution_time.supervisor import PsutilTracker, WatchedSubprocess

        self._borrowed = (WatchedSubprocess._service_subprocess, WatchedSubprocess._check_subprocess_exit)
        self.is_alive = TriggerRunnerSupervisor.is_alive.__get__(self)
        self.logs, runner_end = socket.socketpair()
        self.popen = subprocess.Popen(
            [sys.executable, "-c", CHATTY_RUNNER, str(runner_end.fileno()), str(seconds), line],
            pass_fds=[runner_end.fileno()],
        )
        runner_end.close()
        self._process = PsutilTracker(psutil.Process(self.popen.pid))
        self._exit_code = None
        self.lines = 0
        self.events: list[str] = []  # what the runner reported as fired (here: its "event" lines)
        self.failed_triggers: list[str] = []
        self.rounds: list[list[str]] = []
        self.round_seconds: list[float] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.logs, selectors.EVENT_READ, (self._read_log, lambda _s: None))

    def _service_subprocess(self, max_wait_time, raise_on_timeout=False, expect_signal=None):
        return self._borrowed[0](self, max_wait_time, raise_on_timeout, expect_signal)

    def _check_subprocess_exit(self, raise_on_timeout=False, expect_signal=None):
        return self._borrowed[1](self, raise_on_timeout, expect_signal)

    def _read_log(self, sock) -> bool:
        data = sock.recv(1 << 16)
        self.lines += data.count(b"\n")
        self.events.extend("event" for _ in range(data.count(b"event\n")))
        self.failed_triggers.extend("failure" for _ in range(data.count(b"failure\n")))
        return bool(data)

    def should_stop(self) -> bool:
        return False

    def load_triggers(self) -> None:
        self.rounds.append(["load_triggers"])
        self._began = time.monotonic()

    def handle_events(self) -> None:
        self.rounds[-1].append("handle_events")
        self.round_seconds.append(time.monotonic() - self._began)
        self.events.clear()

    def _step(name):  # noqa: N805
        return lambda self: self.rounds[-1].append(name)

    def handle_failed_triggers(self) -> None:
        self.rounds[-1].append("handle_failed_triggers")
        self.failed_triggers.clear()

    clean_unused = _step("clean_unused")
    heartbeat = _step("heartbeat")
    emit_metrics = _step("emit_metrics")

    def run(self, run_once) -> None:
        while self.is_alive():
            run_once(self)
        self.logs.close()


STOCK_ROUND = [
    "load_triggers", "handle_events", "handle_failed_triggers", "clean_unused", "heartbeat", "emit_metrics",
]  # fmt: skip


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "stock"])
def test_the_supervisor_runs_its_database_round_at_most_twice_a_second_while_its_runner_talks(paced):
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

    assert triggerer.run_once_is_stock() is None, "re-check the paced round against this Airflow's run_once"
    stock = getattr(TriggerRunnerSupervisor.run_once, "__wrapped__", TriggerRunnerSupervisor.run_once)
    supervisor = SupervisorRound(seconds=2.0)
    started = time.monotonic()
    supervisor.run(triggerer.paced_run_once if paced else stock)
    took = time.monotonic() - started

    assert supervisor.lines >= 50, "the runner's log was served throughout"
    assert all(steps == STOCK_ROUND for steps in supervisor.rounds)
    if paced:
        # 2 s of chatter and the runner's exit: a round per MIN_ROUND_SECONDS, not one per line.
        assert len(supervisor.rounds) <= 2.0 / triggerer.MIN_ROUND_SECONDS + 2, len(supervisor.rounds)
        assert took < 2.0 + 4 * triggerer.MIN_ROUND_SECONDS, "its exit ends the round"
    else:
        assert len(supervisor.rounds) >= 20, len(supervisor.rounds)


@pytest.mark.parametrize("report", ["event", "failure"])
def test_a_reported_event_or_failure_ends_the_paced_rounds_wait_at_once(report):
    # A trigger that fired or failed is a task that ends: its round runs as soon as it is reported.
    supervisor = SupervisorRound(seconds=1.0, line=report)
    supervisor.run(triggerer.paced_run_once)
    assert supervisor.lines >= 20
    assert all(steps == STOCK_ROUND for steps in supervisor.rounds)
    assert len(supervisor.rounds) >= 10, "a round per report, not one per half second"
    assert (
        sorted(supervisor.round_seconds)[len(supervisor.round_seconds) // 2] < triggerer.MIN_ROUND_SECONDS / 2
    )
