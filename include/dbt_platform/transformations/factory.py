"""The DAG factory: one Cosmos transformation DAG per dbt project.

``dags/transformations.py`` calls :func:`build_transformation_dags` for every loadable bundled
project; ``dags/transformation_import_errors.py`` turns every one that cannot be loaded into an import
error naming it. Two files because Airflow records import errors per file and marks every DAG of a
failing file stale: one broken project must not hide the healthy ones. The registered-projects bundle
(:mod:`.bundle`) has the same two files, which pass their own ``projects/`` folder as ``registered``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cosmos import DbtDag

from include.dbt_platform.adapters.airflow_api import OWNER_PERMISSIONS
from include.dbt_platform.config import Settings, get_settings
from include.dbt_platform.transformations import cosmos_config
from include.dbt_platform.transformations.assets import model_asset
from include.dbt_platform.transformations.dbt import guard_cosmos_runs
from include.dbt_platform.transformations.failures import classify_cosmos_failures
from include.dbt_platform.transformations.projects import DbtProject, DbtProjectError, discover
from include.dbt_platform.transformations.tracing import run_failed, run_succeeded, trace_cosmos_runs
from include.dbt_platform.transformations.watcher import run_consumers_in_triggerer

log = logging.getLogger(__name__)
# Every task of a transformation DAG runs dbt without the platform's secrets in its environment.
guard_cosmos_runs()
# ... and fails without retry when retrying cannot help (a failed test, an error in the SQL).
classify_cosmos_failures()
# ... and is a span of its run's trace, with a span per dbt node (transformations/tracing.py).
trace_cosmos_runs()

START_DATE = datetime(2024, 1, 1, tzinfo=UTC)


def dag_doc(project: DbtProject, test_behavior: str, source_freshness: bool = False) -> str:
    freshness = (
        "A source that declares a freshness is checked first, by its own task "
        "(`<source>_<table>_source`): past `error_after` it fails and the models reading it do not run; "
        "past `warn_after` it logs a warning. "
        if source_freshness
        else ""
    )
    tasks = (
        "Each dbt model (seed, snapshot) and its tests are one task; "
        if test_behavior == "build"
        else "Each dbt model is a task followed by a task running its tests; "
    )
    return (
        f"# dbt project `{project.name}`\n\n"
        f"{rejected_warning(project)}{source_of(project)}"
        f"{project.description or 'Transformations of the dbt project at'} `{project.path}`.\n\n"
        f"{tasks}seeds load first. {freshness}"
        f"dbt runs against Airflow connection `{project.conn_id}`, schema `{project.schema}`. "
        "Models emit Airflow assets, so downstream DAGs can be scheduled on them.\n\n"
        "Rendered by astronomer-cosmos from the project's manifest "
        "(`make manifests` rebuilds it)."
    )


def source_of(project: DbtProject) -> str:
    """Where a registered project's code comes from, and which commit runs."""
    if not project.repository:
        return ""
    return (
        f"Repository: `{project.repository}` (branch `main`); running commit `{project.commit}`. "
        "What the owner pushes runs within a few minutes (`project_sync`), once dbt can parse it.\n\n"
    )


def rejected_warning(project: DbtProject) -> str:
    """The banner of a project whose newest push could not be parsed (the last good one runs)."""
    if not project.rejected:
        return ""
    reason = str(project.rejected.get("reason", "")).strip().replace("\n", "\n> ")
    return (
        f"> **Warning: the latest push `{str(project.rejected.get('commit'))[:12]}` is not running.** "
        f"dbt could not parse it; this DAG still runs `{str(project.commit)[:12]}`, the last good version. "
        f"Fix the project and push again. dbt said:\n>\n> {reason}\n\n"
    )


