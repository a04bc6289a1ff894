"""The patched triggerer registers the asset events of a task that succeeds in it, as the API server does
for a task that succeeds on a worker; a stock one registers none (so such a task resumes on a worker:
tests/unit/test_watcher_trigger.py). Airflow's own ``Trigger.submit_event`` on a real deferred task
instance in the real metadata database; the DAG factory's choice of which task carries a model's
asset. On the live stack: tests/scheduler/test_transformations_on_scheduler.py.
"""

from __future__ import annotations

import json
import uuid

import pytest

from include.dbt_platform.runtime import triggerer
from tests.harness import run_python
from tests.integration.test_scheduler_order import queued_run, scheduler_loop

DAG_FILE = """

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    StartsInTriggerer(task_id="model_a", outlets=[Asset(name="{asset}", uri="{asset}")])
    StartsInTriggerer(task_id="no_outlets")
"""

# What the triggerer's supervisor does with each event its runner reports (handle_events: one
# transaction per event), here the same event for every deferred task of the run; then the asset
# events the run's tasks have.
SUBMIT = """
import json
from airflow import settings
from airflow.models.asset import AssetEvent
from airflow.models.taskinstance import TaskInstance
from airflow.models.trigger import Trigger
from airflow.triggers.base import TaskFailedEvent, TaskSuccessEvent
from sqlalchemy import select
from include.dbt_platform.runtime import triggerer
{install}
with settings.Session() as session:
    deferred = session.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == {dag_id!r}, TaskInstance.state == "deferred")).all()
    trigger_ids = [ti.trigger_id for ti in deferred]
for trigger_id in trigger_ids:
    with settings.Session() as session:
        Trigger.submit_event(trigger_id, {event}(), session=session)
        session.commit()
with settings.Session() as session:
    events = session.scalars(select(AssetEvent).where(AssetEvent.source_dag_id == {dag_id!r})).all()
    states = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == {dag_id!r})).all()
    print(json.dumps({{
        "events": sorted([e.source_task_id, e.source_run_id, e.asset.uri] for e in events),
        "states": {{ti.task_id: ti.state for ti in states}},
    }}))
"""


@pytest.fixture
def deferred_run(tmp_path, database):
    """A run of a DAG whose two trigger-started tasks (one with an asset, one without) are deferred, as
    the dag-processor, the REST API and a scheduler loop leave them."""
    dag_id = f"outlets_{uuid.uuid4().hex[:8]}"
    asset = f"dbt://outlets-test/{dag_id}/model_a"
    with queued_run(tmp_path, dag_id, DAG_FILE.format(dag_id=dag_id, asset=asset)) as run_id:
        assert scheduler_loop(dag_id, run_id) == {"model_a": "deferred", "no_outlets": "deferred"}
        yield dag_id, run_id, asset


