"""The one way the platform itself runs dbt: in this process, through dbt's own ``dbtRunner``.

Two profiles: :func:`parse_profile` (``dbt parse`` needs one but never connects: no real credentials)
and :func:`airflow_profile` (rendered by Cosmos from the project's Airflow connection, as the
transformation DAGs use it). Cosmos' operators run dbt themselves, the same way
(``InvocationMode.DBT_RUNNER``); this module is for the manifest build and ``warehouse_setup``.

dbt never sees a platform secret: a project's models can read environment variables
(``env_var()``), so every dbt run, ours and Cosmos' (:func:`guard_cosmos_runs`), runs with the
platform's secrets taken out of the environment: connections (``AIRFLOW_CONN_*``), the metadata
database's DSN, keys, tokens, passwords. What the profile itself needs (``COSMOS_CONN_*``, and what
a deployment gives dbt on purpose as ``DBT_ENV_SECRET_*``) stays. The stack puts no secret in the
environment to begin with; this is the second fence.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from include.dbt_platform.config import Settings, get_settings
from include.dbt_platform.transformations.projects import DbtProject

PARSE_TARGET = "parse"
AIRFLOW_TARGET = "airflow"


@dataclass(frozen=True)
class Profile:
    """A profiles folder for one invocation, and the environment variables its profile reads."""

    profiles_dir: Path
    target: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class DbtOutcome:
    success: bool
    nodes: list[dict]
    error: str | None


@contextlib.contextmanager
def parse_profile(project: DbtProject) -> Iterator[Profile]:
    """A throwaway profile that lets ``dbt parse`` run; it is never used to connect."""
    outputs = {
        PARSE_TARGET: {
            "type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "user": "dbt_parse",
            "password": "unused",
            "dbname": "dbt_parse",
            "schema": project.schema,
            "threads": 1,
        }
    }
    with tempfile.TemporaryDirectory(prefix="dbt-parse-profile-") as folder:
        Path(folder, "profiles.yml").write_text(
            yaml.safe_dump({project.profile_name: {"target": PARSE_TARGET, "outputs": outputs}})
        )
        yield Profile(Path(folder), PARSE_TARGET)


@contextlib.contextmanager
def airflow_profile(project: DbtProject, settings: Settings | None = None) -> Iterator[Profile]:
    """The profile Cosmos renders from the project's Airflow connection (credentials as env vars)."""
    from include.dbt_platform.transformations import cosmos_config

    config = cosmos_config.profile_config(project, settings or get_settings())
    with config.ensure_profile() as (profile_path, env_vars):
        yield Profile(Path(profile_path).parent, AIRFLOW_TARGET, dict(env_vars))


_SECRET_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_")
_SECRET_MARKERS = ("PASSWORD", "SECRET", "TOKEN", "FERNET", "SQL_ALCHEMY_CONN", "BROKER_URL", "RESULT_BACKEND",
                   "BACKEND_KWARGS", "PRIVATE_KEY", "DSN", "API_KEY")  # fmt: skip
_KEPT_PREFIXES = ("COSMOS_CONN_", "DBT_ENV_SECRET_")


def is_platform_secret(name: str) -> bool:
    """Whether an environment variable may hold a platform secret that dbt must not see."""
    if name.startswith(_KEPT_PREFIXES):
        return False
    return name.startswith(_SECRET_PREFIXES) or any(marker in name.upper() for marker in _SECRET_MARKERS)


def without_platform_secrets(env) -> dict:
    return {key: value for key, value in env.items() if not is_platform_secret(key)}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` added to the process environment, and the platform's secrets taken out, for one dbt
    run; everything is put back afterwards."""
    hidden = {key: os.environ.pop(key) for key in list(os.environ) if is_platform_secret(key)}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(without_platform_secrets(values))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.environ.update(hidden)


def _frame_module_name() -> str:
    """The module that created a behaviour flag: what ``BehaviorFlag._default_source`` answers,
    from each frame's globals instead of ``inspect.stack()``."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__")
        if name and name != "dbt_common.behavior_flags":
            return name
        frame = frame.f_back
    return "Unknown"


def cheap_behavior_flag_source() -> bool:
    """dbt-common names the module that declared each adapter behaviour flag with
    ``inspect.stack()``, which reads the source file of every frame on the stack and scans
    ``sys.modules`` for each, for several flags on every dbt invocation: 0.14 s per flag measured
    under pytest (a deep stack, many modules), less in an Airflow task, where the stack is shorter. The answer only feeds a deprecation event's text; this
    gives the same module name from the frames' globals. Idempotent; True once done. Pinned by
    ``tests/unit/test_internals_pinned.py``."""
    from dbt_common import behavior_flags

    flag = behavior_flags.BehaviorFlagRendered
    if flag._default_source is _frame_module_name:
        return True
    _frame_module_name.replaced = flag.__dict__["_default_source"]  # type: ignore[attr-defined]
    flag._default_source = staticmethod(_frame_module_name)
    return True


def guard_cosmos_runs() -> bool:
    """Run every dbt invocation of Cosmos' operators (``cosmos.dbt.runner.run_command``, what
    ``InvocationMode.DBT_RUNNER`` calls) without the platform's secrets. Idempotent; True once done."""
    from cosmos.dbt import runner

    cheap_behavior_flag_source()
    original = runner.run_command
    if getattr(original, "_dbt_platform_guard", False):
        return True

    def run_command(command, env, cwd, callbacks=None, **kwargs):
        with _environment({}):
            return original(command, without_platform_secrets(env), cwd, callbacks, **kwargs)

    run_command._dbt_platform_guard = True  # type: ignore[attr-defined]
    runner.run_command = run_command
    return True


def run(
    project: DbtProject,
    args: list[str],
    profile: Profile,
    *,
    target_path: Path | None = None,
    log_path: Path | None = None,
) -> DbtOutcome:
    """``dbt <args>`` for ``project`` with ``profile``; node results and the first error, if any."""
    from dbt.cli.main import dbtRunner

    cheap_behavior_flag_source()
    command = [
        *args,
        "--project-dir", str(project.path),
        "--profiles-dir", str(profile.profiles_dir),
        "--profile", project.profile_name,
        "--target", profile.target,
    ]  # fmt: skip
    if target_path is not None:
        command += ["--target-path", str(target_path)]
    if log_path is not None:
        command += ["--log-path", str(log_path)]
    with _environment({"DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DO_NOT_TRACK": "true", **profile.env}):
        result = dbtRunner().invoke(command)
    nodes = []
    for r in getattr(result.result, "results", None) or []:
        response = getattr(r, "adapter_response", None) or {}
        nodes.append(
            {
                "name": r.node.name,
                "type": r.node.resource_type,
                "status": str(r.status),
                "seconds": round(r.execution_time or 0, 2),
                "rows": response.get("rows_affected"),
                "message": r.message,
            }
        )
    error = None
    if result.exception is not None:
        error = str(result.exception).strip()
    elif not result.success:
        failed = [n for n in nodes if n["status"] in ("error", "fail", "runtime error")]
        error = "; ".join(f"{n['name']}: {n['message']}" for n in failed) or "dbt reported a failure"
    return DbtOutcome(success=bool(result.success), nodes=nodes, error=error)
