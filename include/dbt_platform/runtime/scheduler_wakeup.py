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
A scheduler with nothing to do loops as often as before (nothing notifies it); one with
something to do starts on it at once, at most one woken loop per :data:`MIN_WAKE_GAP`. While its
loops are expensive (a big DAG run is examined in every loop, all its task instances loaded), it
sleeps :data:`BUSY_RATIO` times as long as it was awake, up to :data:`MAX_IDLE_SLEEP`: what
notifies still wakes it at once, and what does not (a task ending in the triggerer) waits up to
that long. It hears a task that ends on a worker (the API server writes its state), a task the
scheduler itself fails or skips, a task marked success or failed in the UI, and a new DAG run, with
any executor and with two schedulers (both listen). It does not hear, and sees at its next loop as before: ``scheduled``,
which the scheduler sets itself every time it schedules (it would wake itself for nothing), a
cleared task (its state goes back to none), and a task that ends in the triggerer (it was
deferred): the node tasks of a transformation DAG end there by the hundreds while its build runs,
and a loop for each would take CPU from the build.

The function and its two triggers (all named ``dbt_platform_wake_scheduler``) are created by the
first scheduler that finds them missing or out of date (a catalog read; their version is in the
function's body), with the role Airflow connects as (the tables' owner, as for migrations), under an
advisory lock and a short lock timeout: creating a trigger locks the table against writes for a
moment, and a scheduler that cannot get the lock within :data:`LOCK_TIMEOUT` says so and retries
later rather than hold up the API server's writes. Their definitions name no column and the
function reads rows through ``to_jsonb``, so Airflow's migrations can still alter the tables, and a
renamed column cannot make an update fail. Their cost stays when nothing listens (a switched-off
or refused wake-up): the function runs on every update of a task instance (heartbeats included;
it converts the new row to JSON and returns unless the state is a waking one), and each task end
sends a notification. ``python -m include.dbt_platform.runtime.scheduler_wakeup --remove`` drops
them (switch the wake-up off in every scheduler first: one that starts with it on creates them
again).

After ``LISTEN`` the scheduler notifies itself and waits for it (:data:`PROBE_SECONDS`), and again
every :data:`CHECK_EVERY_SECONDS`: a connection that cannot hear (PgBouncer in transaction pooling,
as the Helm chart sets up by default, or a connection silently dropped) is found, said once, and
the scheduler sleeps as stock. Guarded like the triggerer patch: only on the Airflow versions it was
written against (:data:`PATCHED_AIRFLOW`), where the loop's sleep is the expected line
(:data:`EXPECTED_SLEEP`), and on PostgreSQL through psycopg2; anywhere else, or with
``DBT_PLATFORM_SCHEDULER_WAKEUP=off``, the scheduler sleeps as stock and says why once. A lost
connection is one warning and plain sleeps until it reconnects (tried every
:data:`RECONNECT_SECONDS`). Processes forked from the scheduler never use its connection, and their
copy of its socket is pointed at /dev/null as they start.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import select
import sys
import time
import weakref

from include.dbt_platform.runtime import airflow_command, install_when_imported, switched_off

log = logging.getLogger("include.dbt_platform.runtime.scheduler_wakeup")  # also when run as __main__

