"""Airflow 3 for the local stack: its environment, its components on loopback, their health."""

from __future__ import annotations

import configparser
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devstack.observability import observability_env, observability_up
from devstack.postgres import pg_up
from devstack.services import alive, service_pid
from devstack.settings import (
    AIRFLOW_USERS,
    TELEMETRY_OFF,
    StackError,
    StackSettings,
    airflow_user_password,
    get_stack_settings,
    pg_password,
    role_for,
    role_password,
    stored_secret,
)
from devstack.shared_state import (
    AIRFLOW_API_CONN_ID,
    VAULT_BACKEND,
    dag_bundles,
    prepare_services,
    secrets_backend_kwargs,
)
from include.dbt_platform.config import REPO_ROOT, get_settings

AIRFLOW_COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}", "--workers", "1"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
# Every component is the stock `airflow` command. The triggerer gets the platform's patch (no per-task
# DAG cost) from plugins/airflow_local_settings.py, which Airflow imports by itself.
# CPU priorities. The LocalExecutor runs every task inside the scheduler's process tree, so the tasks
# (a dbt build) share the CPU with whatever the other components do meanwhile. Off that critical path:
# the dag-processor (it parses files, and serves the callback request Airflow sends whenever a task
# ends in the triggerer) and the triggerer (it reports node results as the build makes them; lagging
# a little behind costs the run nothing).
COMPONENT_NICENESS = {"dag-processor": 19, "triggerer": 5}


@dataclass(frozen=True)
class AirflowTarget:
    """One Airflow installation on the local cluster: its home, databases and API port."""

    home: Path
    metadata_db: str
    warehouse_db: str
    platform_db: str
    api_port: int
    state_dir: Path
    # Its share of the stack's secrets manager and git server: a KV mount and an org of its own
    # (the stack's: "airflow" and "platform"; an isolated target's: named after it).
    namespace: str = ""

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def secrets_mount(self) -> str:
        return f"airflow_{self.namespace}" if self.namespace else "airflow"

    @property
    def git_org(self) -> str:
        return self.namespace or "platform"


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
        namespace=name,
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


