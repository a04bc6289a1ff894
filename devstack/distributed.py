"""The distributed profile of the local stack (``make run-distributed``): Airflow as it runs on several
machines, started natively on this one.

CeleryExecutor with Redis (devstack/redis.py), two schedulers (active/active on PostgreSQL row locks),
two triggerers (stock ``airflow triggerer``, patched by plugins/airflow_local_settings.py), a
standalone dag-processor, the api-server, and two Celery workers. Every component is its own "host"
(devstack/hosts.py): its own ``AIRFLOW_HOME`` with its own copy of ``airflow.cfg`` (0600), its own
log folder, temporary folder, working directory and checkout of the registered-projects bundle
under ``<home>/hosts/<name>/``, its own host name. What they share on disk is what a real deployment
shares: the platform's DAG folder (``dags/``, ``include/``, ``plugins/``, ``dbt_projects/``, this
repository). Connections are in OpenBao, repositories and the registered projects on the git server
(devstack/openbao.py, devstack/git_server.py), started as for ``make run``.
Everything listens on 127.0.0.1 only; the workers' log servers on their own ports (PG port + 40, + 41).

A supervisor (devstack/supervisor.py) restarts whatever exits, as compose's ``restart: always`` does;
``docker-compose.yaml`` describes the same services, with the same settings (:data:`RECOVERY_SETTINGS`).
"""

from __future__ import annotations

import configparser
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack.airflow import (
    AIRFLOW_API_CONN_ID,
    AIRFLOW_COMPONENTS,
    COMPONENT_NICENESS,
    AirflowTarget,
    airflow_bin,
    component_environment,
    default_target,
    health,
    isolated_target,
    migrate_metadata_db,
    prepare_airflow_home,
    stop_airflow,
)
from devstack.observability import observability_up
from devstack.postgres import pg_up
from devstack.redis import broker_url, redis_start
from devstack.services import alive, service_pid
from devstack.settings import StackError, StackSettings, admin_dsn
from include.dbt_platform.config import REPO_ROOT

SCHEDULERS = ("scheduler-1", "scheduler-2")
TRIGGERERS = ("triggerer-1", "triggerer-2")
WORKERS = ("worker-1", "worker-2")
# Lean: two cores are shared by everything. Each worker runs this many tasks at once; each scheduler
# sends at most its share of all worker slots (so tasks wait as `scheduled`, not in the broker).
WORKER_CONCURRENCY = 4
PARALLELISM = WORKER_CONCURRENCY * len(WORKERS) // len(SCHEDULERS)

# How fast the stack notices a lost component and recovers its work (docs/operations.md, "Crash
# recovery"); docker-compose.yaml and the Helm values ship the same (tests/unit/test_compose.py).
RECOVERY_SETTINGS = {
    # A task whose worker died stops heartbeating (every 5 s): after 30 s (not 300 s) the scheduler
    # fails the attempt, and its retry runs on a live worker.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # A scheduler silent for 15 s is dead; every 10 s the others adopt (or reset) what it had queued.
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
    # A triggerer silent for 15 s is dead: the others take over its triggers.
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
    # Celery acknowledges a message once its task ran, so a worker that dies holding one does not lose
    # it; the broker hands an unacknowledged message out again only after the visibility timeout,
    # which must outlast the longest task (a redelivery of a running task would be refused anyway).
    "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
}
DISTRIBUTED_ENV = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "devstack.hosts.hostname",
    "DBT_PLATFORM_AIRFLOW_API_CONN_ID": AIRFLOW_API_CONN_ID,
    **RECOVERY_SETTINGS,
}


@dataclass(frozen=True)
class Profile:
    """One distributed stack: its Airflow target, its Redis database, its workers' log ports."""

    name: str
    target: AirflowTarget
    redis_db: int
    log_port_base: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.target.home / "run"

    @property
    def hosts_dir(self) -> Path:
        return self.target.home / "hosts"

    def log_port(self, worker: str) -> int:
        return self.log_port_base + WORKERS.index(worker)


def profile(stack: StackSettings, name: str = "distributed", extra_env: dict | None = None) -> Profile:
    """``distributed`` is ``make run``'s stack (same databases and port), run distributed; ``chaos``
    and ``bench`` are stacks of their own for the drills (API on +200) and the load (+300)."""
    if name == "distributed":
        return Profile(name, default_target(stack), 0, stack.pg_port + 40, extra_env or {})
    if name == "chaos":
        return Profile(name, isolated_target(stack, "chaos", 200), 1, stack.pg_port + 42, extra_env or {})
    if name == "bench":
        return Profile(
            name, isolated_target(stack, "bench_dist", 300), 2, stack.pg_port + 44, extra_env or {}
        )
    raise StackError(f"no distributed profile {name!r}")


