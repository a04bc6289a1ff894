"""The local stack on one machine: a project-local PostgreSQL and Airflow 3 on loopback.

    python -m include.dbt_platform.devstack up      # PostgreSQL + Airflow, waits for health
    python -m include.dbt_platform.devstack demo    # trigger inventory_transforms via REST, wait
    python -m include.dbt_platform.devstack down    # stop everything
    python -m include.dbt_platform.devstack status  # what runs, and how to connect

PostgreSQL keeps its data under ``.local/pg`` and runs as an unprivileged OS user (``initdb``
refuses root). Airflow runs api-server, scheduler, dag-processor and triggerer with the
LocalExecutor, everything bound to 127.0.0.1. Passwords are generated on first start into
``.local/secrets`` (mode 0600) unless given through the environment; nothing secret is committed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.dbt_platform.config import REPO_ROOT, StackSettings, get_settings, get_stack_settings

STACK_DATABASES = ("airflow", "warehouse", "platform")
AIRFLOW_COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
# Components started through this project's launcher instead of the `airflow` command (same arguments
# after the subcommand). The triggerer's removes Airflow 3.3's per-task DAG cost: see
# include/dbt_platform/triggerer.py.
COMPONENT_LAUNCHERS = {"triggerer": ["-m", "include.dbt_platform.triggerer"]}
# CPU priorities. The LocalExecutor runs every task inside the scheduler's process tree, so the tasks
# (a dbt build) share the CPU with whatever the other components do meanwhile. Off that critical path:
# the dag-processor (it parses files, and serves the callback request Airflow sends whenever a task
# ends in the triggerer) and the triggerer (it reports node results as the build makes them; lagging
# a little behind costs the run nothing).
COMPONENT_NICENESS = {"dag-processor": 19, "triggerer": 5}

TELEMETRY_OFF = {
    # Cosmos phones home at the end of every task; with no network each task hangs ~9 s.
    "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
    "DO_NOT_TRACK": "true",
    "SCARF_ANALYTICS": "false",
    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}


class StackError(RuntimeError):
    """Something the operator has to fix; the message says what."""


# --------------------------------------------------------------------------- secrets


def stored_secret(stack: StackSettings, name: str, given: str | None = None) -> str:
    """The secret ``name``: given through the environment, else generated once and kept (0600)."""
    if given:
        return given
    path = stack.secrets_dir / name
    if path.exists():
        return path.read_text().strip()
    stack.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.secrets_dir, 0o700)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def pg_password(stack: StackSettings) -> str:
    return stored_secret(stack, "pg_admin_password", stack.pg_admin_password)


def airflow_password(stack: StackSettings) -> str:
    return stored_secret(stack, "airflow_admin_password", stack.airflow_admin_password)


def admin_dsn(stack: StackSettings, database: str = "postgres") -> str:
    return f"postgresql://postgres:{pg_password(stack)}@127.0.0.1:{stack.pg_port}/{database}"


# --------------------------------------------------------------------------- PostgreSQL


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return candidates[-1]
    raise StackError(
        f"PostgreSQL server binary '{name}' not found; install PostgreSQL 14+ "
        "(Debian: apt-get install postgresql) or put its bin/ folder on PATH"
    )


def _as_pg_user(stack: StackSettings, cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", stack.pg_os_user, "--", *cmd]


def _ensure_pg_os_user(stack: StackSettings) -> None:
    if os.geteuid() != 0:
        return
    if subprocess.run(["id", "-u", stack.pg_os_user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", stack.pg_os_user], check=True)


def _chown_tree(stack: StackSettings, path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user=stack.pg_os_user)
        for child in path.rglob("*"):
            shutil.chown(child, user=stack.pg_os_user)


def pg_is_running(stack: StackSettings) -> bool:
    if not (stack.pg_data_dir / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        _as_pg_user(stack, [pg_bin("pg_ctl"), "status", "-D", str(stack.pg_data_dir)]),
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def pg_init(stack: StackSettings) -> None:
    if (stack.pg_data_dir / "PG_VERSION").exists():
        return
    _ensure_pg_os_user(stack)
    pg_root = stack.pg_data_dir.parent
    pg_root.mkdir(parents=True, exist_ok=True)
    stack.pg_socket_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pg_root, 0o700)
    pwfile = pg_root / "initdb.pw"
    pwfile.write_text(pg_password(stack) + "\n")
    _chown_tree(stack, pg_root)
    probe = subprocess.run(_as_pg_user(stack, ["test", "-w", str(pg_root)]))
    if probe.returncode != 0:
        raise StackError(
            f"OS user '{stack.pg_os_user}' cannot write {pg_root}: every parent folder of the "
            "repository must be traversable by it (chmod o+x), or set DBT_PLATFORM_LOCAL_DIR"
        )
    try:
        subprocess.run(
            _as_pg_user(
                stack,
                [
                    pg_bin("initdb"),
                    "-D",
                    str(stack.pg_data_dir),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"initdb failed:\n{exc.stdout}{exc.stderr}") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    conf = stack.pg_data_dir / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write(
            "\n# dbt platform local stack\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {stack.pg_port}\n"
            f"unix_socket_directories = '{stack.pg_socket_dir}'\n"
            "max_connections = 300\n"
            # A disposable development cluster: trade crash safety for speed.
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        )


def pg_start(stack: StackSettings) -> None:
    pg_init(stack)
    if pg_is_running(stack):
        return
    logfile = stack.pg_data_dir.parent / "postgres.log"
    try:
        subprocess.run(
            _as_pg_user(
                stack,
                [
                    pg_bin("pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(stack.pg_data_dir),
                    "-l",
                    str(logfile),
                ],
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise StackError(
            f"PostgreSQL did not start (port {stack.pg_port} in use? set DBT_PLATFORM_PG_PORT):\n"
            f"{exc.stdout}{exc.stderr}\n{tail}"
        ) from exc


def pg_stop(stack: StackSettings) -> None:
    if pg_is_running(stack):
        subprocess.run(
            _as_pg_user(stack, [pg_bin("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(stack.pg_data_dir)]),
            check=True,
            capture_output=True,
        )


def ensure_databases(stack: StackSettings, names: tuple[str, ...] | list[str]) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_dsn(stack))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("select 1 from pg_database where datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def pg_up(stack: StackSettings | None = None, databases: tuple[str, ...] = STACK_DATABASES) -> StackSettings:
    stack = stack or get_stack_settings()
    pg_start(stack)
    ensure_databases(stack, databases)
    return stack


# --------------------------------------------------------------------------- Airflow


@dataclass(frozen=True)
class AirflowTarget:
    """One Airflow installation on the local cluster: its home, databases and API port."""

    home: Path
    metadata_db: str
    warehouse_db: str
    platform_db: str
    api_port: int
    state_dir: Path

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


def isolated_target(stack: StackSettings, name: str, port_offset: int) -> AirflowTarget:
    """An Airflow beside the stack's: home and state under ``.local/<name>``, databases ``*_<name>``."""
    root = stack.local_dir / name
    return AirflowTarget(
        home=root / "airflow",
        metadata_db=f"airflow_{name}",
        warehouse_db=f"warehouse_{name}",
        platform_db=f"platform_{name}",
        api_port=stack.airflow_port + port_offset,
        state_dir=root / "state",
    )


