"""``airflow scheduler`` starts on a task's successor when the task ends, not when its idle sleep is
over: installed by ``airflow_local_settings``.

Airflow 3.3's scheduler loop sleeps ``[scheduler] scheduler_idle_sleep_time`` after every loop that
queued nothing and heard nothing from its executor. A task reports its end through the API server;
its executor hears of it only when the task's process has exited, later. So the next task of a chain
waited for the rest of that sleep: from a task's end to its successor being scheduled took 0.16 s
(median; idle sleep 0.2 s) on this machine, the largest part of each gap between a saga's steps.

:func:`install` makes that sleep a wait for a PostgreSQL notification, with the same timeout. A
trigger on the metadata database notifies ``dbt_platform_scheduler`` when a task instance reaches a
state that can make another one schedulable (:data:`WAKING_STATES`) and when a DAG run is created.
A scheduler with nothing to do loops exactly as often as before (nothing notifies it); one with
something to do starts on it at once. Every writer of those states is covered (the API server for
tasks, the triggerer, the scheduler, a person clearing a task), with any executor, and with two
schedulers (both listen). Two kinds of change do not wake it, and are seen at its next loop as
before: ``scheduled``, which the scheduler sets itself every time it schedules (it would wake itself
for nothing), and a task ending in the triggerer (it was deferred): the node tasks of a
transformation DAG end there by the hundreds while its build runs, and a loop for each would take
CPU from the build.

The function and its two triggers (all named ``dbt_platform_wake_scheduler``) are created by the
scheduler when it first sleeps, as the metadata database's owner, under an advisory lock (two
schedulers starting together). Their definitions name no column and the function reads the rows
through ``to_jsonb``, so Airflow's migrations can still alter the tables, and a renamed column makes
it wake nothing rather than fail an update (after an upgrade the guard below refuses, nothing
listens, and the trigger stays, harmless). To remove them, switch the wake-up off in every scheduler
(``DBT_PLATFORM_SCHEDULER_WAKEUP=off``; a scheduler that starts with it on creates them again), then::

    DROP TRIGGER dbt_platform_wake_scheduler ON task_instance;
    DROP TRIGGER dbt_platform_wake_scheduler ON dag_run;
    DROP FUNCTION dbt_platform_wake_scheduler();

Guarded like the triggerer patch: only on the Airflow versions it was written against
(:data:`PATCHED_AIRFLOW`), where the loop's sleep is the expected line (:data:`EXPECTED_SLEEP`), and
on PostgreSQL through psycopg2; anywhere else, or switched off, the scheduler sleeps as stock and
says why once. A lost connection is one warning and plain sleeps until it reconnects (tried at most
every :data:`RECONNECT_SECONDS`). Processes forked from the scheduler never use its connection, and
their copy of its socket is pointed at /dev/null as they start.
"""

from __future__ import annotations

import inspect
import logging
import os
import select
import sys
import time
import weakref

from include.dbt_platform.runtime import PatchAfterImport, airflow_command

log = logging.getLogger(__name__)

SWITCH = "DBT_PLATFORM_SCHEDULER_WAKEUP"
SCHEDULER_MODULE = "airflow.jobs.scheduler_job_runner"
PATCHED_AIRFLOW = ("3.3.",)
EXPECTED_SLEEP = "time.sleep(min(self._scheduler_idle_sleep_time, next_event or 0))"
CHANNEL = "dbt_platform_scheduler"
NAME = "dbt_platform_wake_scheduler"
WAKING_STATES = (
    "success",
    "failed",
    "skipped",
    "upstream_failed",
    "up_for_retry",
    "up_for_reschedule",
    "removed",
)
RECONNECT_SECONDS = 30.0

INSTALL_SQL = f"""
SELECT pg_advisory_xact_lock(hashtext('{NAME}'));
CREATE OR REPLACE FUNCTION {NAME}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    after jsonb;
    before jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('{CHANNEL}', '');
        RETURN NULL;
    END IF;
    -- Columns read through to_jsonb: a migration that renames one makes this a no-op, never an error.
    after := to_jsonb(NEW);
    before := to_jsonb(OLD);
    IF after ->> 'state' IN ({", ".join(f"'{s}'" for s in WAKING_STATES)})
       AND after ->> 'state' IS DISTINCT FROM before ->> 'state'
       AND before ->> 'trigger_id' IS NULL THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER {NAME} AFTER UPDATE ON task_instance FOR EACH ROW EXECUTE FUNCTION {NAME}();
CREATE OR REPLACE TRIGGER {NAME} AFTER INSERT ON dag_run FOR EACH ROW EXECUTE FUNCTION {NAME}();
"""


def metadata_connection():
    """A psycopg2 connection of its own to Airflow's metadata database (out of Airflow's pool)."""
    from airflow import settings

    engine = settings.get_engine()
    if (engine.dialect.name, engine.dialect.driver) != ("postgresql", "psycopg2"):
        raise RuntimeError(
            f"needs PostgreSQL through psycopg2, not {engine.dialect.name}+{engine.dialect.driver}"
        )
    pooled = engine.raw_connection()
    conn = pooled.driver_connection
    pooled.detach()  # ours for good: never handed back to Airflow's pool
    return conn


