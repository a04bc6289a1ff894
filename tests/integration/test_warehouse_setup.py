"""warehouse_setup on a copy of inventory_transforms: real PostgreSQL, real dbt, real Airflow runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg2
import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.config import REPO_ROOT, get_settings
from tests.harness import build_manifest, copy_project, query, warehouse_dsn

SCHEMA = "setup_test"
PROJECT = "inventory_transforms"


@pytest.fixture
def project(projects_dir: Path, warehouse) -> Path:
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {SCHEMA} cascade")
        cur.execute(f"drop schema if exists {SCHEMA}_raw cascade")
    path = copy_project(PROJECT, projects_dir, SCHEMA)
    build_manifest(path)
    shutil.rmtree(get_settings().state_dir / "warehouse_setup", ignore_errors=True)
    return path


def setup_dag():
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "warehouse_setup.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["warehouse_setup"]


def run(mode: str, project_name: str = PROJECT):
    dag = setup_dag()
    dagrun = dag.test(run_conf={"project": project_name, "mode": mode})
    tis = {ti.task_id: ti for ti in dagrun.get_task_instances()}
    report = tis["report"].xcom_pull(task_ids="report", key="report")
    return dagrun, {t: ti.state for t, ti in tis.items()}, report


def relations(warehouse, schema: str = SCHEMA) -> dict[str, str]:
    rows = query(
        warehouse,
        "select c.relname, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace "
        "where n.nspname = %s and c.relkind in ('r', 'v')",
        (schema,),
    )
    return dict(rows)


def steps_of(report: dict) -> dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def write_checks(project: Path, checks: list[dict]) -> None:
    platform = yaml.safe_load((project / "platform.yml").read_text())
    platform["checks"] = checks
    (project / "platform.yml").write_text(yaml.safe_dump(platform))


def test_complete_clears_loads_builds_validates_and_reports(project, warehouse):
    with warehouse.cursor() as cur:
        cur.execute(f"create schema {SCHEMA}")
        cur.execute(f"create table {SCHEMA}.fct_stale (id int)")
        cur.execute(f"create view {SCHEMA}.stg_leftover as select 1 as x")
        cur.execute(f"create table {SCHEMA}.keep_me (id int)")
    write_checks(project, [{"name": "users_present", "severity": "error",
                            "sql": "select case when count(*) = 0 then 1 else 0 end from {{ schema }}.fct_users"}])  # fmt: skip

    dagrun, states, report = run("complete")

    assert dagrun.state == "success", states
    assert set(states.values()) == {"success"}
    found = relations(warehouse)
    assert "fct_stale" not in found and "stg_leftover" not in found
    assert "keep_me" in found, "only stg_/int_/fct_/dim_ relations are cleared"
    assert {"stg_users", "stg_applications", "fct_users", "fct_applications"} <= set(found)
    steps = steps_of(report)
    assert "fct_stale" in steps["clear_relations"]["details"]
    assert "raw_users (12 rows)" in steps["load_seeds"]["details"]
    assert "stg_users" in steps["run_foundation"]["details"]
    assert "fct_users" not in steps["run_foundation"]["details"], "marts are configuration models"
    assert "fct_users" in steps["run_configuration"]["details"]
    assert "users_present=pass(0)" in steps["validate"]["details"]
    assert report["row_counts"]["fct_users"] == 12
    assert all(isinstance(s["seconds"], float) for s in report["steps"])
    saved = get_settings().state_dir / "warehouse_setup" / f"{PROJECT}.report.md"
    assert "| fct_users | 12 |" in saved.read_text()


def test_quick_keeps_relations_and_reloads_only_changed_seeds(project, warehouse):
    assert run("complete")[0].state == "success"
    with warehouse.cursor() as cur:
        cur.execute(f"create view {SCHEMA}.stg_extra as select 1 as x")

    dagrun, states, report = run("quick")
    assert dagrun.state == "success", states
    assert "stg_extra" in relations(warehouse), "quick mode does not clear"
    assert steps_of(report)["clear_relations"]["status"] == "skipped"
    assert steps_of(report)["load_seeds"]["details"] == "all seeds unchanged"

    seed = project / "seeds" / "raw_applications.csv"
    seed.write_text(seed.read_text() + "199,extra-app,4,low,2024-07-01\n")
    dagrun, states, report = run("quick")
    assert dagrun.state == "success", states
    details = steps_of(report)["load_seeds"]["details"]
    assert "raw_applications (11 rows)" in details and "raw_users" not in details


def test_status_reports_and_changes_nothing(project, warehouse):
    assert run("complete")[0].state == "success"
    with warehouse.cursor() as cur:
        cur.execute(f"create view {SCHEMA}.stg_extra as select 1 as x")
    before = relations(warehouse), {r: query(warehouse, f"select count(*) from {SCHEMA}.{r}")[0][0]
                                    for r in relations(warehouse)}  # fmt: skip

    dagrun, states, report = run("status")

    assert dagrun.state == "success", states
    after = relations(warehouse), {r: query(warehouse, f"select count(*) from {SCHEMA}.{r}")[0][0]
                                   for r in relations(warehouse)}  # fmt: skip
    assert after == before
    steps = steps_of(report)
    assert {
        steps[s]["status"] for s in ("clear_relations", "run_foundation", "run_configuration", "validate")
    } == {"skipped"}
    assert report["row_counts"]["stg_extra"] == 1
    assert report["row_counts"]["fct_users"] == 12


def test_error_check_fails_the_run_and_warn_check_only_reports(project, warehouse):
    write_checks(project, [{"name": "no_users_at_all", "severity": "warn",
                            "sql": "select count(*) from {{ schema }}.fct_users"}])  # fmt: skip
    dagrun, states, report = run("complete")
    assert dagrun.state == "success", states
    assert steps_of(report)["validate"]["status"] == "warn"
    assert "no_users_at_all=warn(12)" in steps_of(report)["validate"]["details"]

    write_checks(project, [{"name": "no_users_at_all", "severity": "error",
                            "sql": "select count(*) from {{ schema }}.fct_users"}])  # fmt: skip
    dagrun, states, report = run("quick")
    assert dagrun.state == "failed"
    assert states["validate"] == "failed" and states["report"] == "failed"
    assert "no_users_at_all" in steps_of(report)["validate"]["details"]


def test_missing_seed_file_is_reported_with_what_to_do(project, warehouse):
    (project / "seeds" / "raw_users.csv").unlink()
    dagrun, states, report = run("complete")
    assert dagrun.state == "failed"
    assert states["preflight"] == "failed"
    message = steps_of(report)["preflight"]["details"]
    assert "raw_users (seeds/raw_users.csv)" in message and "Restore" in message
    assert relations(warehouse) == {}, "nothing was changed"


def test_compile_error_is_reported_with_what_to_do(project, warehouse):
    model = project / "models" / "staging" / "stg_users.sql"
    model.write_text(model.read_text() + "\n{{ ref('no_such_model') }}\n")
    dagrun, states, report = run("complete")
    assert dagrun.state == "failed"
    message = steps_of(report)["preflight"]["details"]
    assert "dbt cannot compile project" in message and "no_such_model" in message
    assert "dbt parse" in message


def test_unreachable_database_is_reported_with_what_to_do(project, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DOWN", "postgres://nobody:nothing@127.0.0.1:1/nowhere")
    platform = yaml.safe_load((project / "platform.yml").read_text())
    (project / "platform.yml").write_text(yaml.safe_dump({**platform, "conn_id": "warehouse_down"}))
    dagrun, states, report = run("complete")
    assert dagrun.state == "failed"
    message = steps_of(report)["preflight"]["details"]
    assert "cannot reach the warehouse at 127.0.0.1:1/nowhere" in message
    assert "make run" in message


def test_locked_relation_names_the_blocking_session(project, warehouse):
    assert run("complete")[0].state == "success"
    holder = psycopg2.connect(warehouse_dsn())
    try:
        with holder.cursor() as cur:
            cur.execute(f"lock table {SCHEMA}.fct_users in access exclusive mode")
            cur.execute("select pg_backend_pid()")
            pid = cur.fetchone()[0]
            dagrun, states, report = run("complete")
    finally:
        holder.rollback()
        holder.close()
    assert dagrun.state == "failed"
    assert states["clear_relations"] == "failed"
    message = steps_of(report)["clear_relations"]["details"]
    assert f"locked by session pid {pid}" in message and "pg_terminate_backend" in message


def test_a_destructive_run_against_production_needs_its_name_typed(project, warehouse):
    assert run("complete")[0].state == "success"
    platform = yaml.safe_load((project / "platform.yml").read_text())
    (project / "platform.yml").write_text(yaml.safe_dump({**platform, "production": True}))
    before = relations(warehouse)

    dag = setup_dag()
    dagrun = dag.test(run_conf={"project": PROJECT, "mode": "complete", "confirm_production": ""})
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert dagrun.state == "failed" and states["preflight"] == "failed"
    report = next(t for t in dagrun.get_task_instances() if t.task_id == "report").xcom_pull(
        task_ids="report", key="report"
    )
    assert "targets production" in steps_of(report)["preflight"]["details"]
    assert relations(warehouse) == before, "nothing was changed"

    dagrun = dag.test(run_conf={"project": PROJECT, "mode": "complete", "confirm_production": PROJECT})
    assert dagrun.state == "success"
    dagrun = dag.test(run_conf={"project": PROJECT, "mode": "status", "confirm_production": ""})
    assert dagrun.state == "success", "a read-only report needs no confirmation"