def default_target(stack: StackSettings) -> AirflowTarget:
    return AirflowTarget(
        home=stack.local_dir / "airflow",
        metadata_db="airflow",
        warehouse_db="warehouse",
        platform_db="platform",
        api_port=stack.airflow_port,
        state_dir=stack.local_dir / "state",
    )


def conn_uri(stack: StackSettings, database: str) -> str:
    return f"postgres://postgres:{pg_password(stack)}@127.0.0.1:{stack.pg_port}/{database}"


def airflow_env(stack: StackSettings, target: AirflowTarget) -> dict[str, str]:
    """The environment every Airflow component (and the tests) run with."""
    password = pg_password(stack)
    settings = get_settings()
    connections_file = target.state_dir / "secrets" / "connections.json"
    backend_kwargs = json.dumps({"connections_file_path": str(connections_file)})
    env = {
        "AIRFLOW_HOME": str(target.home),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "16",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{target.api_url}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(target.home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
            f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{stack.pg_port}/{target.metadata_db}"
        ),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(target.api_port),
        "AIRFLOW__API__BASE_URL": target.api_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": stored_secret(stack, "jwt_secret"),
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(target.api_port + 10),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(target.api_port + 11),
        # Connections created by the saga live in a file-based secrets backend (0600).
        "AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": backend_kwargs,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": backend_kwargs,
        # Connections the platform itself needs come from the environment.
        f"AIRFLOW_CONN_{settings.warehouse_conn_id.upper()}": conn_uri(stack, target.warehouse_db),
        f"AIRFLOW_CONN_{settings.platform_conn_id.upper()}": conn_uri(stack, target.platform_db),
        "DBT_PLATFORM_STATE_DIR": str(target.state_dir),
        **TELEMETRY_OFF,
    }
    if settings.fault_injection_enabled:
        env["SAGA_FAULT_INJECTION"] = "1"
    return env


