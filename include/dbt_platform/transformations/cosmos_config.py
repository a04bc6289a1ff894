"""Every Cosmos configuration object is built here, from the settings and a project's description."""

from __future__ import annotations

from cosmos import ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, SourceRenderingBehavior, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from include.dbt_platform.config import Settings
from include.dbt_platform.transformations.projects import DbtProject, check_manifest

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
    mode = EXECUTION_MODES[mode_of(project, settings)]
    setup_operator_args = None
    if mode == ExecutionMode.WATCHER:
        from include.dbt_platform.transformations.watcher import leave_out_readers_of_stale_sources

        # The build's source freshness pre-check (when the project declares freshness): a source
        # past error_after keeps its models out of the build; past warn_after only, they run.
        setup_operator_args = {"freshness_callback": leave_out_readers_of_stale_sources}
    return ExecutionConfig(
        execution_mode=mode,
        # dbt runs inside the task process: no extra interpreter start per task.
        invocation_mode=InvocationMode.DBT_RUNNER,
        dbt_executable_path=settings.dbt_executable,
        setup_operator_args=setup_operator_args,
    )


def has_source_freshness(project: DbtProject) -> bool:
    """Whether any source of the project declares a freshness (``warn_after`` / ``error_after``).

    Read from the manifest (about 40 ms at 1,000 models): freshness can be set in a source's yml, on
    its table or in ``dbt_project.yml``, and only dbt merges them.
    """
    from cosmos.dbt.graph import is_freshness_effective

    sources = check_manifest(project).get("sources") or {}
    return any(is_freshness_effective(source.get("freshness")) for source in sources.values())


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


def render_config(mode: str, behavior: str, source_freshness: bool = False) -> RenderConfig:
    """For a project's :func:`mode_of`, :func:`test_behavior_of` and :func:`has_source_freshness`."""
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
        # Sources that declare a freshness get a task, `<table>_source`, upstream of the models that
        # read them: `dbt source freshness` for that source in LOCAL; in the watcher modes the build
        # runs it first and the task reports its result. Past error_after the task fails and the
        # models do not run; past warn_after it logs a warning and they run. (Cosmos' behavior also
        # renders sources that only have tests; without any freshness, no source is rendered and
        # the build runs no freshness check.)
        source_rendering_behavior=(
            SourceRenderingBehavior.WITH_TESTS_OR_FRESHNESS
            if source_freshness
            else SourceRenderingBehavior.NONE
        ),
    )