SWITCH = "DBT_PLATFORM_SCHEDULER_WAKEUP"
SCHEDULER_MODULE = "airflow.jobs.scheduler_job_runner"
PATCHED_AIRFLOW = ("3.3.",)
EXPECTED_SLEEP = "time.sleep(min(self._scheduler_idle_sleep_time, next_event or 0))"
CHANNEL = "dbt_platform_scheduler"
NAME = "dbt_platform_wake_scheduler"
VERSION = "dbt-platform scheduler wake-up v1"  # in the function's body: a changed function is re-created
PROBE = "probe"
APPLICATION_NAME = "dbt-platform scheduler wake-up"  # how the connection shows in pg_stat_activity
WAKING_STATES = (
    "success",
    "failed",
    "skipped",
    "upstream_failed",
    "up_for_retry",
    "up_for_reschedule",
    "removed",
)
MIN_WAKE_GAP = 0.05
# While its loops are expensive (a big DAG run is examined every loop: all its task instances loaded),
# the scheduler sleeps BUSY_RATIO times as long as it was awake, up to MAX_IDLE_SLEEP: a notification
# still wakes it at once, and only what notifies no one (a task ending in the triggerer) waits longer.
BUSY_RATIO = 2.0
MAX_IDLE_SLEEP = 1.0
RECONNECT_SECONDS = 30.0
PROBE_SECONDS = 2.0
CHECK_EVERY_SECONDS = 300.0
LOCK_TIMEOUT = "500ms"  # under PostgreSQL's deadlock_timeout (1 s): never the one a deadlock check aborts


class CannotListen(Exception):
    """Nothing to retry: this connection or database cannot serve the wake-up."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _schema() -> str:
    from airflow.configuration import conf

    return conf.get("database", "sql_alchemy_schema", fallback="") or ""


def _names(schema: str) -> tuple[str, str, str]:
    """The function, task_instance and dag_run, qualified by Airflow's schema when it has one."""
    prefix = f"{_quote(schema)}." if schema else ""
    return f"{prefix}{NAME}", f"{prefix}task_instance", f"{prefix}dag_run"


def install_sql(schema: str = "") -> str:
    function, task_instance, dag_run = _names(schema)
    states = ", ".join(f"'{s}'" for s in WAKING_STATES)
    return f"""
SET LOCAL lock_timeout = '{LOCK_TIMEOUT}';
SELECT pg_advisory_xact_lock(hashtext('{NAME}'));
LOCK TABLE {dag_run}, {task_instance} IN SHARE ROW EXCLUSIVE MODE;
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    state text;
BEGIN
    -- {VERSION}. Rows are read through to_jsonb: a migration that renames a column cannot make an
    -- update fail here.
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('{CHANNEL}', '');
        RETURN NULL;
    END IF;
    state := to_jsonb(NEW) ->> 'state';
    IF state IS NULL OR state NOT IN ({states}) THEN
        RETURN NULL;
    END IF;
    IF state IS DISTINCT FROM to_jsonb(OLD) ->> 'state' AND to_jsonb(OLD) ->> 'trigger_id' IS NULL THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER {NAME} AFTER INSERT ON {dag_run} FOR EACH ROW EXECUTE FUNCTION {function}();
CREATE OR REPLACE TRIGGER {NAME} AFTER UPDATE ON {task_instance} FOR EACH ROW EXECUTE FUNCTION {function}();
"""


def remove_sql(schema: str = "") -> str:
    function, task_instance, dag_run = _names(schema)
    return f"""
SET LOCAL lock_timeout = '5s';
DROP TRIGGER IF EXISTS {NAME} ON {dag_run};
DROP TRIGGER IF EXISTS {NAME} ON {task_instance};
DROP FUNCTION IF EXISTS {function}();
"""


def installed_sql(schema: str = "") -> str:
    """Both triggers, calling this version of the function (catalog reads: no table lock)."""
    _, task_instance, dag_run = _names(schema)
    return f"""
SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
WHERE t.tgname = '{NAME}' AND p.proname = '{NAME}' AND position('{VERSION}' in p.prosrc) > 0
  AND t.tgrelid IN (to_regclass('{task_instance.replace("'", "''")}'), to_regclass('{dag_run.replace("'", "''")}'))
"""


def _driver_supported() -> str | None:
    from airflow.configuration import conf

    url = conf.get("database", "sql_alchemy_conn", fallback="") or ""
    scheme = url.split("://", 1)[0]
    if scheme not in ("postgresql", "postgresql+psycopg2", "postgres"):
        return f"needs PostgreSQL through psycopg2, the metadata database is `{scheme}`"
    return None