@pytest.mark.parametrize("patched", [True, False], ids=["patched", "stock"])
def test_a_task_that_succeeds_in_the_patched_triggerer_gets_its_asset_event(deferred_run, patched):
    dag_id, run_id, asset = deferred_run
    install = "assert triggerer.install()\nimport include.dbt_platform.runtime as r; assert r.TRIGGERER_REGISTERS_OUTLETS"
    out = run_python(
        SUBMIT.format(install=install if patched else "", dag_id=dag_id, event="TaskSuccessEvent")
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["states"] == {"model_a": "success", "no_outlets": "success"}
    # Stock, a task that ends in the triggerer gets no asset event: that is why, without the patch,
    # a model's task resumes on a worker instead (watcher/trigger.py).
    assert found["events"] == ([["model_a", run_id, asset]] if patched else [])


def test_a_task_that_fails_in_the_patched_triggerer_gets_no_asset_event(deferred_run):
    # A TaskFailedEvent goes to Airflow's own handler, not the patch's: this guards against the
    # registration moving to every task end.
    dag_id, _, _ = deferred_run
    out = run_python(
        SUBMIT.format(install="assert triggerer.install()", dag_id=dag_id, event="TaskFailedEvent")
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["states"] == {"model_a": "failed", "no_outlets": "failed"}
    assert found["events"] == []


def test_the_outlet_registration_applies_to_this_airflow_and_says_why_not_elsewhere(monkeypatch):
    import airflow

    assert triggerer.outlet_registration_applies() is None, (
        "re-check include/dbt_platform/runtime/triggerer.py's outlet registration on this Airflow"
    )
    monkeypatch.setenv("DBT_PLATFORM_TRIGGERER_PATCH", "off")  # the triggerer's switch, not the code's
    assert triggerer.outlet_registration_applies() is None
    monkeypatch.setattr(airflow, "__version__", "3.4.0")
    assert "Airflow 3.4.0 is not one of" in triggerer.outlet_registration_applies()


def test_a_success_handler_of_airflows_own_is_never_replaced():
    # Should Airflow handle a TaskSuccessEvent itself one day (perhaps registering assets), the patch
    # leaves it alone, says why, and the trigger sends tasks with outlets to a worker.
    code = (
        "from airflow.models import trigger\n"
        "from airflow.triggers.base import TaskSuccessEvent\n"
        "from include.dbt_platform.runtime import triggerer\n"
        "import include.dbt_platform.runtime as runtime\n"
        "@trigger.handle_event_submit.register\n"
        "def upstream(event: TaskSuccessEvent, *, task_instance, session): pass\n"
        "print(triggerer.outlet_registration_applies())\n"
        "assert triggerer.install()\n"
        "assert trigger.handle_event_submit.dispatch(TaskSuccessEvent) is upstream\n"
        "assert not runtime.TRIGGERER_REGISTERS_OUTLETS\n"
    )
    out = run_python(code)
    assert "handle_event_submit has its own TaskSuccessEvent handler" in out.stdout
    assert (
        "Triggerer registers no asset events; tasks with outlets resume on a worker"
        in out.stdout + out.stderr
    )


@pytest.mark.parametrize(
    ("mode", "behavior", "version"),
    [
        ("triggerer", "build", None),
        ("triggerer", "after_each", None),
        ("watcher", "after_each", None),
        ("local", "after_each", None),
        ("triggerer", "build", "3.4.0"),
    ],
)
def test_each_model_task_carries_its_asset_unless_its_triggerer_could_not_register_it(
    tmp_path, monkeypatch, mode, behavior, version
):
    """The DAG factory: each model's run (or build) task carries its model's asset, never its tests'
    task, and a trigger-started one tells its trigger so; on an Airflow the triggerer patch was not
    written for, the build carries them all, as before. The triggerer patch's switch does not count:
    the workers parse the DAG too, and must see the same outlets."""
    import airflow

    from include.dbt_platform.transformations.factory import build_transformation_dag
    from include.dbt_platform.transformations.projects import load_project
    from tests.harness import build_manifest, copy_project

    monkeypatch.setenv("DBT_PLATFORM_TRIGGERER_PATCH", "off")  # changes nothing here
    if version:
        monkeypatch.setattr(airflow, "__version__", version)
    project = copy_project("inventory_transforms", tmp_path, "assets_check")
    (project / "platform.yml").write_text(
        f"schema: assets_check\nexecution_mode: {mode}\ntest_behavior: {behavior}\n"
    )
    build_manifest(project)
    dag = build_transformation_dag(load_project(project))
    carried = {t.task_id: sorted(a.uri.rsplit("/", 1)[-1] for a in t.outlets) for t in dag.tasks if t.outlets}
    models = ["fct_applications", "fct_users", "stg_applications", "stg_users"]
    if version:
        assert carried == {"dbt_producer_watcher": models}
    elif behavior == "build":
        assert carried == {f"{m}_model_build": [m] for m in models}
    else:  # a model's run task, in its task group; not the group's test task
        assert carried == {f"{m}.run": [m] for m in models}, carried
    if mode != "triggerer":
        return
    emits = {
        t.task_id: t.start_trigger_args.trigger_kwargs["emits_assets"]
        for t in dag.tasks
        if getattr(t, "start_from_trigger", False)
    }
    assert emits == {t: t in carried for t in emits} and len(emits) >= 6, emits


# The supervisor's own path: TriggerRunnerSupervisor.on_trigger_event (Trigger.submit_event in its own
# session) with a listener of asset changes that looks, from another session, for the event it is
# told about; or, with a registration that writes its rows and then fails, the task's end without them.
THROUGH_THE_SUPERVISOR = """
import json, logging
logging.basicConfig(level=logging.INFO)
from airflow import settings
from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
from airflow.listeners import hookimpl
from airflow.listeners.listener import get_listener_manager
from airflow.models.asset import AssetEvent
from airflow.models.taskinstance import TaskInstance
from airflow.triggers.base import TaskSuccessEvent
from sqlalchemy import select, func
from include.dbt_platform.runtime import triggerer
assert triggerer.install()
seen = []

class Listener:
    @hookimpl
    def on_asset_changed(self, asset):
        with settings.Session() as other:  # committed rows only
            seen.append(other.scalar(select(func.count()).select_from(AssetEvent).where(
                AssetEvent.source_dag_id == {dag_id!r})))

get_listener_manager().add_listener(Listener())
if {fail!r}:
    register = TaskInstance.register_asset_changes_in_db
    def register_then_fail(*args, **kwargs):
        register(*args, **kwargs)  # rows written in the savepoint
        raise RuntimeError("injected: the registration failed")
    TaskInstance.register_asset_changes_in_db = staticmethod(register_then_fail)
with settings.Session() as session:
    deferred = session.scalars(select(TaskInstance).where(
        TaskInstance.dag_id == {dag_id!r}, TaskInstance.state == "deferred")).all()
    trigger_ids = [ti.trigger_id for ti in deferred]
for trigger_id in trigger_ids:
    TriggerRunnerSupervisor.on_trigger_event(None, trigger_id=trigger_id, event=TaskSuccessEvent())
with settings.Session() as session:
    events = session.scalars(select(AssetEvent).where(AssetEvent.source_dag_id == {dag_id!r})).all()
    states = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == {dag_id!r})).all()
    print(json.dumps({{"events": [e.source_task_id for e in events], "seen": seen,
                      "states": {{ti.task_id: ti.state for ti in states}}}}))
"""


@pytest.mark.parametrize("fail", [False, True], ids=["registered", "registration-fails"])
def test_listeners_hear_of_an_event_once_committed_and_a_failed_registration_keeps_the_tasks_end(
    deferred_run, fail
):
    dag_id, _, _ = deferred_run
    out = run_python(THROUGH_THE_SUPERVISOR.format(dag_id=dag_id, fail=fail))
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["states"] == {"model_a": "success", "no_outlets": "success"}
    if fail:
        # The savepoint took the half-written event back; the task's end was committed; it says so.
        assert found["events"] == [] and found["seen"] == []
        assert "No asset events registered for" in out.stdout + out.stderr
        assert "injected: the registration failed" in out.stdout + out.stderr
    else:
        assert found["events"] == ["model_a"]
        assert found["seen"] == [1], "the listener was told before the event was committed"
