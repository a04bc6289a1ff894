"""The scheduler queues a run's worker tasks before it defers its trigger-started ones
(``runtime/scheduler_order.py``): Airflow's own ``update_state`` and ``schedule_tis`` on a real DAG
run in the real metadata database, patched and stock. On the real scheduler: tests/scheduler/.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest

from include.dbt_platform.runtime import scheduler_order
from tests.harness import run_as_airflow_command

# A task that starts and ends in the triggerer (Airflow's own SuccessTrigger); DAG files start with it.
STARTS_IN_TRIGGERER = """
from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, BaseOperator
from airflow.triggers.base import StartTriggerArgs


class StartsInTriggerer(BaseOperator):
    def __init__(self, **kwargs):
        super().__init__(trigger_rule="always", **kwargs)
        self.start_from_trigger = True
        self.start_trigger_args = StartTriggerArgs(
            trigger_cls="airflow.triggers.testing.SuccessTrigger", trigger_kwargs={},
            next_method="execute_complete", next_kwargs=None, timeout=None,
        )

    def execute_complete(self, context, event=None):
        return event
"""

DAG_FILE = """

class OnAWorker(BaseOperator):
    def execute(self, context):
        return None


with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    {first}(task_id="build")
    for n in range(3):
        StartsInTriggerer(task_id=f"node_{{n}}")
"""


@contextmanager
def queued_run(folder, dag_id: str, dag_file: str):
    """A queued run of the DAG ``dag_file`` defines (after :data:`STARTS_IN_TRIGGERER`), as the
    dag-processor and the REST API would leave it; the DAG and its rows are deleted afterwards."""
    from airflow.api.common.delete_dag import delete_dag
    from airflow.api.common.trigger_dag import trigger_dag
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.utils.types import DagRunTriggeredByType

    (folder / f"{dag_id}.py").write_text(STARTS_IN_TRIGGERER + dag_file)
    bag = DagBag(dag_folder=str(folder))
    assert dag_id in bag.dags, bag.import_errors
    DagBundlesManager().sync_bundles_to_db()  # the dag-processor registers its bundles first
    sync_bag_to_db(bag, "dags-folder", None)
    try:
        yield trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.TEST).run_id
    finally:
        delete_dag(dag_id, keep_records_in_log=False)


@pytest.fixture
def run(tmp_path, database, request):
    """A queued run of a DAG with a worker task (or an empty one: ``indirect`` param) and three
    trigger-started ones."""
    dag_id = f"order_{uuid.uuid4().hex[:8]}"
    first = getattr(request, "param", "OnAWorker")
    with queued_run(tmp_path, dag_id, DAG_FILE.format(dag_id=dag_id, first=first)) as run_id:
        yield dag_id, run_id


def scheduler_loop(dag_id: str, run_id: str) -> dict[str, str | None]:
    """What a scheduler loop does with the run (``_schedule_dag_run``): examine it, schedule what is
    ready, commit. Returns each task's state."""
    from airflow import settings
    from airflow.models.dagbag import DBDagBag
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    with settings.Session() as session:
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        dag_run.dag = DBDagBag().get_dag_for_run(dag_run=dag_run, session=session)
        schedulable, _ = dag_run.update_state(session=session, execute_callbacks=False)
        dag_run.schedule_tis(schedulable, session=session)
        session.commit()
        session.expire_all()  # schedule_tis updates in bulk, past the objects loaded above
        return {ti.task_id: ti.state for ti in dag_run.get_task_instances(session=session)}


@pytest.fixture
def patched():
    assert scheduler_order.unsupported() is None, "re-check runtime/scheduler_order.py on this Airflow"
    assert scheduler_order.install() == "installed"
    yield
    scheduler_order.uninstall()


def test_the_worker_task_is_scheduled_first_and_the_trigger_started_ones_at_the_next_loop(run, patched):
    dag_id, run_id = run
    first = scheduler_loop(dag_id, run_id)
    assert first == {"build": "scheduled", "node_0": None, "node_1": None, "node_2": None}
    second = scheduler_loop(dag_id, run_id)
    assert second == {"build": "scheduled", "node_0": "deferred", "node_1": "deferred", "node_2": "deferred"}


@pytest.mark.parametrize("run", ["EmptyOperator"], indirect=True)
def test_beside_an_empty_task_nothing_waits(run, patched):
    # Airflow sets an empty task to success without a worker: no task is queued in that loop, so
    # the trigger-started ones are deferred in it, as stock.
    dag_id, run_id = run
    first = scheduler_loop(dag_id, run_id)
    assert first == {"build": "success", "node_0": "deferred", "node_1": "deferred", "node_2": "deferred"}


def test_stock_defers_them_in_the_same_loop(run):
    from airflow.models.dagrun import DagRun

    assert not getattr(DagRun.schedule_tis, "_dbt_platform_patch", False)
    dag_id, run_id = run
    first = scheduler_loop(dag_id, run_id)
    assert first == {"build": "scheduled", "node_0": "deferred", "node_1": "deferred", "node_2": "deferred"}


def test_on_another_airflow_the_scheduler_runs_stock_and_says_why(monkeypatch, caplog):
    import airflow
    from airflow.models.dagrun import DagRun

    monkeypatch.setattr(airflow, "__version__", "3.4.0")
    original = DagRun.schedule_tis
    with caplog.at_level("WARNING", logger=scheduler_order.log.name):
        assert scheduler_order.install().startswith("not installed: written for Airflow 3.3.x")
    assert DagRun.schedule_tis is original
    assert "trigger-started tasks before it queues its worker tasks (stock)" in caplog.text


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["airflow", "scheduler", "--skip-serve-logs"], {}, "patched"),
        (["airflow", "triggerer"], {}, "stock"),
        (["airflow", "scheduler"], {scheduler_order.SWITCH: "off"}, "stock"),
    ],
)
def test_a_stock_airflow_scheduler_gets_it_through_airflow_local_settings(argv, env, expected):
    last, output = run_as_airflow_command(
        argv,
        None,
        "from airflow.models.dagrun import DagRun\n"
        "print('patched' if getattr(DagRun.schedule_tis, '_dbt_platform_patch', False) else 'stock')\n",
        env,
    )
    assert last == expected, output[-2000:]
    assert (scheduler_order.INSTALLED in output) == (expected == "patched")