def metadata_connection():
    """A psycopg2 connection of its own to Airflow's metadata database (out of Airflow's pool)."""
    from airflow import settings

    engine = settings.get_engine()
    if (engine.dialect.name, engine.dialect.driver) != ("postgresql", "psycopg2"):
        raise CannotListen(
            f"needs PostgreSQL through psycopg2, not {engine.dialect.name}+{engine.dialect.driver}"
        )
    pooled = engine.raw_connection()
    conn = pooled.driver_connection
    pooled.detach()  # ours for good: never handed back to Airflow's pool
    return conn


def _permanent(err: Exception) -> bool:
    """An error no retry helps: a missing privilege or feature, a syntax error (PostgreSQL < 14)."""
    import psycopg2

    # (a busy table, LockNotAvailable, is an OperationalError: retried)
    return isinstance(err, CannotListen | psycopg2.ProgrammingError | psycopg2.NotSupportedError)


class Waker:
    """A sleep that ends early when the metadata database notifies :data:`CHANNEL`."""

    def __init__(self, connect=metadata_connection, schema: str | None = None) -> None:
        self._connect = connect
        self._schema = schema
        self._conn = None
        self._owner = None  # the process that opened the connection
        self._retry_at = 0.0
        self._checked_at = 0.0
        self._last_wake = 0.0
        self._installed = False
        self._down_since: float | None = None
        self.given_up: str | None = None
        self.wakeups = 0  # sleeps a notification ended
        self._awake_since: float | None = None  # when the last sleep ended
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (waker := me()) is not None and waker._forked())

    def sleep(self, seconds: float) -> None:
        try:
            self._sleep(seconds)
        finally:
            self._awake_since = time.monotonic()

    def stretched(self, seconds: float) -> float:
        """The sleep asked for, longer after an expensive loop (see :data:`BUSY_RATIO`)."""
        if seconds <= 0 or self._awake_since is None:
            return max(seconds, 0.0)
        awake = time.monotonic() - self._awake_since
        return max(seconds, min(awake * BUSY_RATIO, MAX_IDLE_SLEEP))

    def _sleep(self, seconds: float) -> None:
        start = time.monotonic()
        conn = self._listening()
        # Stretched only while it listens: it hears what cannot wait.
        deadline = start + (max(seconds, 0.0) if conn is None else self.stretched(seconds))
        if conn is None:
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return
        try:
            if time.monotonic() - self._checked_at > CHECK_EVERY_SECONDS:
                try:
                    self._probe(conn)
                except CannotListen as err:  # it heard before: the connection went, reconnect
                    raise ConnectionError(str(err)) from None
            while not self._take_notifications(conn):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                ready, _, _ = select.select([conn], [], [], left)
                if not ready:
                    return
                conn.poll()
        except Exception as err:  # the connection broke: plain sleeps until it is back
            self._lost(err)
            time.sleep(max(deadline - time.monotonic(), 0.0))
            return
        pause = min(self._last_wake + MIN_WAKE_GAP, deadline) - time.monotonic()
        if pause > 0:  # at most one woken loop per MIN_WAKE_GAP
            time.sleep(pause)
        self._last_wake = time.monotonic()
        self.wakeups += 1

    @staticmethod
    def _take_notifications(conn) -> bool:
        """Whether a notification other than a probe arrived (all are consumed)."""
        woken = any(n.payload != PROBE for n in conn.notifies)
        conn.notifies.clear()
        return woken

    def _probe(self, conn) -> None:
        """Notify ourselves and hear it, or raise CannotListen."""
        with conn.cursor() as cur:
            cur.execute(f"NOTIFY {CHANNEL}, '{PROBE}'")
        deadline = time.monotonic() + PROBE_SECONDS
        while not any(n.payload == PROBE for n in conn.notifies):
            left = deadline - time.monotonic()
            if left <= 0:
                raise CannotListen(
                    f"a notification sent on this connection did not come back within {PROBE_SECONDS:.0f} s "
                    "(PgBouncer in transaction pooling, or a dropped connection?)"
                )
            if select.select([conn], [], [], left)[0]:
                conn.poll()
        conn.notifies[:] = [n for n in conn.notifies if n.payload != PROBE]
        self._checked_at = time.monotonic()

    def _listening(self):
        if self.given_up is not None:
            return None
        if self._conn is not None:
            if os.getpid() != self._owner:  # a process forked from the scheduler: not its connection
                return None
            if not self._conn.closed:
                return self._conn
        if time.monotonic() < self._retry_at:
            return None
        conn = None
        try:
            conn = self._connect()
            schema = _schema() if self._schema is None else self._schema
            if not self._installed:
                conn.autocommit = False
                with conn.cursor() as cur:
                    cur.execute(installed_sql(schema))
                    if cur.fetchone()[0] != 2:
                        cur.execute(install_sql(schema))
                conn.commit()
                self._installed = True
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
                cur.execute(f"LISTEN {CHANNEL}")
            self._probe(conn)
        except Exception as err:
            if conn is not None:
                conn.close()
            self._lost(err)
            return None
        self._conn, self._owner = conn, os.getpid()
        if self._down_since is not None:
            log.info("Scheduler wake-up listening again after %.0f s", time.monotonic() - self._down_since)
        else:
            log.info("Scheduler wakes when a task ends (LISTEN %s on the metadata database)", CHANNEL)
        self._down_since = None
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
        if self._conn is not None and os.getpid() == self._owner:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
        self._conn = None
        if _permanent(err):
            self.given_up = repr(err)
            log.warning("Scheduler sleeps as stock (no wake-up when a task ends): %r", err)
        elif self._down_since is None:  # once per outage
            self._down_since = time.monotonic()
            log.warning(
                "Scheduler wake-up not listening (%r): it sleeps its idle sleep out; retried every %.0f s",
                err,
                RECONNECT_SECONDS,
            )
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
    if getattr(module, "time", None) is not time:
        return "the scheduler module's `time` is not the time module"
    if EXPECTED_SLEEP not in inspect.getsource(module.SchedulerJobRunner._run_scheduler_loop):
        return f"the scheduler loop no longer sleeps with `{EXPECTED_SLEEP}`"
    return _driver_supported()


