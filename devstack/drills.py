"""What the crash drills (``make chaos``) and the load (``make bench-saga``) share: a distributed stack
of their own, what its metadata database and saga journal say, killing a "host", and the leak count.

The leak inventory is the test suite's own (``tests/saga_support.py``: databases, roles, grants,
schemas, registry rows, secrets, repositories, registered projects, files), read for this stack's
target in a process of its own (``python -m tests.saga_support inventory`` with
``DBT_PLATFORM_TEST_TARGET``), so whatever the suite counts as a resource, the drills count too.
A leak is an entry that is there after the run's COMPLETED sagas were taken down and was not there
before, or one that was there before and is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2

from devstack.airflow import AirflowTarget
from devstack.distributed import Profile, program_pid, wait_distributed_healthy
from devstack.openbao import bao_up, init_file
from devstack.postgres import pg_is_running, pg_stop, pg_up
from devstack.redis import redis_is_running, redis_stop
from devstack.settings import StackError, StackSettings, admin_dsn
from include.dbt_platform.config import REPO_ROOT

SAGA_DAG = "dbt_project_create"


def project_request(name: str, **extra) -> dict:
    return {
        "project_name": name, "owner": "drills@example.com", "description": "", "environments": ["dev", "prod"],
        "database_mode": "new", "database_name": None, "readers": [], "idempotency_key": None, **extra,
    }  # fmt: skip


# ----------------------------------------------------------------------------- reading the stack


def rows(stack: StackSettings, database: str, sql: str, params=()) -> list[tuple]:
    conn = psycopg2.connect(admin_dsn(stack, database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def task_rows(stack: StackSettings, profile: Profile, dag_id: str, run_id: str) -> dict[str, dict]:
    """Task id -> state, try number, the worker that ran it and the scheduler that queued it."""
    found = rows(
        stack,
        profile.target.metadata_db,
        "select ti.task_id, ti.state, ti.try_number, ti.hostname, j.hostname from task_instance ti "
        "left join job j on j.id = ti.queued_by_job_id where ti.dag_id = %s and ti.run_id = %s",
        (dag_id, run_id),
    )
    return {t: {"state": s, "try": n, "worker": w, "scheduler": q} for t, s, n, w, q in found}


def saga_of(stack: StackSettings, profile: Profile, run_id: str) -> dict | None:
    found = rows(
        stack,
        profile.target.platform_db,
        "select saga_id, state, first_cause from saga.sagas where dag_id = %s and run_id = %s",
        (SAGA_DAG, run_id),
    )
    return {"saga_id": found[0][0], "state": found[0][1], "cause": found[0][2]} if found else None


def step_journal(stack: StackSettings, profile: Profile, saga_id: str) -> dict[str, dict]:
    """Step -> its state, attempts and how many times it was journaled as succeeded."""
    steps = rows(
        stack, profile.target.platform_db,
        "select s.step_name, s.state, s.attempts, (select count(*) from saga.events e where e.saga_id = s.saga_id "
        "and e.step_name = s.step_name and e.event = 'step_succeeded') from saga.steps s where s.saga_id = %s",
        (saga_id,),
    )  # fmt: skip
    return {name: {"state": st, "attempts": a, "succeeded": n} for name, st, a, n in steps}


def progress_after(stack: StackSettings, profile: Profile, saga_id: str, fault_at: float) -> float | None:
    """When the saga moved on after a fault: the first step (or compensation) that started after
    ``fault_at`` and then succeeded, as an epoch; None if nothing did."""
    found = rows(
        stack, profile.target.platform_db,
        "select extract(epoch from min(e.at)) from saga.events e where e.saga_id = %s "
        "and e.event in ('step_succeeded', 'compensation_compensated') and e.at > to_timestamp(%s) "
        "and not exists (select 1 from saga.events s where s.saga_id = e.saga_id and s.step_name = e.step_name "
        "and s.event in ('step_started', 'compensation_compensating') and s.at <= to_timestamp(%s))",
        (saga_id, fault_at, fault_at),
    )  # fmt: skip
    return float(found[0][0]) if found and found[0][0] is not None else None


def triggers_by_triggerer(stack: StackSettings, profile: Profile) -> dict[str, int]:
    found = rows(
        stack,
        profile.target.metadata_db,
        "select j.hostname, count(*) from trigger t join job j on j.id = t.triggerer_id group by j.hostname",
    )
    return dict(found)


# ----------------------------------------------------------------------------- faults


def session_pids(sid: int) -> list[int]:
    """Every process of session ``sid``: a component and all it started (task processes included,
    which Airflow puts in process groups of their own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:
                pids.append(int(entry))
    return pids


def kill_host(profile: Profile, program: str, hold: bool = True, signal_name: str = "SIGKILL") -> int:
    """SIGKILL ``program`` and everything it started, as when its machine dies (or, with ``SIGTERM``,
    stop it cleanly and wait until it is gone). ``hold`` keeps the supervisor from starting it again
    until :func:`release` (the others must carry on alone)."""
    pid = program_pid(profile, program)
    if pid is None:
        raise StackError(f"{program} is not running")
    if hold:
        (profile.run_dir / f"{program}.hold").write_text("held down by a drill\n")
    if signal_name == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
        if not wait_until(lambda: not session_pids(pid), 60, poll=0.5):
            raise StackError(f"{program} did not stop within 60s of SIGTERM")
        return 1
    victims = session_pids(pid)
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def release(stack: StackSettings, profile: Profile, *programs: str, timeout: float = 240) -> None:
    """Let the supervisor start ``programs`` again, and wait until the whole stack is healthy."""
    for program in programs:
        (profile.run_dir / f"{program}.hold").unlink(missing_ok=True)
    wait_distributed_healthy(stack, profile, timeout=timeout)


# ----------------------------------------------------------------------------- leaks


def _inventory_command(profile: Profile, *args: str) -> str:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "DBT_PLATFORM_", "SAGA_")) or key.startswith("DBT_PLATFORM_PG")
    }
    env["DBT_PLATFORM_TEST_TARGET"] = profile.name
    for key in ("DBT_PLATFORM_LOCAL_DIR", "DBT_PLATFORM_AIRFLOW_PORT", "DBT_PLATFORM_PG_OS_USER"):
        if key in os.environ:
            env[key] = os.environ[key]
    result = subprocess.run(
        [sys.executable, "-m", "tests.saga_support", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"tests.saga_support {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def inventory(profile: Profile) -> dict:
    """The suite's leak inventory of this stack's target (tests/saga_support.py)."""
    return json.loads(_inventory_command(profile, "inventory").strip().splitlines()[-1])


def take_down_completed(profile: Profile) -> None:
    """Compensate every COMPLETED saga of this stack's journal (what the suite does after its tests)."""
    _inventory_command(profile, "undo-completed")


def _entries(value, path: str = "") -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_entries(v, f"{path}{k}/") for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return {f"{path}{json.dumps(v)}" for v in value}
    return {f"{path}{json.dumps(value)}"}


def difference(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """Entries added and entries gone, as ``category/.../entry`` strings."""
    added, gone = [], []
    for category in sorted(set(before) | set(after)):
        was, now = (
            _entries(before.get(category), f"{category}/"),
            _entries(after.get(category), f"{category}/"),
        )
        added += sorted(now - was)
        gone += sorted(was - now)
    return added, gone


# ----------------------------------------------------------------------------- runs


def wait_terminal(client, dag_id: str, run_id: str, timeout: float) -> dict:
    """The run once it is success or failed; else its last state, flagged ``timed_out``."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = client.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        if status == 200 and body.get("state") in {"success", "failed"}:
            return body
        time.sleep(1)
    return {**body, "timed_out": True}


def wait_until(predicate, timeout: float, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    return None


@contextmanager
def fresh_metadata(stack: StackSettings, target: AirflowTarget):
    """A clean slate for a run of drills or of a benchmark on ``target``: a new metadata database
    (runs an aborted session left would resume), and no sagas, projects or state of earlier
    sessions (their projects' DAGs would run on their schedule beside what is measured)."""
    pg_up(stack)
    admin = psycopg2.connect(admin_dsn(stack))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            for database in (target.metadata_db, target.platform_db):
                cur.execute(f'drop database if exists "{database}" with (force)')
    finally:
        admin.close()
    shutil.rmtree(target.state_dir, ignore_errors=True)
    Path(target.state_dir).mkdir(parents=True, exist_ok=True)
    # Its share of the stack's git server and secrets manager: an aborted session's projects would
    # otherwise come back through the registered-projects bundle, their connections with them.
    shutil.rmtree(stack.git_dir / "repositories" / target.git_org, ignore_errors=True)
    if init_file(stack).exists():
        root = bao_up(stack)
        if f"{target.secrets_mount}/" in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.disable_secrets_engine(target.secrets_mount)
    yield


@contextmanager
def servers_left_as_found(stack: StackSettings):
    """PostgreSQL and Redis stopped at the end if they were not running at the start."""
    pg_was, redis_was = pg_is_running(stack), redis_is_running(stack)
    try:
        yield
    finally:
        if not redis_was:
            redis_stop(stack)
        if not pg_was:
            pg_stop(stack)