def components(profile: Profile) -> dict[str, list[str]]:
    """Every program of the profile: its command line."""
    target = profile.target
    airflow, python = airflow_bin(), sys.executable
    programs = {
        "api-server": [airflow, "api-server", "--host", "127.0.0.1", "--port", str(target.api_port), "--workers", "1"],
        "dag-processor": [airflow, "dag-processor"],
    }  # fmt: skip
    for name in SCHEDULERS:
        programs[name] = [airflow, "scheduler", "--skip-serve-logs"]
    for name in TRIGGERERS:
        programs[name] = [airflow, *AIRFLOW_COMPONENTS["triggerer"]]
    for name in WORKERS:
        programs[name] = [airflow, "celery", "worker", "--skip-serve-logs", "--celery-hostname", name,
                          "--concurrency", str(WORKER_CONCURRENCY), "--without-mingle", "--without-gossip"]  # fmt: skip
        programs[f"{name}-logs"] = [python, "-m", "devstack.hosts", "serve-logs", str(profile.log_port(name))]
    return programs


def host_of(program: str) -> str:
    """The host a program runs on: a worker's log server runs on its worker."""
    return program.removesuffix("-logs")


def _niceness(program: str) -> int:
    return COMPONENT_NICENESS.get(program.rsplit("-", 1)[0] if program[-1].isdigit() else program, 0)


