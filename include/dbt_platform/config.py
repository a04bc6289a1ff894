"""The one place that reads configuration.

Everything else asks this module for paths, connection ids and switches; nothing else reads
``os.environ``. Every value has a default that works in the local stack (``make run``) and an
environment variable that overrides it (listed in the README).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# DAG ids the platform itself defines (and reserves for its lifecycle DAGs): no dbt project, bundled or
# created by a saga, may take one of them, whatever the parse order.
PLATFORM_DAG_IDS = frozenset(
    {
        "dbt_project_create",
        "dbt_project_add_environment",
        "dbt_project_rotate_credentials",
        "dbt_project_decommission",
        "saga_recovery",
        "warehouse_setup",
        "inventory_marts_report",
    }
)
# The Airflow role (FAB auth manager) that may trigger the project-lifecycle DAGs and nothing else;
# those DAGs grant it through their access_control (include/dbt_platform/runtime/roles.py makes it).
REQUESTER_ROLE = "Requester"
# The platform's service account (its FAB role): what a saga changes in Airflow itself, through the API.
PLATFORM_ROLE = "Platform"
PLATFORM_USER = "dbt-platform"
# Databases no project may ever be given, whatever the allow-list says.
NEVER_ADOPTED_DATABASES = frozenset(
    {"postgres", "template0", "template1", "airflow", "platform", "warehouse"}
)


def env(name: str, default: str) -> str:
    """The variable's value, or ``default`` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    return value in {"1", "true", "yes", "on"}


def _default_dbt_executable() -> str:
    # Prefer the dbt installed next to the running interpreter (the project's venv).
    candidate = Path(sys.executable).parent / "dbt"
    if candidate.exists():
        return str(candidate)
    return shutil.which("dbt") or "dbt"


@dataclass(frozen=True)
class Settings:
    dbt_projects_dir: Path
    registry_dir: Path
    state_dir: Path
    dbt_executable: str
    warehouse_conn_id: str
    platform_conn_id: str
    execution_mode: str
    test_behavior: str
    watcher_poke_interval: float
    schedule: str | None
    dbt_threads: int
    fault_injection_enabled: bool
    smtp_conn_id: str
    # Airflow's REST API as the platform's service account (empty: none; see adapters/airflow_api.py).
    airflow_api_conn_id: str
    saga_retry_delay_seconds: float | None
    # First retry delay of transformation tasks (exponential backoff doubles it).
    transformation_retry_delay_seconds: float
    # Seconds, by step name, plus "saga" for the whole run (drills and tests shorten them).
    saga_timeouts: dict[str, float]
    # Existing databases a project may be created in (database_mode "existing"); empty: none.
    adoptable_databases: frozenset[str]
    # Back-pressure, in one place: runs of one saga DAG at once (more wait, queued), the pool every
    # saga task runs in (its slots bound saga work overall; the stack creates it), and how many sagas
    # one requester may have going at once (more wait at the saga's first task).
    # The PostgreSQL server where project databases are made (the platform's own by default), and
    # the circuit breaker around it and the git server: after `breaker_failures` unavailable
    # attempts within `breaker_window_seconds`, new sagas are refused at validation, letting one
    # through as a probe every `breaker_probe_seconds`.
    projects_conn_id: str
    breaker_failures: int
    breaker_window_seconds: float
    breaker_probe_seconds: float
    saga_max_active_runs: int
    saga_pool: str
    saga_pool_slots: int
    sagas_per_requester: int

    @property
    def repositories_dir(self) -> Path:
        return self.state_dir / "repositories"

    @property
    def notifications_dir(self) -> Path:
        return self.state_dir / "notifications"


def airflow_metadata_database() -> str | None:
    """The name of Airflow's metadata database, where this process's Airflow config says (or None)."""
    try:
        from airflow.configuration import conf
        from sqlalchemy.engine import make_url

        return make_url(conf.get("database", "sql_alchemy_conn")).database
    except Exception:  # noqa: BLE001 - a worker without database settings: nothing to name
        return None


