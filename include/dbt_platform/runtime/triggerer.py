"""``airflow triggerer`` without its per-task DAG cost: installed by ``airflow_local_settings``.

Every consumer of a transformation DAG starts in the triggerer (``start_from_trigger``). For each such
task, Airflow 3.3's triggerer

1. reads the serialised DAG from the database and deserialises it in its supervisor process, to read
   the task's ``start_from_trigger`` flag (``SerializedDagModel.dag`` deserialises on every access);
2. sends the whole serialised DAG to its trigger runner process inside the task's ``RunTrigger``
   workload (``dag_data``: 0.9 MB for 500 models);
3. deserialises it there a second time, to build the task instance that templates render against.

That is work in tasks x DAG size: about 123 ms per task at 500 models, a minute of CPU per run, and
all of a run's new workloads go to the runner in one message (over 1 GB at 1,000 models). The
runner only needs the task itself and the DAG's own settings (params, dates, timetable).

:func:`install` changes two things, in the triggerer's supervisor process only:

- the DAG is read and deserialised once per DAG version (``dag_version_id`` + ``dag_hash``; the
  last 16 versions are kept);
- ``dag_data`` is cut down to that one task: the DAG's settings, the task's serialised entry (its
  downstream ids dropped, as no other task is there), the chain of task groups that holds it, and
  no edges or DAG dependencies. The runner then deserialises a one-task DAG.

It also keeps the supervisor reading its runner's log lines while it sends the runner a message.
The runner's event loop writes a log line per trigger it starts ("trigger ... starting"), and blocks
when the log socket is full; the supervisor stops reading that socket while it sends, and its send
waits for that same event loop to read. With hundreds of triggers at once (1,000 models: a 3 MB
message) the two waited for each other for good. While the message does not fit in the socket, the
patched ``send_msg`` serves the runner's log, stdout and stderr sockets, as its main loop would.

And it drops the success callback requests the triggerer files for the dag-processor. Every task
that ends in the triggerer (each node task of a transformation DAG) files a ``TaskCallbackRequest``,
whatever the state; for a success, Airflow 3.3's dag-processor parses the DAG file to serve it and
then does nothing (``_execute_task_callbacks`` runs failure and retry callbacks only, and logs "Task
callback requested but is not a failure callback"). At 1,000 models that was a thousand requests per
run, each batch a parse of the transformations file at the DAG's size. Failure and retry requests
go through unchanged. This part applies only where the dag-processor's code still ignores success
requests (:func:`success_callbacks_ignored`).

And it paces the supervisor's database round (:func:`paced_run_once`). Stock, the supervisor waits
up to a second for its runner and runs a round (assign and load triggers, persist events, delete
unused triggers: a handful of queries and commits) as soon as anything arrives, a log line
included; while a transformation runs, that was several rounds a second on the cores its build
needs. Paced, it keeps serving the runner (requests answered, log lines written, events queued as
they arrive) until :data:`MIN_ROUND_SECONDS` have passed, then runs the same round in the same
order; a round in which the runner reported an event or a failure (a task ends) runs at once, as
stock, so no task ends later than it would have. A new trigger can reach the runner up to one of its
syncs (a second) later than stock: it is loaded at most every half second. This
part applies only while ``run_once`` is the one it copies (:func:`run_once_is_stock`).

And it registers the asset events of a task that succeeds in the triggerer
(:func:`install_outlet_registration`). Stock Airflow registers a task's outlets only in the API
server's success call from a worker; a task ended by a ``TaskSuccessEvent`` gets none. Each model's
node task carries its model's asset, so each event lands as the model is refreshed, during the build,
instead of all of them in the build's success call at the run's end (1.7 s at 500 models, 4.8 s at
1,000, one at a time). The trigger runner, forked from the supervisor after the patch, reads the flag
it sets (``include.dbt_platform.runtime.TRIGGERER_REGISTERS_OUTLETS``): in a triggerer without it
(switched off, or refused), a task with outlets resumes on a worker instead, where Airflow registers
them. The DAG factory asks :func:`outlet_registration_applies` too: on an Airflow where it would not
apply the build carries every model's asset, as before. This part has its own guard and applies
even where the rest of the patch is refused.

Nothing else changes: the trigger, its kwargs, the template context (``dag``, ``params``,
``dag_run``, ``ti``...) are built by Airflow's own code from that data. A task that is mapped or
sits in a mapped task group keeps the whole DAG (its expand input may refer to other tasks), and any
error while cutting falls back to the whole DAG. The patch is applied only to the Airflow versions it
was written against (:data:`PATCHED_AIRFLOW`) and where the code has the expected shape; anywhere
else the triggerer runs unchanged and says so in its log.

The fixes belong upstream (send each DAG version once and cache it on both sides; never block the
runner's event loop on a log write, or read logs while sending). Until then a stock ``airflow
triggerer`` gets the patch by itself: Airflow imports ``airflow_local_settings`` in every process
as it starts, and finds the one in this project's ``plugins/`` folder (it puts the plugins folder on
``sys.path``; ``$AIRFLOW_HOME/config/`` comes first, so a deployment with its own
``airflow_local_settings`` adds ``from include.dbt_platform.runtime.triggerer import
install_in_triggerer; install_in_triggerer()`` to it). :func:`install_in_triggerer` does nothing
outside ``airflow triggerer``; inside, it patches the triggerer's module as soon as Airflow imports
it. ``DBT_PLATFORM_TRIGGERER_PATCH=off`` leaves the triggerer stock. The official image, the Helm
chart and Astro Runtime run ``airflow triggerer``: all get it, and
``python -m include.dbt_platform.runtime.triggerer`` (the earlier launcher) still works.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import logging
import select
import sys
import time
from typing import Any

from include.dbt_platform.runtime import airflow_command, install_when_imported, switched_off
from include.dbt_platform.runtime.dag_cut import _CachingDagBag, _VersionCache

log = logging.getLogger("include.dbt_platform.runtime.triggerer")  # also when run as __main__

PATCHED_AIRFLOW = ("3.3.",)
_EXPECTED_PARAMETERS = ["self", "trigger", "dag_bag", "render_log_fname", "session"]
_EXPECTED_SEND_PARAMETERS = ["self", "msg", "request_id", "error", "dump_opts"]


# ----------------------------------------------------------------------------- sending


def _send_serving_logs(supervisor: Any, data: bytes | bytearray) -> None:
    """``sendall`` to the runner, serving its other sockets whenever the runner is not reading."""
    sock = supervisor.stdin
    view = memoryview(data)
    previous_timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        while view:
            try:
                view = view[sock.send(view) :]
                continue
            except BlockingIOError:
                pass
            others = {
                key.fileobj.fileno(): key
                for key in supervisor.selector.get_map().values()
                if key.fileobj is not sock
            }
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLOUT)
            for fd in others:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(1000):
                key = others.get(fd)
                if key is None:
                    continue  # the runner reads again: send on
                handler, on_close = key.data
                try:
                    need_more = handler(key.fileobj)
                except (BrokenPipeError, ConnectionResetError):
                    need_more = False
                if not need_more:  # as WatchedSubprocess._service_subprocess does at EOF
                    on_close(key.fileobj)
                    key.fileobj.close()
    finally:
        sock.settimeout(previous_timeout)


def _send_msg(self, msg, request_id, error=None, **dump_opts):
    # WatchedSubprocess.send_msg (Airflow 3.3), with a send that cannot lock up with the runner.
    from airflow.sdk.execution_time.comms import _ResponseFrame

    if msg:
        frame = _ResponseFrame(id=request_id, body=self._serialize_response(msg, **dump_opts))
    else:
        err_resp = self._serialize_response(error) if error else None
        frame = _ResponseFrame(id=request_id, error=err_resp)
    _send_serving_logs(self, frame.as_bytes())


# ----------------------------------------------------------------------------- callbacks


def _first_statement(source: str) -> ast.stmt | None:
    """The first statement of ``source``: a function as ``inspect.getsource`` gives it (a method's
    source is indented)."""
    body = ast.parse(inspect.cleandoc("\n" + source)).body
    return body[0] if body else None


def success_callbacks_ignored() -> str | None:
    """None if Airflow's dag-processor returns from a task's success callback request without doing
    anything (so not filing it loses nothing), else why that cannot be relied on."""
    from airflow.callbacks.callback_requests import TaskCallbackRequest
    from airflow.dag_processing import processor

    serve = getattr(processor, "_execute_task_callbacks", None)
    if serve is None:
        return "airflow.dag_processing.processor._execute_task_callbacks is gone"
    if not isinstance(getattr(TaskCallbackRequest, "is_failure_callback", None), property):
        return "TaskCallbackRequest.is_failure_callback is gone"
    function = _first_statement(inspect.getsource(serve))
    first = function.body[0] if isinstance(function, ast.FunctionDef) else None
    expected = "not request.is_failure_callback"
    if not (
        isinstance(first, ast.If)
        and ast.unparse(first.test) == expected
        and isinstance(first.body[-1], ast.Return)
        and first.body[-1].value is None
    ):
        return f"_execute_task_callbacks no longer starts with `if {expected}: ... return`"
    return None


def _drop_success_callbacks(send):
    from airflow.callbacks.callback_requests import TaskCallbackRequest

    def send_failure_callbacks(self, callback, *args, **kwargs):
        if isinstance(callback, TaskCallbackRequest) and not callback.is_failure_callback:
            return None  # the dag-processor would parse the DAG file and then ignore it
        return send(self, callback, *args, **kwargs)

    send_failure_callbacks._dbt_platform_patch = True  # type: ignore[attr-defined]
    send_failure_callbacks.__wrapped__ = send  # type: ignore[attr-defined]
    return send_failure_callbacks


def install_callback_filter() -> bool:
    """In the triggerer: success callback requests of tasks are not filed (see the module's doc)."""
    from airflow.callbacks.database_callback_sink import DatabaseCallbackSink

    if getattr(DatabaseCallbackSink.send, "_dbt_platform_patch", False):
        return True
    reason = success_callbacks_ignored()
    if reason:
        log.warning("Triggerer files every task's success callback request: %s", reason)
        return False
    DatabaseCallbackSink.send = _drop_success_callbacks(DatabaseCallbackSink.send)  # type: ignore[method-assign]
    return True


# ----------------------------------------------------------------------------- pacing

# The supervisor's database round (assign and load triggers, persist events, delete unused triggers)
# runs at most this often; in between it keeps serving its runner. Stock runs a round after every
# message from the runner, a log line included.
MIN_ROUND_SECONDS = 0.5

# TriggerRunnerSupervisor.run_once in Airflow 3.3, compared by its syntax tree: the paced copy
# below is that body with the serving stretched, so any change upstream leaves the round stock.
STOCK_RUN_ONCE = """
def run_once(self) -> None:
    \"\"\"Perform a single iteration of the run loop.\"\"\"
    self.load_triggers()
    self._service_subprocess(1)
    self.handle_events()
    self.handle_failed_triggers()
    self.clean_unused()
    self.heartbeat()
    self.emit_metrics()
"""


def _tree(source: str) -> str:
    return ast.dump(_first_statement(source))


def run_once_is_stock() -> str | None:
    """None if the supervisor's round is the one :func:`paced_run_once` copies, else why not."""
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

    run_once = getattr(TriggerRunnerSupervisor.run_once, "__wrapped__", TriggerRunnerSupervisor.run_once)
    try:
        if _tree(inspect.getsource(run_once)) == _tree(STOCK_RUN_ONCE):
            return None
    except (OSError, TypeError, SyntaxError) as err:
        return f"TriggerRunnerSupervisor.run_once cannot be read: {err}"
    return "TriggerRunnerSupervisor.run_once changed"


def paced_run_once(self) -> None:
    """Stock ``run_once``, serving the runner until :data:`MIN_ROUND_SECONDS` have passed.

    Stock waits up to 1 s for the runner and runs a round as soon as anything arrives: while a
    transformation runs, the runner writes a log line per trigger started and ended and its
    triggers ask for XComs, so the supervisor ran several rounds a second, each a handful of
    queries and two commits besides the events' own, on the two cores the build runs on. Messages
    are still served as they arrive (requests answered, log lines written); only the round waits,
    and not when the runner has reported an event or a failure (a task ends): that round runs at
    once. What waits: new triggers are loaded up to that much later, and so may reach the runner one
    of its syncs (a second) later than stock; cancellations likewise.
    """
    self.load_triggers()
    began = time.monotonic()
    self._service_subprocess(1)
    # A fired or failed trigger (a task ends): its round runs now.
    while self.is_alive() and not self.should_stop() and not self.events and not self.failed_triggers:
        left = began + MIN_ROUND_SECONDS - time.monotonic()
        if left <= 0:
            break
        self._service_subprocess(left)
    self.handle_events()
    self.handle_failed_triggers()
    self.clean_unused()
    self.heartbeat()
    self.emit_metrics()


def install_pacing() -> bool:
    """In the triggerer: a database round at most every :data:`MIN_ROUND_SECONDS`."""
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

    if getattr(TriggerRunnerSupervisor.run_once, "_dbt_platform_patch", False):
        return True
    reason = run_once_is_stock()
    if reason:
        log.warning("Triggerer runs a database round after every message from its runner: %s", reason)
        return False
    paced_run_once._dbt_platform_patch = True  # type: ignore[attr-defined]
    paced_run_once.__wrapped__ = TriggerRunnerSupervisor.run_once  # type: ignore[attr-defined]
    TriggerRunnerSupervisor.run_once = paced_run_once  # type: ignore[method-assign]
    return True


# ----------------------------------------------------------------------------- outlets

_EXPECTED_REGISTER_PARAMETERS = ["ti", "task_outlets", "outlet_events", "session"]
_EXPECTED_HANDLER_PARAMETERS = ["event", "task_instance", "session"]


def outlet_registration_applies() -> str | None:
    """None if a patched triggerer of this Airflow registers the outlets of the tasks that succeed in
    it, else why not. The DAG factory asks too, in every process that parses the DAGs, when it
    decides which task carries a model's asset: so it asks only what is the same in all of them (the
    code, not ``DBT_PLATFORM_TRIGGERER_PATCH``; a triggerer switched off sends such tasks to a worker)."""
    import airflow

    if not airflow.__version__.startswith(PATCHED_AIRFLOW):
        return f"Airflow {airflow.__version__} is not one of {PATCHED_AIRFLOW}"
    from airflow.models import trigger
    from airflow.models.taskinstance import TaskInstance
    from airflow.triggers.base import BaseTaskEndEvent, TaskSuccessEvent

    handle = getattr(trigger, "handle_event_submit", None)
    base = getattr(handle, "registry", {}).get(BaseTaskEndEvent)
    if base is None:
        return "airflow.models.trigger.handle_event_submit has no BaseTaskEndEvent handler"
    if list(inspect.signature(base).parameters) != _EXPECTED_HANDLER_PARAMETERS:
        return f"handle_event_submit's BaseTaskEndEvent handler{inspect.signature(base)} changed"
    if not issubclass(TaskSuccessEvent, BaseTaskEndEvent):
        return "TaskSuccessEvent is no BaseTaskEndEvent"
    handler = handle.dispatch(TaskSuccessEvent)
    if handler is not base and not getattr(handler, "_dbt_platform_patch", False):
        return "handle_event_submit has its own TaskSuccessEvent handler"
    try:
        handler_source = inspect.getsource(base).lower()
        submit = inspect.getsource(trigger.Trigger.submit_event)
    except (OSError, TypeError) as err:  # no sources shipped: cannot tell
        return f"Airflow's trigger handling cannot be read: {err}"
    if "asset" in handler_source or "outlet" in handler_source:
        return "handle_event_submit's BaseTaskEndEvent handler deals with assets itself"
    register = getattr(TaskInstance, "register_asset_changes_in_db", None)
    if register is None:
        return "TaskInstance.register_asset_changes_in_db is gone"
    if list(inspect.signature(register).parameters) != _EXPECTED_REGISTER_PARAMETERS:
        return f"TaskInstance.register_asset_changes_in_db{inspect.signature(register)} changed"
    if "handle_event_submit(event, task_instance=task_instance, session=session)" not in submit:
        return "Trigger.submit_event no longer hands each deferred task to handle_event_submit"
    return None


@dataclasses.dataclass(frozen=True)
class AssetProfile:
    """What ``register_asset_changes_in_db`` reads of the Execution API's ``AssetProfile`` (which
    would import FastAPI into the triggerer)."""

    type: str
    name: str | None = None
    uri: str | None = None


def outlet_profiles(entry: dict | None) -> list[AssetProfile]:
    """The asset profiles of a serialised task's outlets, as the Task SDK sends them on success."""
    profiles = []
    for outlet in (entry or {}).get("__var", {}).get("outlets") or ():
        kind, var = outlet.get("__type"), outlet.get("__var") or {}
        if kind == "asset":
            profiles.append(AssetProfile("Asset", name=var.get("name"), uri=var.get("uri")))
        elif kind == "asset_ref" and var.get("name"):
            profiles.append(AssetProfile("AssetNameRef", name=var["name"]))
        elif kind == "asset_ref" and var.get("uri"):
            profiles.append(AssetProfile("AssetUriRef", uri=var["uri"]))
        # An alias registers nothing without events the task itself emitted (none here).
    return profiles


def _commits_each_event(on_trigger_event) -> str | None:
    """None if the supervisor's ``on_trigger_event`` is Airflow 3.3's (``Trigger.submit_event`` in a
    session of its own, committed when it returns), else why not."""
    try:
        if list(inspect.signature(on_trigger_event).parameters) != ["self", "trigger_id", "event"]:
            return f"TriggerRunnerSupervisor.on_trigger_event{inspect.signature(on_trigger_event)} changed"
        if "Trigger.submit_event(trigger_id=trigger_id, event=event)" not in inspect.getsource(
            on_trigger_event
        ):
            return "TriggerRunnerSupervisor.on_trigger_event no longer submits each event on its own"
    except (OSError, TypeError) as err:
        return f"TriggerRunnerSupervisor.on_trigger_event cannot be read: {err}"
    return None


# Listener callbacks of the asset events registered in the event being handled: run once it is
# committed, as the API server does (the supervisor handles one event at a time, in one thread).
_asset_callbacks: list = []


def _after_commit(on_trigger_event):
    def on_trigger_event_then_listeners(self, trigger_id, event):
        _asset_callbacks.clear()
        try:
            on_trigger_event(self, trigger_id, event)  # Trigger.submit_event: its own session, committed
        except BaseException:
            _asset_callbacks.clear()  # rolled back: nothing to tell
            raise
        callbacks = list(_asset_callbacks)
        _asset_callbacks.clear()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a listener's error must not stop the triggerer
                log.exception("An asset listener failed")

    on_trigger_event_then_listeners._dbt_platform_patch = True  # type: ignore[attr-defined]
    on_trigger_event_then_listeners.__wrapped__ = on_trigger_event  # type: ignore[attr-defined]
    return on_trigger_event_then_listeners


def install_outlet_registration(cache: _VersionCache) -> bool:
    """In the triggerer: a task that succeeds in it gets its outlets' asset events, as on a worker.

    Stock, a task ended by a ``TaskSuccessEvent`` is marked done and nothing else: Airflow registers
    a task's asset events only in the API server's success call from a worker. The handler below runs
    Airflow's own handler, then, for a task now in state success, the API server's own
    ``TaskInstance.register_asset_changes_in_db`` with the task's outlets (read from the serialised
    DAG version the task instance belongs to, cached per version), in a savepoint of the same
    transaction: an error there is logged and loses those events, never the task's end nor the
    triggerer (an exception out of the supervisor's event handling would stop it, and every deferred
    task with it). The listeners' callbacks run after the commit, as in the API server. The flag
    :data:`include.dbt_platform.runtime.TRIGGERER_REGISTERS_OUTLETS` tells the trigger runner (forked
    from this process after the patch) that it may end such a task here.
    """
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
    from airflow.models import trigger
    from airflow.models.dagbag import DBDagBag
    from airflow.models.taskinstance import TaskInstance
    from airflow.triggers.base import BaseTaskEndEvent, TaskSuccessEvent
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    import include.dbt_platform.runtime as runtime

    if getattr(trigger.handle_event_submit.dispatch(TaskSuccessEvent), "_dbt_platform_patch", False):
        runtime.TRIGGERER_REGISTERS_OUTLETS = True
        return True
    reason = outlet_registration_applies()
    on_trigger_event = TriggerRunnerSupervisor.on_trigger_event
    if reason is None:
        reason = _commits_each_event(on_trigger_event)
    if reason:
        log.warning("Triggerer registers no asset events; tasks with outlets resume on a worker: %s", reason)
        return False
    base = trigger.handle_event_submit.registry[BaseTaskEndEvent]

    def handle_success(event, *, task_instance, session):
        # Two triggerers can fire the same trigger (a reassignment): Airflow's select of the deferred
        # task takes no lock, so the one that waits here finds it ended and registers nothing.
        still_deferred = session.scalar(
            select(TaskInstance.id)
            .where(TaskInstance.id == task_instance.id, TaskInstance.state == TaskInstanceState.DEFERRED)
            .with_for_update()
        )
        base(event, task_instance=task_instance, session=session)
        if still_deferred is None or task_instance.state != TaskInstanceState.SUCCESS:
            return
        try:
            with session.begin_nested():
                bag = _CachingDagBag(DBDagBag(), cache)
                version = bag.get_serialized_dag_model(
                    version_id=task_instance.dag_version_id, session=session
                )
                if version is None:
                    raise LookupError(f"no serialised DAG version {task_instance.dag_version_id}")
                entry = version.task_entry(task_instance.task_id)
                if entry is None:
                    raise LookupError(f"no task {task_instance.task_id} in DAG version {version.version_id}")
                outlets = outlet_profiles(entry)
                if outlets:
                    _asset_callbacks.extend(
                        TaskInstance.register_asset_changes_in_db(task_instance, outlets, [], session=session)
                    )
        except Exception:  # the task has ended; its events must not stop the triggerer
            log.exception("No asset events registered for %s", task_instance)

    handle_success._dbt_platform_patch = True  # type: ignore[attr-defined]
    handle_success.__wrapped__ = base  # type: ignore[attr-defined]
    TriggerRunnerSupervisor.on_trigger_event = _after_commit(on_trigger_event)  # type: ignore[method-assign]
    trigger.handle_event_submit.register(TaskSuccessEvent)(handle_success)
    runtime.TRIGGERER_REGISTERS_OUTLETS = True
    log.info("Triggerer registers the asset events of the tasks that succeed in it")
    return True


# ----------------------------------------------------------------------------- the patch


def patch_applies() -> str | None:
    """None if :func:`install` can patch this Airflow, else why not."""
    import airflow

    if not airflow.__version__.startswith(PATCHED_AIRFLOW):
        return f"Airflow {airflow.__version__} is not one of {PATCHED_AIRFLOW}"
    from airflow.executors.workloads import RunTrigger
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

    create = getattr(TriggerRunnerSupervisor, "_create_workload", None)
    if create is None:
        return "TriggerRunnerSupervisor._create_workload is gone"
    if list(inspect.signature(create).parameters) != _EXPECTED_PARAMETERS:
        return f"TriggerRunnerSupervisor._create_workload{inspect.signature(create)} changed"
    if "dag_data" not in RunTrigger.model_fields:
        return "RunTrigger has no dag_data"
    from airflow.sdk.execution_time.supervisor import WatchedSubprocess

    send = TriggerRunnerSupervisor.send_msg
    if send is not WatchedSubprocess.send_msg and not getattr(send, "_dbt_platform_patch", False):
        return "TriggerRunnerSupervisor has its own send_msg"
    if list(inspect.signature(send).parameters) != _EXPECTED_SEND_PARAMETERS:
        return f"send_msg{inspect.signature(send)} changed"
    return None


def install() -> bool:
    """Patch the triggerer supervisor (this process); False, with a warning, where it does not apply.
    The asset events' registration has its own guard and log line, and installs either way."""
    from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor

    if getattr(TriggerRunnerSupervisor._create_workload, "_dbt_platform_patch", False):
        return True
    cache = _VersionCache()
    # Guarded on its own, as the DAG factory asks: its tasks would otherwise all end on a worker.
    outlets = install_outlet_registration(cache)
    reason = patch_applies()
    if reason:
        log.warning("Triggerer runs unpatched (each task gets the whole DAG): %s", reason)
        return False
    filtered = install_callback_filter()
    paced = install_pacing()
    original = TriggerRunnerSupervisor._create_workload
    failures: set[str] = set()

    def _create_workload(self, trigger, dag_bag, render_log_fname, session):
        bag = _CachingDagBag(dag_bag, cache)
        workload = original(self, trigger, bag, render_log_fname, session)
        if workload is None or workload.dag_data is None or workload.ti is None:
            return workload
        version = bag.version
        try:
            cut = version.task_only(workload.ti.task_id) if version is not None else None
        except Exception as err:  # never fail a trigger the stock code would start
            if workload.ti.dag_id not in failures:
                failures.add(workload.ti.dag_id)
                log.warning("Sending the whole DAG %s to the runner: %r", workload.ti.dag_id, err)
            cut = None
        if cut is not None:
            workload.dag_data = cut
            if not version.announced:
                version.announced = True
                log.info(
                    "DAG %s version %s: each start_from_trigger task goes to the runner alone "
                    "(%d KB instead of %d KB)",
                    workload.ti.dag_id,
                    version.version_id,
                    len(json.dumps(cut)) // 1024,
                    len(json.dumps(version.data)) // 1024,
                )
        return workload

    _create_workload._dbt_platform_patch = True  # type: ignore[attr-defined]
    _create_workload.__wrapped__ = original  # type: ignore[attr-defined]
    TriggerRunnerSupervisor._create_workload = _create_workload  # type: ignore[method-assign]
    _send_msg._dbt_platform_patch = True  # type: ignore[attr-defined]
    TriggerRunnerSupervisor.send_msg = _send_msg  # type: ignore[method-assign]
    log.info(
        "Triggerer: DAGs cached per version, each start_from_trigger task gets only itself, "
        "runner logs served while sending%s%s%s",
        ", no success callback requests for the dag-processor" if filtered else "",
        ", asset events of the tasks that succeed in it" if outlets else "",
        f", a database round at most every {MIN_ROUND_SECONDS:g} s" if paced else "",
    )
    return True


# ----------------------------------------------------------------------------- stock `airflow triggerer`

TRIGGERER_MODULE = "airflow.jobs.triggerer_job_runner"


def is_triggerer_process(argv: list[str] | None = None) -> bool:
    """This process is ``airflow triggerer`` (``airflow`` console script or ``python -m airflow``)."""
    return airflow_command(argv)[:1] == ["triggerer"]


def install_in_triggerer(argv: list[str] | None = None) -> str:
    """Called by ``airflow_local_settings`` in every Airflow process. Returns what it did."""
    if not is_triggerer_process(argv):
        return "not the triggerer"
    if switched_off("DBT_PLATFORM_TRIGGERER_PATCH"):
        log.info("Triggerer runs stock: DBT_PLATFORM_TRIGGERER_PATCH=off")
        return "switched off"

    return install_when_imported(
        TRIGGERER_MODULE, install, log=log, refused="Triggerer runs unpatched (each task gets the whole DAG)"
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    install()
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", "triggerer", *args]
    airflow_main()


if __name__ == "__main__":
    main()
