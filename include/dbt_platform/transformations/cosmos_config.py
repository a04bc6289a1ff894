"""Every Cosmos configuration object is built here, from the settings and a project's description."""

from __future__ import annotations

from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from include.dbt_platform.config import Settings
from include.dbt_platform.transformations.projects import DbtProject

EXECUTION_MODES = {
    # One dbt build; every node's task starts and ends in the triggerer (see transformations/watcher).
    "triggerer": ExecutionMode.WATCHER,
    # Cosmos' WATCHER as shipped: one dbt build, consumers deferring from worker processes.
    "watcher": ExecutionMode.WATCHER,
    # Cosmos' default: one dbt invocation per node, each in its own worker process.
    "local": ExecutionMode.LOCAL,
}


TEST_BEHAVIORS = {
    # A model (seed, snapshot) and its tests are one task; run alone: `dbt build --select <node>`.
    "build": TestBehavior.BUILD,
    # A model's task, then a task running its tests (Cosmos' default).
    "after_each": TestBehavior.AFTER_EACH,
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
        # dbt packages are installed once, into the project's dbt_packages/, when its manifest is
        # built (manifests.py). A task never runs `dbt deps` (no network, no per-task cost): Cosmos
        # links dbt_packages/ into the task's temporary copy of the project (a symlink, not a copy:
        # dbt only reads it).
        install_dbt_deps=False,
        copy_dbt_packages=False,
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


def test_behavior_of(project: DbtProject, settings: Settings) -> str:
    behavior = project.test_behavior or settings.test_behavior
    source = f"{project.path}/platform.yml" if project.test_behavior else "DBT_PLATFORM_TEST_BEHAVIOR"
    if behavior not in TEST_BEHAVIORS:
        raise ValueError(f"{source}: test behavior {behavior!r}; expected one of {sorted(TEST_BEHAVIORS)}")
    if behavior == "build" and mode_of(project, settings) == "watcher":
        raise ValueError(
            f"{source}: test behavior 'build' is not available in Cosmos' stock 'watcher' mode; "
            "use 'after_each', or the 'triggerer' mode"
        )
    return behavior


def render_config(mode: str, behavior: str) -> RenderConfig:
    """For a project's :func:`mode_of` and :func:`test_behavior_of`."""
    from include.dbt_platform.transformations.watcher import BUILD_NODE_CONVERTERS

    return RenderConfig(
        load_method=LoadMode.DBT_MANIFEST,
        test_behavior=TEST_BEHAVIORS[behavior],
        emit_datasets=True,
        # LOCAL runs dbt per node: a test of two models (relationships) run with one of them would
        # fail while the other is not built yet. It gets its own task, after both. (One dbt build in
        # the watcher modes orders it itself.)
        should_detach_multiple_parents_tests=mode == "local",
        # Cosmos' WATCHER renders no build task; the triggerer mode brings its own.
        node_converters=BUILD_NODE_CONVERTERS if behavior == "build" and mode == "triggerer" else None,
    )