def prepare_airflow_home(stack: StackSettings, target: AirflowTarget) -> None:
    target.home.mkdir(parents=True, exist_ok=True)
    connections = target.state_dir / "secrets" / "connections.json"
    connections.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(connections.parent, 0o700)
    if not connections.exists():
        fd = os.open(connections, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("{}")
    passwords = target.home / "passwords.json"
    fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"admin": airflow_password(stack)}, fh)


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def migrate_metadata_db(stack: StackSettings, target: AirflowTarget) -> None:
    env = {**os.environ, **airflow_env(stack, target)}
    result = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def _pidfile(stack: StackSettings, target: AirflowTarget, component: str) -> Path:
    return target.home / "run" / f"{component}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def component_pid(stack: StackSettings, target: AirflowTarget, component: str) -> int | None:
    pidfile = _pidfile(stack, target, component)
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        return None
    return pid if _alive(pid) else None


def _lower_priority(niceness: int) -> None:
    """In the component's process, after it became a session leader: nice it, and its session too.

    Linux groups CPU time by session ("autogroup", on by default), and a process's nice value only
    ranks it within its own session's group: with every component in its own session, a plain
    ``nice`` does nothing against another component. The session's group gets the same nice value
    (best effort: kernels without autogroup have no such file, and then plain ``nice`` applies).
    """
    os.nice(niceness)
    try:
        fd = os.open("/proc/self/autogroup", os.O_WRONLY)
        try:
            os.write(fd, str(niceness).encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def start_airflow(
    stack: StackSettings,
    target: AirflowTarget,
    components=tuple(AIRFLOW_COMPONENTS),
    extra_env: dict[str, str] | None = None,
) -> None:
    env = {**os.environ, **airflow_env(stack, target), **(extra_env or {})}
    logs = target.home / "component-logs"
    logs.mkdir(parents=True, exist_ok=True)
    (target.home / "run").mkdir(parents=True, exist_ok=True)
    for component in components:
        if component_pid(stack, target, component):
            continue
        args = [a.format(port=target.api_port) for a in AIRFLOW_COMPONENTS[component]]
        if component in COMPONENT_LAUNCHERS:
            command = [sys.executable, *COMPONENT_LAUNCHERS[component], *args[1:]]
        else:
            command = [airflow_bin(), *args]
        niceness = COMPONENT_NICENESS.get(component, 0)
        with open(logs / f"{component}.log", "ab") as log:
            proc = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO_ROOT,
                preexec_fn=(lambda n=niceness: _lower_priority(n)) if niceness else None,  # noqa: PLW1509
            )
        _pidfile(stack, target, component).write_text(str(proc.pid))