def write_host_configs(stack: StackSettings, profile: Profile) -> None:
    """Each host's ``airflow.cfg`` (0600): the target's (database, JWT and session secrets), plus
    Celery's broker. Secrets stay in files; no component gets one in its environment."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(profile.target.home / "airflow.cfg")
    config["celery"] = {"broker_url": broker_url(stack, profile.redis_db)}
    for host in {host_of(p) for p in components(profile)}:
        home = profile.hosts_dir / host
        for sub in ("", "tmp", "logs", "work"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        path = home / "airflow.cfg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            config.write(fh)


def program_env(stack: StackSettings, profile: Profile, program: str) -> dict[str, str]:
    host = host_of(program)
    home = profile.hosts_dir / host
    env = component_environment(stack, profile.target, {**DISTRIBUTED_ENV, **profile.extra_env})
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "TMPDIR": str(home / "tmp"),
            # Each host checks the registered-projects bundle out on its own disk, as separate machines do.
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "dag_bundles"),
            "DBT_PLATFORM_HOSTNAME": host,
        }
    )
    if program == "api-server":
        env["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"] = "devstack.hosts.LOGGING_CONFIG"
        env["DBT_PLATFORM_LOG_SERVERS"] = json.dumps({w: profile.log_port(w) for w in WORKERS})
    return env


def write_spec(stack: StackSettings, profile: Profile) -> Path:
    logs = profile.target.home / "component-logs"
    logs.mkdir(parents=True, exist_ok=True)
    profile.run_dir.mkdir(parents=True, exist_ok=True)
    programs = [
        {
            "name": name,
            "command": command,
            "env": program_env(stack, profile, name),
            "cwd": str(profile.hosts_dir / host_of(name) / "work"),
            "log": str(logs / f"{name}.log"),
            "niceness": _niceness(name),
        }
        for name, command in components(profile).items()
    ]
    spec = {"run_dir": str(profile.run_dir), "log": str(logs / "supervisor.log"), "programs": programs}
    path = profile.run_dir / "supervisor.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(spec, fh, indent=1)
    return path


def supervisor_pid(profile: Profile) -> int | None:
    return service_pid(profile.run_dir / "supervisor.pid")


def program_pid(profile: Profile, program: str) -> int | None:
    return service_pid(profile.run_dir / f"{program}.pid")


def start_distributed(stack: StackSettings, profile: Profile) -> None:
    if supervisor_pid(profile):
        return
    stop_airflow(stack, profile.target)  # `make run`'s LocalExecutor components on the same target
    for stale in profile.run_dir.glob("*.hold"):
        stale.unlink()
    spec = write_spec(stack, profile)
    logs = profile.target.home / "component-logs"
    with open(logs / "supervisor.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devstack.supervisor", str(spec)],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )  # fmt: skip
    (profile.run_dir / "supervisor.pid").write_text(str(proc.pid))


def stop_distributed(stack: StackSettings, profile: Profile, timeout: float = 60) -> None:
    pid = supervisor_pid(profile)
    if pid:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    for program in components(profile):  # a supervisor killed hard leaves its programs behind
        leftover = program_pid(profile, program)
        if leftover:
            try:
                os.killpg(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (profile.run_dir / f"{program}.pid").unlink(missing_ok=True)
    (profile.run_dir / "supervisor.pid").unlink(missing_ok=True)


def live_jobs(stack: StackSettings, profile: Profile, fresh_seconds: float = 15) -> dict[str, set[str]]:
    """Job type -> the hosts whose job of that type heartbeated within ``fresh_seconds``."""
    import psycopg2

    conn = psycopg2.connect(admin_dsn(stack, profile.target.metadata_db))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "select job_type, hostname from job where state = 'running' and end_date is null "
                "and latest_heartbeat > now() - make_interval(secs => %s)",
                (fresh_seconds,),
            )
            jobs: dict[str, set[str]] = {}
            for job_type, host in cur.fetchall():
                jobs.setdefault(job_type, set()).add(host)
            return jobs
    finally:
        conn.close()


def live_workers(stack: StackSettings, profile: Profile) -> set[str]:
    """The Celery workers that answer a ping through the broker."""
    from celery import Celery

    app = Celery(broker=broker_url(stack, profile.redis_db))
    try:
        replies = app.control.ping(timeout=2.0) or []
    except Exception:  # noqa: BLE001 - a broker just restarted drops connections: nobody answered yet
        replies = []
    finally:
        app.close()
    return {name.split("@", 1)[-1] for reply in replies for name in reply}


def wait_distributed_healthy(stack: StackSettings, profile: Profile, timeout: float = 300) -> dict:
    """Until the api-server answers, both schedulers and triggerers heartbeat and both workers answer."""
    deadline = time.monotonic() + timeout
    missing: list[str] = ["api-server"]
    while time.monotonic() < deadline:
        if not supervisor_pid(profile):
            raise StackError(f"the supervisor exited; see {profile.target.home / 'component-logs'}")
        report = health(profile.target)
        if report:
            jobs = live_jobs(stack, profile)
            missing = [s for s in SCHEDULERS if s not in jobs.get("SchedulerJob", set())]
            missing += [t for t in TRIGGERERS if t not in jobs.get("TriggererJob", set())]
            missing += [] if jobs.get("DagProcessorJob") else ["dag-processor"]
            if not missing:
                missing = [w for w in WORKERS if w not in live_workers(stack, profile)]
            if not missing:
                return report
        time.sleep(2)
    raise StackError(
        f"the distributed stack is not healthy after {timeout:.0f}s: waiting for {missing}; "
        f"see {profile.target.home / 'component-logs'}"
    )


def distributed_up(stack: StackSettings, profile: Profile, say=print) -> Profile:
    target = profile.target
    started = time.monotonic()
    pg_up(stack, (target.metadata_db, target.warehouse_db, target.platform_db))
    redis_start(stack)
    say(
        f"PostgreSQL and Redis up ({time.monotonic() - started:.0f}s); migrating Airflow's metadata database…"
    )
    prepare_airflow_home(stack, target)
    migrate_metadata_db(stack, target)
    observability_up(stack, target)  # the StatsD exporter (and Prometheus) the components report to
    write_host_configs(stack, profile)
    start_distributed(stack, profile)
    say(f"Components started ({time.monotonic() - started:.0f}s); waiting until every one is healthy…")
    wait_distributed_healthy(stack, profile)
    say(f"Distributed stack '{profile.name}' healthy after {time.monotonic() - started:.0f}s")
    return profile


def describe_distributed(stack: StackSettings, profile: Profile) -> str:
    lines = [
        f"Distributed profile '{profile.name}': CeleryExecutor, Redis 127.0.0.1:{stack.redis_port} "
        f"(db {profile.redis_db}, password in {stack.secrets_dir / 'redis_password'})",
    ]
    for program in components(profile):
        pid = program_pid(profile, program)
        lines.append(f"  {program:<16} {'pid ' + str(pid) if pid else 'stopped'}")
    lines.append(f"  supervisor log: {profile.target.home / 'component-logs' / 'supervisor.log'}")
    lines.append(f"  hosts (one folder each): {profile.hosts_dir}")
    return "\n".join(lines)