def install(waker: Waker | None = None) -> str:
    """Patch the imported scheduler module; returns what it did."""
    module = sys.modules[SCHEDULER_MODULE]
    if isinstance(module.time, SchedulerTime):  # a task process forked from the scheduler: done already
        return "installed"
    if reason := unsupported(module):
        log.warning("Scheduler sleeps as stock (no wake-up when a task ends): %s", reason)
        return f"not installed: {reason}"
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
    if switched_off(SWITCH):
        # Airflow configures its logging after importing its local settings: say it on stderr.
        print(f"dbt platform: scheduler sleeps as stock: {SWITCH}=off", file=sys.stderr, flush=True)
        return "switched off"

    return install_when_imported(
        SCHEDULER_MODULE, install, log=log, refused="Scheduler sleeps as stock (no wake-up when a task ends)"
    )


def remove() -> None:
    """Drop the function and its triggers from Airflow's metadata database (the configured one)."""
    conn = metadata_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(remove_sql(_schema()))
        conn.commit()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The scheduler wake-up's trigger in the metadata database.")
    parser.add_argument("--remove", action="store_true", help="drop its function and triggers")
    args = parser.parse_args(argv)
    if not args.remove:
        parser.error("nothing to do: --remove drops the function and its triggers")
    import airflow  # noqa: F401 - configures Airflow's settings and its database engine

    remove()
    print(f"dropped {NAME} (function and triggers) from the metadata database")
    return 0


if __name__ == "__main__":
    sys.exit(main())