def stop_airflow(stack: StackSettings, target: AirflowTarget, timeout: float = 30) -> None:
    pids = {c: component_pid(stack, target, c) for c in AIRFLOW_COMPONENTS}
    for pid in filter(None, pids.values()):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for component, pid in pids.items():
        while pid and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid and _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _pidfile(stack, target, component).unlink(missing_ok=True)


def health(target: AirflowTarget) -> dict | None:
    try:
        with urllib.request.urlopen(f"{target.api_url}/api/v2/monitor/health", timeout=5) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def is_healthy(report: dict | None) -> bool:
    if not report:
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all((report.get(p) or {}).get("status") == "healthy" for p in parts)


def wait_healthy(stack: StackSettings, target: AirflowTarget, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    report = None
    while time.monotonic() < deadline:
        report = health(target)
        if is_healthy(report):
            return report
        dead = [c for c in AIRFLOW_COMPONENTS if component_pid(stack, target, c) is None]
        if dead:
            raise StackError(f"Airflow component(s) {dead} exited; see {target.home / 'component-logs'}")
        time.sleep(2)
    raise StackError(f"Airflow not healthy after {timeout:.0f}s: {report}")


def airflow_up(stack: StackSettings | None = None, target: AirflowTarget | None = None) -> AirflowTarget:
    stack = stack or get_stack_settings()
    target = target or default_target(stack)
    pg_up(stack, (target.metadata_db, target.warehouse_db, target.platform_db))
    prepare_airflow_home(stack, target)
    migrate_metadata_db(stack, target)
    start_airflow(stack, target)
    wait_healthy(stack, target)
    return target


# --------------------------------------------------------------------------- REST client


class AirflowClient:
    """A small client for Airflow's public REST API (v2), authenticated with a JWT."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = self._fetch_token(username, password)

    def _fetch_token(self, username: str, password: str) -> str:
        body = json.dumps({"username": username, "password": password}).encode()
        req = urllib.request.Request(
            f"{self.base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{self.base_url}/api/v2{path}",
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            return exc.code, detail

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/dags/{dag_id}")
            if status == 200:
                return body
            time.sleep(2)
        raise StackError(f"DAG {dag_id} did not appear within {timeout:.0f}s (import errors? see the UI)")

    def trigger(self, dag_id: str, run_id: str, conf: dict | None = None) -> tuple[int, dict]:
        self.request("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        return self.request(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}},
        )

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if status == 200 and body.get("state") in {"success", "failed"}:
                return body
            time.sleep(2)
        raise StackError(f"run {dag_id}/{run_id} did not finish within {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of a run, page by page: the API returns at most ``[api]
        maximum_page_limit`` (100) rows per request, whatever ``limit`` asks for."""
        tis: list[dict] = []
        while True:
            _, body = self.request(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(tis)}"
            )
            page = body.get("task_instances", [])
            tis += page
            if not page or len(tis) >= body.get("total_entries", 0):
                return tis

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}


def client_for(stack: StackSettings, target: AirflowTarget) -> AirflowClient:
    return AirflowClient(target.api_url, "admin", airflow_password(stack))


# --------------------------------------------------------------------------- commands


def describe(stack: StackSettings, target: AirflowTarget) -> str:
    return (
        f"Airflow UI:   {target.api_url}  (user: admin, password: "
        f"{stack.secrets_dir / 'airflow_admin_password'})\n"
        f"PostgreSQL:   postgresql://postgres:$(cat {stack.secrets_dir / 'pg_admin_password'})"
        f"@127.0.0.1:{stack.pg_port}/postgres\n"
        f"Databases:    {target.metadata_db} (Airflow metadata), {target.warehouse_db} (dbt), "
        f"{target.platform_db} (saga journal)\n"
        f"Logs:         {target.home / 'component-logs'}"
    )