def airflow_env(stack: StackSettings, target: AirflowTarget) -> dict[str, str]:
    """The environment every Airflow component (and the tests) run with: settings, never secrets.

    Secrets live where only the stack's user can read them: the metadata database's DSN and the JWT
    secret in ``$AIRFLOW_HOME/airflow.cfg`` (0600), every connection (the platform's and the sagas')
    in OpenBao, whose read-only token is a 0600 file under ``.local/secrets/openbao/``. So no process
    of the stack, and above all no dbt run, finds a password or a DSN in its environment.
    """
    settings = get_settings()
    backend_kwargs = json.dumps(secrets_backend_kwargs(stack, target))
    env = {
        "AIRFLOW_HOME": str(target.home),
        "AIRFLOW_CONFIG": str(target.home / "airflow.cfg"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "16",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{target.api_url}/execution/",
        # Real roles (Admin, Requester, Viewer): Airflow's FAB auth manager, its users in the metadata DB.
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(target.api_port),
        "AIRFLOW__API__BASE_URL": target.api_url,
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        # A build task sends its models' lineage after it reported success (watcher/producer.py):
        # Airflow ends a task's process that long after its success (default 20 s).
        "AIRFLOW__CORE__TASK_SUCCESS_OVERTIME": "120",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(target.api_port + 10),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(target.api_port + 11),
        # Connections (the platform's and the sagas') live in OpenBao, read through VaultBackend.
        "AIRFLOW__SECRETS__BACKEND": VAULT_BACKEND,
        "AIRFLOW__SECRETS__BACKEND_KWARGS": backend_kwargs,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": VAULT_BACKEND,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": backend_kwargs,
        # The registered projects come from the git server; each component keeps its own checkouts.
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(dag_bundles(stack, target)),
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(target.home / "dag_bundles"),
        "DBT_PLATFORM_STATE_DIR": str(target.state_dir),
        **TELEMETRY_OFF,
        **observability_env(stack, target),  # metrics, lineage (devstack/observability.py)
    }
    if settings.fault_injection_enabled:
        env["SAGA_FAULT_INJECTION"] = "1"
    return env


# Never passed on from the shell that starts the stack: a component gets what airflow_env gives it.
_SECRET_MARKERS = (
    "PASSWORD",
    "SECRET",
    "TOKEN",
    "FERNET",
    "SQL_ALCHEMY_CONN",
    "BROKER_URL",
    "RESULT_BACKEND",
)


def component_environment(
    stack: StackSettings, target: AirflowTarget, extra: dict[str, str] | None = None
) -> dict:
    """The environment a component starts with: the caller's, less anything secret, plus ours."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_"))
        and not any(marker in key.upper() for marker in _SECRET_MARKERS)
    }
    return {**inherited, **airflow_env(stack, target), **(extra or {})}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def write_airflow_config(stack: StackSettings, target: AirflowTarget) -> None:
    """``airflow.cfg`` (0600) with the secrets Airflow's own processes need. Writes one file only:
    nothing needs to run yet (the tests write it before Airflow is first imported)."""
    metadata_role = role_for(target.metadata_db) or "postgres"
    metadata_password = (
        role_password(stack, metadata_role) if role_for(target.metadata_db) else pg_password(stack)
    )
    config = configparser.ConfigParser(interpolation=None)
    config["database"] = {
        "sql_alchemy_conn": f"postgresql+psycopg2://{metadata_role}:{metadata_password}"
        f"@127.0.0.1:{stack.pg_port}/{target.metadata_db}"
    }
    config["api_auth"] = {"jwt_secret": stored_secret(stack, "jwt_secret")}
    config["api"] = {"secret_key": stored_secret(stack, "api_secret_key")}  # signs the UI's sessions
    buffer = io.StringIO()
    config.write(buffer)
    _write_private(target.home / "airflow.cfg", buffer.getvalue())


def prepare_airflow_home(stack: StackSettings, target: AirflowTarget) -> None:
    target.home.mkdir(parents=True, exist_ok=True)
    write_airflow_config(stack, target)
    prepare_services(stack, target)


def airflow_bin() -> str:
    return str(Path(sys.executable).parent / "airflow")


def migrate_metadata_db(stack: StackSettings, target: AirflowTarget) -> None:
    """``airflow db migrate``, then the pool every saga task runs in (its slots: the settings')."""
    env = component_environment(stack, target)
    result = subprocess.run([airflow_bin(), "db", "migrate"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise StackError(f"airflow db migrate failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    settings = get_settings()
    result = subprocess.run(
        [airflow_bin(), "pools", "set", settings.saga_pool, str(settings.saga_pool_slots),
         "Saga tasks (DBT_PLATFORM_SAGA_POOL_SLOTS): how much saga work runs at once"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"creating the pool {settings.saga_pool} failed:\n{result.stderr[-2000:]}")
    # The Requester role and the stack's users (passwords through stdin: never in argv or env).
    users = [
        {"username": user, "roles": roles, "password": airflow_user_password(stack, user)}
        for user, roles in AIRFLOW_USERS.items()
    ]
    result = subprocess.run(
        [sys.executable, "-m", "include.dbt_platform.runtime.roles"],
        input=json.dumps(users), env=env, capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    if result.returncode != 0:
        raise StackError(
            f"creating Airflow's roles and users failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def _pidfile(stack: StackSettings, target: AirflowTarget, component: str) -> Path:
    return target.home / "run" / f"{component}.pid"


def component_pid(stack: StackSettings, target: AirflowTarget, component: str) -> int | None:
    return service_pid(_pidfile(stack, target, component))


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
    env = component_environment(
        stack, target, {"DBT_PLATFORM_AIRFLOW_API_CONN_ID": AIRFLOW_API_CONN_ID, **(extra_env or {})}
    )
    logs = target.home / "component-logs"
    logs.mkdir(parents=True, exist_ok=True)
    (target.home / "run").mkdir(parents=True, exist_ok=True)
    for component in components:
        if component_pid(stack, target, component):
            continue
        command = [airflow_bin(), *(a.format(port=target.api_port) for a in AIRFLOW_COMPONENTS[component])]
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
        while pid and alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid and alive(pid):
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
    observability_up(stack, target)
    start_airflow(stack, target)
    wait_healthy(stack, target)
    return target