def get_settings() -> Settings:
    """Read the settings now (not cached: tests and operators change the environment)."""
    state_dir = Path(env("DBT_PLATFORM_STATE_DIR", str(REPO_ROOT / ".local" / "state")))
    schedule = env("DBT_PLATFORM_SCHEDULE", "@daily")
    return Settings(
        dbt_projects_dir=Path(env("DBT_PLATFORM_PROJECTS_DIR", str(REPO_ROOT / "dbt_projects"))),
        registry_dir=Path(env("DBT_PLATFORM_REGISTRY_DIR", str(state_dir / "registered_projects"))),
        state_dir=state_dir,
        dbt_executable=env("DBT_PLATFORM_DBT_EXECUTABLE", _default_dbt_executable()),
        warehouse_conn_id=env("DBT_PLATFORM_WAREHOUSE_CONN_ID", "warehouse"),
        platform_conn_id=env("DBT_PLATFORM_PLATFORM_CONN_ID", "platform"),
        execution_mode=env("DBT_PLATFORM_EXECUTION_MODE", "triggerer").lower(),
        test_behavior=env("DBT_PLATFORM_TEST_BEHAVIOR", "build").lower(),
        watcher_poke_interval=float(env("DBT_PLATFORM_WATCHER_POKE_INTERVAL", "0.5")),
        schedule=None if schedule.lower() in {"none", "manual"} else schedule,
        dbt_threads=int(env("DBT_PLATFORM_DBT_THREADS", "4")),
        fault_injection_enabled=env_bool("SAGA_FAULT_INJECTION", False),
        smtp_conn_id=env("DBT_PLATFORM_SMTP_CONN_ID", "smtp_default"),
        airflow_api_conn_id=env("DBT_PLATFORM_AIRFLOW_API_CONN_ID", ""),
        saga_retry_delay_seconds=(
            float(os.environ["DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS"])
            if os.environ.get("DBT_PLATFORM_SAGA_RETRY_DELAY_SECONDS")
            else None
        ),
        transformation_retry_delay_seconds=float(
            env("DBT_PLATFORM_TRANSFORMATION_RETRY_DELAY_SECONDS", "30")
        ),
        saga_timeouts=_saga_timeouts(),
        projects_conn_id=env(
            "DBT_PLATFORM_PROJECTS_CONN_ID", env("DBT_PLATFORM_PLATFORM_CONN_ID", "platform")
        ),
        breaker_failures=int(env("DBT_PLATFORM_BREAKER_FAILURES", "3")),
        breaker_window_seconds=float(env("DBT_PLATFORM_BREAKER_WINDOW_SECONDS", "300")),
        breaker_probe_seconds=float(env("DBT_PLATFORM_BREAKER_PROBE_SECONDS", "30")),
        saga_max_active_runs=int(env("DBT_PLATFORM_SAGA_MAX_ACTIVE_RUNS", "16")),
        saga_pool=env("DBT_PLATFORM_SAGA_POOL", "sagas"),
        saga_pool_slots=int(env("DBT_PLATFORM_SAGA_POOL_SLOTS", "16")),
        sagas_per_requester=int(env("DBT_PLATFORM_SAGAS_PER_REQUESTER", "4")),
        adoptable_databases=frozenset(
            name.strip() for name in env("DBT_PLATFORM_ADOPTABLE_DATABASES", "").split(",") if name.strip()
        ),
    )


def _saga_timeouts() -> dict[str, float]:
    raw = env("DBT_PLATFORM_SAGA_TIMEOUTS", "{}")
    try:
        parsed = json.loads(raw)
        return {str(k): float(v) for k, v in parsed.items()}
    except (ValueError, TypeError, AttributeError):
        raise ValueError(
            f'DBT_PLATFORM_SAGA_TIMEOUTS={raw!r}: expected JSON like {{"saga": 1800, "create_environments": 60}}'
        ) from None