class Waker:
    """A sleep that ends early when the metadata database notifies :data:`CHANNEL`."""

    def __init__(self, connect=metadata_connection) -> None:
        self._connect = connect
        self._conn = None
        self._owner = os.getpid()
        self._retry_at = 0.0
        self.wakeups = 0  # sleeps a notification ended
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (waker := me()) is not None and waker._forked())

    def sleep(self, seconds: float) -> None:
        conn = self._listening()
        if conn is None:
            time.sleep(seconds)
            return
        try:
            ready, _, _ = select.select([conn], [], [], max(seconds, 0.0))
            if ready:
                conn.poll()
                if conn.notifies:
                    self.wakeups += 1
                    conn.notifies.clear()
        except Exception as err:  # the connection broke: plain sleeps until it is back
            self._lost(err)

    def _listening(self):
        if os.getpid() != self._owner:  # a process forked from the scheduler: not its connection
            return None
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        conn = None
        try:
            conn = self._connect()
            conn.autocommit = False
            with conn.cursor() as cur:
                cur.execute(INSTALL_SQL)
            conn.commit()
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
        except Exception as err:
            if conn is not None:
                conn.close()
            self._lost(err)
            return None
        self._conn = conn
        log.info("Scheduler wakes when a task ends (LISTEN %s on the metadata database)", CHANNEL)
        return conn

    def _forked(self) -> None:
        """In a process forked from this one (a LocalExecutor worker, a task): its copy of the socket
        now points at /dev/null, so nothing it does with the connection (closing it at exit
        included) reaches the server through the scheduler's session."""
        if self._conn is None or self._conn.closed:
            return
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, self._conn.fileno())
            os.close(null)
        except OSError:
            pass

    def _lost(self, err: Exception) -> None:
        log.warning(
            "Scheduler wake-up not listening (%r): it sleeps its idle sleep out; retried in %.0f s",
            err,
            RECONNECT_SECONDS,
        )
        if self._conn is not None and os.getpid() == self._owner:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
        self._conn = None
        self._retry_at = time.monotonic() + RECONNECT_SECONDS

    def close(self) -> None:
        if self._conn is not None and os.getpid() == self._owner:
            self._conn.close()
        self._conn = None


class SchedulerTime:
    """What the scheduler job runner's module sees as ``time``: the time module, except its sleep."""

    def __init__(self, waker: Waker) -> None:
        self.waker = waker

    def sleep(self, seconds: float) -> None:
        self.waker.sleep(seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


def unsupported(module) -> str | None:
    """Why the scheduler module at hand cannot take the patch, or None."""
    from airflow import __version__

    if not __version__.startswith(PATCHED_AIRFLOW):
        return f"written for Airflow {'/'.join(PATCHED_AIRFLOW)}x, this is {__version__}"
    if getattr(module, "time", None) is not time and not isinstance(
        getattr(module, "time", None), SchedulerTime
    ):
        return "the scheduler module's `time` is not the time module"
    if EXPECTED_SLEEP not in inspect.getsource(module.SchedulerJobRunner._run_scheduler_loop):
        return f"the scheduler loop no longer sleeps with `{EXPECTED_SLEEP}`"
    return None


def install(waker: Waker | None = None) -> str:
    """Patch the imported scheduler module; returns what it did."""
    module = sys.modules[SCHEDULER_MODULE]
    if reason := unsupported(module):
        log.warning("Scheduler sleeps as stock (no wake-up when a task ends): %s", reason)
        return f"not installed: {reason}"
    if not isinstance(module.time, SchedulerTime):
        module.time = SchedulerTime(waker or Waker())
    return "installed"


def uninstall() -> None:
    module = sys.modules.get(SCHEDULER_MODULE)
    if module is not None and isinstance(module.time, SchedulerTime):
        module.time.waker.close()
        module.time = time


def install_in_scheduler(argv: list[str] | None = None) -> str:
    """Called by ``airflow_local_settings`` in every Airflow process. Returns what it did."""
    if airflow_command(argv)[:1] != ["scheduler"]:
        return "not the scheduler"
    if os.environ.get(SWITCH, "on").strip().lower() in {"off", "false", "0"}:
        log.info("Scheduler sleeps as stock: %s=off", SWITCH)
        return "switched off"

    def install_safely() -> None:
        try:
            install()
        except Exception as err:  # never keep the scheduler from starting
            log.warning("Scheduler sleeps as stock (no wake-up when a task ends): %r", err)

    if SCHEDULER_MODULE in sys.modules:
        install_safely()
        return "installed"
    if not any(isinstance(f, PatchAfterImport) and f.module == SCHEDULER_MODULE for f in sys.meta_path):
        sys.meta_path.insert(0, PatchAfterImport(SCHEDULER_MODULE, install_safely))
    return "installs when the scheduler starts"