def build_transformation_dag(project: DbtProject, settings: Settings | None = None) -> DbtDag:
    settings = settings or get_settings()
    mode = cosmos_config.mode_of(project, settings)
    behavior = cosmos_config.test_behavior_of(project, settings)
    source_freshness = cosmos_config.has_source_freshness(project)
    dag = DbtDag(
        dag_id=project.name,
        project_config=cosmos_config.project_config(project),
        profile_config=cosmos_config.profile_config(project, settings),
        execution_config=cosmos_config.execution_config(project, settings),
        render_config=cosmos_config.render_config(mode, behavior, source_freshness),
        operator_args={
            # dbt's debug log file would go to the task's temporary copy of the project, deleted when
            # the task ends: nobody reads it, and writing it costs the build about a tenth of its CPU.
            # What dbt prints still goes to the task log.
            "dbt_cmd_global_flags": ["--log-level-file", "none"],
        },
        schedule=project.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        # The run's root span, when it ends (the tasks' dbt invocations are its children).
        on_success_callback=run_succeeded,
        on_failure_callback=run_failed,
        # An empty mapping still syncs: it revokes what an earlier DAG of the same name granted.
        access_control=(
            None
            if project.access_roles is None
            else {role: {k: set(v) for k, v in OWNER_PERMISSIONS.items()} for role in project.access_roles}
        ),
        doc_md=dag_doc(project, behavior, source_freshness),
        tags=["dbt", "transformations", *project.tags],
        default_args={
            "owner": project.owner,
            "retries": 2,
            "retry_delay": timedelta(seconds=settings.transformation_retry_delay_seconds),
            "retry_exponential_backoff": True,
        },
    )
    declare_model_assets(dag, project, nodes_end_in_triggerer=mode == "triggerer")
    if mode == "triggerer":
        run_consumers_in_triggerer(dag, poke_interval=settings.watcher_poke_interval)
    return dag


def declare_model_assets(dag: DbtDag, project: DbtProject, *, nodes_end_in_triggerer: bool = False) -> None:
    """Give every model a stable asset (:func:`~.assets.model_asset`), emitted when it is refreshed.

    Each model's run (or build) task carries its model's asset, and Airflow registers the event when
    that task succeeds, as the model is refreshed. Where the node tasks end in the triggerer
    (``nodes_end_in_triggerer``), the platform's triggerer patch registers them there (stock Airflow
    registers asset events only for tasks that end on a worker), and a triggerer without it sends
    such a task to a worker to succeed. One exception: on an Airflow the patch was not written for,
    the producer (the one ``dbt build``) carries them all and emits them when the build succeeds.
    The choice depends only on the code (the same in every process that parses the DAG, workers
    included: a worker reports its task's outlets from its own parse), never on the environment.
    """
    from cosmos.operators.local import DbtBuildLocalOperator, DbtRunLocalOperator
    from cosmos.operators.watcher import DbtProducerWatcherOperator

    from include.dbt_platform.runtime.triggerer import outlet_registration_applies

    models = {}
    for task in dag.tasks:
        node = (getattr(task, "extra_context", None) or {}).get("dbt_node_config") or {}
        # A model's run or build task. Its tests' task carries the same node, and in the watcher modes
        # is a DbtRunLocalOperator too (Cosmos' DbtTestWatcherOperator): the model's own task emits.
        if (
            node.get("resource_type") == "model"
            and isinstance(task, (DbtRunLocalOperator, DbtBuildLocalOperator))
            and not getattr(task, "is_test_sensor", False)
        ):
            models[node["unique_id"]] = task
    outlets = {uid: model_asset(project.name, uid.split(".")[-1]) for uid in models}
    producers = [t for t in dag.tasks if isinstance(t, DbtProducerWatcherOperator)]
    if producers and nodes_end_in_triggerer and outlet_registration_applies():
        producers[0].outlets = [*producers[0].outlets, *outlets.values()]
    else:
        for uid, task in models.items():
            task.outlets = [*task.outlets, outlets[uid]]


def build_transformation_dags(
    settings: Settings | None = None, registered: Path | None = None
) -> dict[str, DbtDag]:
    """Build the DAG of every loadable bundled project (with ``registered``: of every project under
    that folder). Unloadable ones are reported by the other DAG file."""
    from airflow.sdk import get_parsing_context

    settings = settings or get_settings()
    projects = discover(settings, registered).projects
    # A task process parses this file only to run one DAG's task: render just that DAG (Airflow's
    # parsing context). The dag-processor has no DAG id in its context and renders them all.
    wanted = get_parsing_context().dag_id
    if wanted is not None and any(p.name == wanted for p in projects):
        projects = [p for p in projects if p.name == wanted]
    dags: dict[str, DbtDag] = {}
    for project in projects:
        try:
            dags[project.name] = build_transformation_dag(project, settings)
        except Exception:  # one project's Cosmos error must not take the others down
            log.exception("dbt project '%s' (%s) could not be rendered by Cosmos", project.name, project.path)
    return dags


def raise_for_unloadable_projects(settings: Settings | None = None, registered: Path | None = None) -> None:
    """Raise one DbtProjectError naming every project that cannot be loaded (none: return)."""
    errors = discover(settings, registered).errors
    if errors:
        lines = [f"{len(errors)} dbt project(s) cannot be turned into DAGs:"]
        lines += [f"- {reason}" for _, reason in sorted(errors.items())]
        raise DbtProjectError("\n".join(lines))