def run_and_report(client: AirflowClient, dag_id: str, conf: dict | None, label: str, order=sorted) -> dict:
    """Trigger a run through the REST API, wait for it, print every task's state; return the run."""
    client.wait_for_dag(dag_id)
    run_id = f"demo__{time.strftime('%Y%m%dT%H%M%S')}"
    status, body = client.trigger(dag_id, run_id, conf)
    if status not in (200, 201):
        raise StackError(f"triggering {dag_id} failed: HTTP {status} {body}")
    print(f"Triggered {dag_id}{label} (run {run_id}) through the REST API; waiting…", flush=True)
    started = time.monotonic()
    run = client.wait_for_run(dag_id, run_id)
    states = client.task_states(dag_id, run_id)
    print(f"Run {run_id}: {run['state']} in {time.monotonic() - started:.0f}s")
    for task_id in order(states):
        print(f"  {states[task_id] or 'none':<16} {task_id}")
    return {**run, "task_states": states}


def demo(stack: StackSettings, target: AirflowTarget, dag_id: str = "inventory_transforms") -> int:
    run = run_and_report(client_for(stack, target), dag_id, None, "")
    print(f"See it in the UI: {target.api_url}/dags/{dag_id}/runs/{run['dag_run_id']}")
    return 0 if run["state"] == "success" else 1


DEMO_PROJECT = "demo_analytics"


def demo_project_saga(stack: StackSettings, target: AirflowTarget, name: str = DEMO_PROJECT) -> int:
    """Create one dbt project through the saga. A fixed idempotency key: re-running creates nothing."""
    dag_id = "dbt_project_create"
    conf = {
        "project_name": name,
        "owner": "analytics@example.com",
        "description": "Created by the make run demo",
        "environments": ["dev", "prod"],
        "database_mode": "new",
        "database_name": None,
        "readers": [],
        "idempotency_key": f"make-run-demo-{name}",
    }
    print()
    run = run_and_report(client_for(stack, target), dag_id, conf, f" for project '{name}'", order=list)
    run_id = run["dag_run_id"]
    states = run["task_states"]
    if states.get("validate_request") == "skipped":
        print(f"  (idempotency key already used: an earlier make run created '{name}'; nothing new was made)")
    print(
        f"See it in the UI:  {target.api_url}/dags/{dag_id}/runs/{run_id}\n"
        f"Its DAG:           {target.api_url}/dags/{name} (appears within a minute of the first run)\n"
        f"Its database:      dbt_{name} (schemas {name}_dev, {name}_prod), connections dbt_{name}_dev/_prod\n"
        f"Its repository:    {get_settings().repositories_dir / name}\n"
        f"The saga journal:  database {target.platform_db}, schema saga (`make dsn` prints the admin URL):\n"
        "                   select saga_id, state, created_at from saga.sagas order by created_at desc;"
    )
    return 0 if run["state"] == "success" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "pg-up", "pg-down", "demo", "dsn", "env"])
    args = parser.parse_args(argv)
    stack = get_stack_settings()
    target = default_target(stack)
    try:
        if args.command == "pg-up":
            pg_up(stack)
        elif args.command == "pg-down":
            pg_stop(stack)
        elif args.command == "up":
            airflow_up(stack, target)
            print(describe(stack, target))
        elif args.command == "down":
            stop_airflow(stack, target)
            pg_stop(stack)
            print("Stopped Airflow and PostgreSQL.")
        elif args.command == "status":
            running = {c: component_pid(stack, target, c) for c in AIRFLOW_COMPONENTS}
            print(f"PostgreSQL running: {pg_is_running(stack)}")
            for component, pid in running.items():
                print(f"{component:<14} {'pid ' + str(pid) if pid else 'stopped'}")
            print(f"health: {json.dumps(health(target))}")
            print(describe(stack, target))
        elif args.command == "demo":
            return demo(stack, target) or demo_project_saga(stack, target)
        elif args.command == "dsn":
            print(admin_dsn(stack))
        elif args.command == "env":
            for key, value in sorted(airflow_env(stack, target).items()):
                print(f"export {key}={json.dumps(value)}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
