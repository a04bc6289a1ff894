"""Every Cosmos configuration object is built here, from the settings and a project's description."""

from __future__ import annotations

from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from include.dbt_platform.config import Settings
from include.dbt_platform.projects import DbtProject

EXECUTION_MODES = {
    # One dbt build; every node's task starts and ends in the triggerer (see cosmos_triggerer).
    "triggerer": ExecutionMode.WATCHER,
    # Cosmos' WATCHER as shipped: one dbt build, consumers deferring from worker processes.
    "watcher": ExecutionMode.WATCHER,
    # Cosmos' default: one dbt invocation per node, each in its own worker process.
    "local": ExecutionMode.LOCAL,
}


def mode_of(project: DbtProject, settings: Settings) -> str:
    mode = project.execution_mode or settings.execution_mode
    if mode not in EXECUTION_MODES:
        source = f"{project.path}/platform.yml" if project.execution_mode else "DBT_PLATFORM_EXECUTION_MODE"
        raise ValueError(f"{source}: execution mode {mode!r}; expected one of {sorted(EXECUTION_MODES)}")
    return mode


def project_config(project: DbtProject) -> ProjectConfig:
    return ProjectConfig(
        dbt_project_path=project.path,
        manifest_path=project.manifest_path,
        project_name=project.name,
        # No packages to install at run time: projects vendor what they need.
        install_dbt_deps=False,
    )


def profile_config(project: DbtProject, settings: Settings) -> ProfileConfig:
    # Credentials come from the Airflow connection at run time; nothing secret is committed.
    return ProfileConfig(
        profile_name=project.profile_name,
        target_name="airflow",
        profile_mapping=PostgresUserPasswordProfileMapping(
            conn_id=project.conn_id,
            profile_args={"schema": project.schema, "threads": settings.dbt_threads},
        ),
    )


def execution_config(project: DbtProject, settings: Settings) -> ExecutionConfig:
    return ExecutionConfig(
        execution_mode=EXECUTION_MODES[mode_of(project, settings)],
        # dbt runs inside the task process: no extra interpreter start per task.
        invocation_mode=InvocationMode.DBT_RUNNER,
        dbt_executable_path=settings.dbt_executable,
    )


def render_config() -> RenderConfig:
    return RenderConfig(
        load_method=LoadMode.DBT_MANIFEST,
        test_behavior=TestBehavior.AFTER_EACH,
        emit_datasets=True,
    )
