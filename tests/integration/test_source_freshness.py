"""Source freshness: a project whose source declares ``freshness`` checks it before its models run
(real dbt, PostgreSQL and Airflow; LOCAL mode through ``dag.test()``; the triggerer mode is in
tests/scheduler/test_transformations_on_scheduler.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.dbt_platform.transformations.factory import build_transformation_dag
from include.dbt_platform.transformations.projects import load_project
from tests.harness import build_manifest, query, run_dag_test

NAME = "fresh_loads"
SOURCE_TASK = "loads_events_source"


def write_fresh_project(root: Path, name: str = NAME) -> Path:
    """``loads.events`` (loaded by another system: warn after 1 hour, error after 1 day), a staging
    model and a mart reading it, and a model that does not."""
    project = root / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {name}\n"
        "models:\n  +materialized: table\n"
    )
    (project / "models" / "_loads__sources.yml").write_text(
        'version: 2\nsources:\n  - name: loads\n    schema: "{{ target.schema }}_raw"\n'
        "    loaded_at_field: loaded_at\n"
        "    freshness:\n      warn_after: {count: 1, period: hour}\n      error_after: {count: 1, period: day}\n"
        "    tables:\n      - name: events\n"
    )
    (project / "models" / "stg_events.sql").write_text(
        "with source as (select * from {{ source('loads', 'events') }}),\n"
        "renamed as (select id as event_id, loaded_at from source)\nselect * from renamed\n"
    )
    (project / "models" / "event_counts.sql").write_text(
        "select count(*) as events from {{ ref('stg_events') }}\n"
    )
    (project / "models" / "calendar.sql").write_text("select 1 as day\n")
    (project / "platform.yml").write_text(f"schema: {name}\n")
    build_manifest(project)
    return project


def load_events(warehouse, hours_ago: float, schema: str = NAME) -> None:
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {schema} cascade")
        cur.execute(f"drop schema if exists {schema}_raw cascade")
        cur.execute(f"create schema {schema}_raw")
        cur.execute(
            f"create table {schema}_raw.events as select id, now() - make_interval(secs => %s) as loaded_at "
            "from generate_series(1, 3) as id",
            (hours_ago * 3600,),
        )


@pytest.fixture
def fresh_dag(projects_dir: Path):
    dag = build_transformation_dag(load_project(write_fresh_project(projects_dir)))
    # The check is a task of its own, upstream of the models reading the source, not of the others.
    assert dag.task_dict[SOURCE_TASK].downstream_task_ids == {"stg_events_model_build"}
    assert not dag.task_dict["calendar_model_build"].upstream_task_ids
    return dag


def outcome(run) -> dict[str, tuple[str, int]]:
    return {ti.task_id: (ti.state, ti.try_number) for ti in run.get_task_instances()}


def test_fresh_data_runs_the_models(fresh_dag, warehouse):
    load_events(warehouse, hours_ago=0.1)
    run, states = run_dag_test(fresh_dag)
    assert run.state == "success", states
    assert states[SOURCE_TASK] == "success"
    assert query(warehouse, f"select events from {NAME}.event_counts") == [(3,)]


def test_data_past_error_after_fails_the_check_naming_the_source_and_no_model_reads_it(
    fresh_dag, warehouse, capfd: pytest.CaptureFixture
):
    load_events(warehouse, hours_ago=30)
    run, _ = run_dag_test(fresh_dag)
    tries = outcome(run)
    assert run.state == "failed", tries
    assert tries[SOURCE_TASK] == ("failed", 1), "stale data stays stale: no retry"
    assert tries["stg_events_model_build"][0] == tries["event_counts_model_build"][0] == "upstream_failed"
    assert tries["calendar_model_build"] == ("success", 1), "models that do not read it still run"
    log = capfd.readouterr()
    assert "retrying cannot help (no retry): source loads.events is stale: last loaded 1.3 days ago" in (
        log.out + log.err
    )
    assert "error_after 1 day(s)" in log.out + log.err
    assert query(warehouse, f"select to_regclass('{NAME}.stg_events')") == [(None,)]


def test_data_past_warn_after_only_logs_a_warning_and_runs(
    fresh_dag, warehouse, capfd: pytest.CaptureFixture
):
    load_events(warehouse, hours_ago=3)
    run, states = run_dag_test(fresh_dag)
    assert run.state == "success", states
    assert states[SOURCE_TASK] == "success"
    log = capfd.readouterr()
    assert "WARN freshness of loads.events" in log.out + log.err
    assert query(warehouse, f"select events from {NAME}.event_counts") == [(3,)]
