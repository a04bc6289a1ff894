"""The scheduler's idle sleep ends when a task ends (``runtime/scheduler_wakeup.py``), on the real
metadata database: its trigger and LISTEN, real DAG runs and task instances, and Airflow's own
scheduler module (the loop's sleep line pinned). On the real scheduler: tests/scheduler/.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import pytest
from sqlalchemy import text

from include.dbt_platform.runtime import scheduler_wakeup
from include.dbt_platform.runtime.scheduler_wakeup import NAME, SchedulerTime, Waker
from tests.harness import run_as_airflow_command


@pytest.fixture(autouse=True)
def _drop_test_dags():
    """The DAGs a test ran (``one_task_run``) leave the metadata database with their runs."""
    yield
    from airflow.api.common.delete_dag import delete_dag

    while RAN:
        delete_dag(RAN.pop(), keep_records_in_log=False)


RAN: list[str] = []


def admin_sql(sql: str, params: dict | None = None):
    from airflow import settings

    with settings.get_engine().begin() as conn:
        return conn.execute(text(sql), params or {})


@pytest.fixture
def waker():
    waker = Waker()
    waker.sleep(0)  # connects, installs the trigger, listens
    assert waker._conn is not None, "the waker could not listen on the metadata database"
    (name,) = admin_sql(
        "select application_name from pg_stat_activity where pid = :pid",
        {"pid": waker._conn.get_backend_pid()},
    ).fetchone()
    assert name == scheduler_wakeup.APPLICATION_NAME  # what a DBA sees in pg_stat_activity
    yield waker
    waker.close()


def set_state(dag_id: str, run_id: str, state: str) -> None:
    from airflow import settings

    with settings.get_engine().begin() as conn:
        conn.execute(
            text("update task_instance set state = :state where dag_id = :dag and run_id = :run"),
            {"state": state, "dag": dag_id, "run": run_id},
        )


ONE_TASK_DAG = """
from datetime import UTC, datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("{dag_id}", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    EmptyOperator(task_id="only")
"""


def one_task_run(folder) -> tuple[str, str]:
    """A real DAG run of one task (``dag.test()`` of a DAG file, serialised as the dag-processor
    would): its run is inserted, its task ends in success."""
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    dag_id = f"wakeup_{uuid.uuid4().hex[:8]}"
    RAN.append(dag_id)
    (folder / f"{dag_id}.py").write_text(ONE_TASK_DAG.format(dag_id=dag_id))
    bag = DagBag(dag_folder=str(folder))
    sync_bag_to_db(bag, "dags-folder", None)
    assert dag_id in bag.dags, bag.import_errors
    run = bag.dags[dag_id].test()
    assert run.state == "success"
    return dag_id, run.run_id


def test_the_end_of_a_task_wakes_a_sleeping_scheduler_and_its_own_states_do_not(waker, tmp_path):
    dag_id, run_id = one_task_run(tmp_path)
    waker.sleep(60)  # the run's insert and its task's success are waiting: returns at once
    assert waker.wakeups >= 1
    waker.sleep(0.5)  # any notification of the run still on its way
    seen = waker.wakeups

    set_state(dag_id, run_id, "queued")  # what the scheduler itself sets: no notification
    waker.sleep(1)
    assert waker.wakeups == seen
    set_state(dag_id, run_id, "success")  # a task ends: wakes
    waker.sleep(60)
    assert waker.wakeups == seen + 1
    set_state(dag_id, run_id, "success")  # no change of state: nothing
    waker.sleep(1)
    assert waker.wakeups == seen + 1
    set_state(dag_id, run_id, "up_for_retry")  # a retry can be scheduled: wakes
    waker.sleep(60)
    assert waker.wakeups == seen + 2


def test_after_an_expensive_loop_it_sleeps_longer_and_a_task_end_still_wakes_it(waker, tmp_path):
    """While loops are expensive (a big DAG run examined each time), the scheduler sleeps
    BUSY_RATIO times as long as it was awake, at most MAX_IDLE_SLEEP; a notification still ends the
    sleep at once. After a cheap loop the idle sleep is as configured."""
    waker.sleep(0.5)  # drain what is on its way
    assert waker.stretched(0.2) == 0.2, "a cheap loop: the idle sleep as configured"
    time.sleep(0.35)  # an expensive loop
    assert 0.7 <= waker.stretched(0.2) <= scheduler_wakeup.MAX_IDLE_SLEEP
    started = time.monotonic()
    waker.sleep(0.2)
    assert time.monotonic() - started >= 0.6, "slept as long as twice the loop"
    time.sleep(2)  # a very expensive loop: capped
    assert waker.stretched(0.2) == scheduler_wakeup.MAX_IDLE_SLEEP
    assert waker.stretched(0) == 0, "a timer that is due is not put off"
    dag_id, run_id = one_task_run(tmp_path)  # its run and its task's end notify
    time.sleep(2)
    started, seen = time.monotonic(), waker.wakeups
    waker.sleep(0.2)
    assert waker.wakeups == seen + 1 and time.monotonic() - started < 0.5, "woken at once"


def test_a_task_that_ends_in_the_triggerer_does_not_wake_it(waker, tmp_path):
    # A transformation DAG's node tasks end there by the hundreds during a build: seen at the next loop.
    from airflow import settings

    dag_id, run_id = one_task_run(tmp_path)
    waker.sleep(60)
    waker.sleep(0.5)
    seen = waker.wakeups
    with settings.get_engine().begin() as conn:
        trigger_id = conn.execute(
            text(
                "insert into trigger (classpath, kwargs, created_date) "
                "values ('wakeup.test.Trigger', '{}', now()) returning id"
            )
        ).scalar()
        conn.execute(
            text(
                "update task_instance set state = 'deferred', trigger_id = :t where dag_id = :d and run_id = :r"
            ),
            {"t": trigger_id, "d": dag_id, "r": run_id},
        )
    with settings.get_engine().begin() as conn:  # what the triggerer does with a task's end event
        conn.execute(
            text(
                "update task_instance set state = 'success', trigger_id = null where dag_id = :d and run_id = :r"
            ),
            {"d": dag_id, "r": run_id},
        )
        conn.execute(text("delete from trigger where id = :t"), {"t": trigger_id})
    waker.sleep(1)
    assert waker.wakeups == seen


def test_the_trigger_names_no_column_so_airflows_migrations_can_alter_the_tables(waker):
    from airflow import settings

    with settings.get_engine().connect() as conn:
        triggers = conn.execute(
            text(
                "select c.relname, t.tgattr::text from pg_trigger t join pg_class c on c.oid = t.tgrelid "
                "where t.tgname = :name order by c.relname"
            ),
            {"name": NAME},
        ).fetchall()
        depends_on_columns = conn.execute(
            text(
                "select count(*) from pg_depend d join pg_trigger t on d.objid = t.oid "
                "where t.tgname = :name and d.refobjsubid <> 0"
            ),
            {"name": NAME},
        ).scalar()
    assert [(r[0], r[1]) for r in triggers] == [("dag_run", ""), ("task_instance", "")]
    assert depends_on_columns == 0


def test_a_process_forked_from_the_scheduler_leaves_its_connection_alone(waker):
    pid = os.fork()
    if pid == 0:  # the child: plain sleeps; closing its copy says nothing to the server
        unused = waker._listening() is None
        waker._conn.close()
        os._exit(0 if unused else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    admin_sql(f"notify {scheduler_wakeup.CHANNEL}")  # the parent still listens
    waker.sleep(60)
    assert waker.wakeups >= 1


def test_the_patch_goes_onto_airflows_scheduler_loop_and_comes_off():
    import airflow.jobs.scheduler_job_runner as runner

    assert scheduler_wakeup.unsupported(runner) is None  # the loop still sleeps on the line we replace
    waker = Waker(connect=lambda: None)
    assert scheduler_wakeup.install(waker) == "installed"
    try:
        assert isinstance(runner.time, SchedulerTime) and runner.time.waker is waker
        assert runner.time.monotonic is time.monotonic  # the rest of the time module, unchanged
    finally:
        scheduler_wakeup.uninstall()
    assert runner.time is time


def test_on_another_airflow_the_scheduler_sleeps_as_stock_and_says_why(monkeypatch, caplog):
    import airflow
    import airflow.jobs.scheduler_job_runner as runner

    monkeypatch.setattr(airflow, "__version__", "3.4.0")
    with caplog.at_level(logging.WARNING):
        outcome = scheduler_wakeup.install()
    assert outcome == "not installed: written for Airflow 3.3.x, this is 3.4.0"
    assert runner.time is time
    assert "Scheduler sleeps as stock" in caplog.text


@pytest.mark.parametrize(
    ("argv", "version", "env", "expected", "says"),
    [
        (["airflow", "scheduler"], None, {}, "patched", ""),
        (["/x/bin/airflow", "triggerer"], None, {}, "stock", ""),
        (["airflow", "scheduler"], "3.4.0", {}, "stock", "Scheduler sleeps as stock"),
        (["airflow", "scheduler"], None, {scheduler_wakeup.SWITCH: "off"}, "stock", "sleeps as stock"),
    ],
)
def test_a_stock_airflow_scheduler_gets_it_through_airflow_local_settings(argv, version, env, expected, says):
    last, output = run_as_airflow_command(
        argv,
        version,
        "import airflow.jobs.scheduler_job_runner as runner\n"
        "print('patched' if type(runner.time).__name__ == 'SchedulerTime' else 'stock')\n",
        {"DBT_PLATFORM_WARM_DBT": "off", **env},  # no dbt warm-up in this scheduler
    )
    assert last == expected, output[-2000:]
    assert says in output


def test_without_a_connection_the_sleep_is_a_plain_sleep_and_one_warning(caplog):
    def refused():
        raise OSError("connection refused")

    waker = Waker(connect=refused)
    with caplog.at_level(logging.WARNING):
        began = time.monotonic()
        waker.sleep(0.2)
        waker.sleep(0.2)  # the retry waits RECONNECT_SECONDS: no second attempt, no second warning
        slept = time.monotonic() - began
    assert slept >= 0.4 and waker.wakeups == 0
    assert caplog.text.count("Scheduler wake-up not listening") == 1


def test_a_lost_connection_is_one_warning_then_it_listens_again(waker, monkeypatch, caplog):
    monkeypatch.setattr(scheduler_wakeup, "RECONNECT_SECONDS", 0.0)
    old = waker._conn.get_backend_pid()
    admin_sql("select pg_terminate_backend(:pid)", {"pid": old})
    with caplog.at_level(logging.INFO):
        waker.sleep(1)  # the server closed it: one warning, a plain sleep
        waker.sleep(0)  # connects again (no second install: only LISTEN and the self-check)
    assert caplog.text.count("Scheduler wake-up not listening") == 1
    assert "listening again" in caplog.text
    assert waker._conn is not None and waker._conn.get_backend_pid() != old
    admin_sql(f"notify {scheduler_wakeup.CHANNEL}")
    waker.sleep(60)
    assert waker.wakeups >= 1


def test_installing_never_waits_on_a_busy_table_it_retries_later(monkeypatch, caplog):
    # Creating a trigger locks the table against writes: behind a long writer, a scheduler waiting
    # for that lock would hold up every later write (the API server's). It gives up within
    # LOCK_TIMEOUT and tries again; meanwhile it sleeps as stock.
    from airflow import settings

    monkeypatch.setattr(scheduler_wakeup, "RECONNECT_SECONDS", 0.0)
    scheduler_wakeup.remove()
    waker = Waker()
    try:
        with settings.get_engine().connect() as busy:
            busy.execute(text("lock table dag_run in row exclusive mode"))  # a writer, mid-transaction
            with caplog.at_level(logging.WARNING):
                waker.sleep(0.2)
            assert waker._conn is None and waker.given_up is None
            assert "LockNotAvailable" in caplog.text or "lock timeout" in caplog.text
            busy.rollback()
        waker.sleep(0)  # the writer is done: installs, listens
        assert waker._conn is not None
    finally:
        waker.close()
    (installed,) = admin_sql(scheduler_wakeup.installed_sql()).fetchone()
    assert installed == 2


def test_a_database_that_cannot_take_the_trigger_is_given_up_with_one_warning(caplog):
    waker = Waker(schema="no_such_schema")  # as a missing privilege or PostgreSQL 13 would: no retry
    with caplog.at_level(logging.WARNING):
        waker.sleep(0.1)
        waker.sleep(0.1)
    assert waker.given_up is not None and "no_such_schema" in waker.given_up
    assert caplog.text.count("Scheduler sleeps as stock") == 1
