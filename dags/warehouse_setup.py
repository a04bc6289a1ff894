"""
# `warehouse_setup` — bootstrap a dbt project's warehouse schema

Trigger with the form (or the REST API) choosing a **project** and a **mode**:

| mode | does |
|---|---|
| `complete` | drop `stg_`/`int_`/`fct_`/`dim_` relations, load every seed, run foundation then configuration models, validate, report |
| `quick` | no dropping; load only seeds whose file changed (or whose table is missing); run, validate, report |
| `status` | read-only: what is there, row counts, which seeds would load; changes nothing |

Only admins may trigger it. Against a production target (`production: true` in the project's
`platform.yml`, or a project whose connection is a prod environment's) `complete` and `quick` run
only when the project's name is typed in **confirm_production**.

Foundation models: tagged `foundation` (else everything under `models/staging/`). Configuration models:
tagged `configuration` (else every other model). Validation runs `dbt test` plus the `checks` in the
project's `platform.yml`: severity `error` fails the run, `warn` only reports.

The **report** task's log and XCom (`report`) hold per-step status, duration and row counts; the last
report is also written to `<state dir>/warehouse_setup/<project>.report.md`.
"""

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, TriggerRule, chain, task

from include.dbt_platform.forms import param
from include.dbt_platform.warehouse_setup import MODES
from include.dbt_platform.warehouse_setup.steps import STEPS, project_names
from include.dbt_platform.warehouse_setup.tasks import report as write_report
from include.dbt_platform.warehouse_setup.tasks import run_named_step

projects = project_names()

with DAG(
    dag_id="warehouse_setup",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["dbt", "setup", "operations"],
    default_args={"owner": "data-platform", "retries": 1, "retry_delay": timedelta(seconds=30)},
    params={
        "project": param(
            "inventory_transforms" if "inventory_transforms" in projects else (projects or [""])[0],
            type="string",
            enum=projects or [""],
            title="dbt project",
            description="The project whose schema is set up.",
        ),
        "mode": param(
            "complete",
            type="string",
            enum=list(MODES),
            title="Mode",
            description="complete: rebuild from scratch; quick: no clearing, changed seeds only; "
            "status: read-only report.",
        ),
        "confirm_production": param(
            "",
            type=["string", "null"],
            title="Confirm a production run",
            description="For a project whose target is production, complete and quick modes run only "
            "when its name is typed here.",
        ),
    },
):
    steps = []
    for name in STEPS:

        @task(task_id=name, trigger_rule=TriggerRule.NONE_FAILED, doc_md=STEPS[name].__doc__)
        def run_step(step=name, params=None, ti=None) -> dict:
            return run_named_step(
                step, params["project"], params["mode"], ti, params.get("confirm_production")
            )

        steps.append(run_step())

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(params=None, ti=None) -> dict:
        """Per-step status, duration and row counts; fails the run if a step failed."""
        return write_report(params["project"], params["mode"], ti)

    chain(*steps, report())
