"""The build hands Cosmos' watcher parser only the dbt events it does something with
(watcher/producer.py: ``read_by_cosmos``), and the parser ends up with exactly what it records from
every event: the same node results, the same log lines. Real dbt against the real PostgreSQL, through
the producer of a real transformation DAG (Cosmos' own callback, registered by Cosmos).
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
from cosmos.operators._watcher import base as cosmos_parser

from include.dbt_platform.transformations.factory import build_transformation_dag
from include.dbt_platform.transformations.projects import load_project
from include.dbt_platform.transformations.watcher.producer import COSMOS_EVENT_CALLBACK, read_by_cosmos
from tests.harness import build_manifest, warehouse_dsn

NAME = "event_filter"


class RecordedXComs:
    """What the producer's task instance is handed by Cosmos' parser (its XComs), kept in memory."""

    def __init__(self) -> None:
        self.xcoms: dict = {}

    def xcom_push(self, key, value, **kwargs) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, key=None, **kwargs):
        return self.xcoms.get(key)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def write_project(root: Path) -> Path:
    """A seed, a model that works, one with a SQL error and one downstream of it (skipped by dbt for
    the upstream failure), and a model whose test fails."""
    project = root / NAME
    (project / "models").mkdir(parents=True)
    (project / "seeds").mkdir()
    (project / "dbt_project.yml").write_text(
        f"name: {NAME}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {NAME}\nmodels:\n  +materialized: table\n"
    )
    (project / "seeds" / "colours.csv").write_text("id,name\n1,red\n2,green\n")
    models = {
        "works": "select id, name from {{ ref('colours') }}\n",
        "broken": "selec 1 as id\n",
        "after_broken": "select id from {{ ref('broken') }}\n",
        "duplicated": "select 1 as id union all select 1\n",
    }
    for model, sql in models.items():
        (project / "models" / f"{model}.sql").write_text(sql)
    (project / "models" / "_models.yml").write_text(
        "version: 2\nmodels:\n  - name: duplicated\n    columns:\n      - name: id\n        data_tests: [unique]\n"
        "  - name: works\n    columns:\n      - name: id\n        data_tests: [not_null]\n"
    )
    (project / "platform.yml").write_text(f"schema: {NAME}\nexecution_mode: triggerer\n")
    build_manifest(project)
    return project


def write_profile(folder: Path) -> None:
    dsn = urlparse(warehouse_dsn())
    folder.mkdir()
    (folder / "profiles.yml").write_text(
        f"{NAME}:\n  target: t\n  outputs:\n    t:\n      type: postgres\n      host: {dsn.hostname}\n"
        f"      port: {dsn.port}\n      user: {dsn.username}\n      password: \"{{{{ env_var('DBT_ENV_SECRET_PW') }}}}\"\n"
        f"      dbname: {dsn.path.lstrip('/')}\n      schema: {NAME}\n      threads: 2\n"
    )


@pytest.fixture
def parser_log():
    lines = Lines()
    level = cosmos_parser.logger.level
    cosmos_parser.logger.setLevel(logging.INFO)
    cosmos_parser.logger.addHandler(lines)
    yield lines
    cosmos_parser.logger.removeHandler(lines)
    cosmos_parser.logger.setLevel(level)


def run_build(producer, project: Path, profiles: Path, ti: RecordedXComs) -> tuple[object, dict]:
    """The producer's ``run_dbt_runner`` outside a task (no recorder of its own): Cosmos registers its
    callback with the context given, and dbt builds the project for real."""
    context = {"ti": ti}
    command = [sys.executable, "build", "--profiles-dir", str(profiles), "--log-level-file", "none"]
    env = {"DBT_ENV_SECRET_PW": urlparse(warehouse_dsn()).password or ""}
    return producer.run_dbt_runner(command, env, str(project), context=context), context


@pytest.fixture
def producer(projects_dir: Path, tmp_path: Path, warehouse):
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {NAME} cascade")
    project = write_project(projects_dir)
    write_profile(tmp_path / "profiles")
    task = build_transformation_dag(load_project(project)).task_dict["dbt_producer_watcher"]
    yield task, project, tmp_path / "profiles"
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema if exists {NAME} cascade")


def test_cosmos_parser_records_the_same_from_the_events_it_is_handed_as_from_all(
    producer, parser_log, caplog
):
    task, project, profiles = producer
    every_event: list = []
    task._dbt_runner_callbacks = [lambda event: every_event.append(copy.deepcopy(event))]
    handed = RecordedXComs()
    with caplog.at_level(logging.INFO, logger="include.dbt_platform.transformations.watcher.producer"):
        result, context = run_build(task, project, profiles, handed)
    assert not result.success  # the SQL error and the failed test
    filtered_lines = list(parser_log.lines)

    # Cosmos registered its own callback after ours; it is the one that sees only what it reads.
    ours, cosmos_callback = task.__dict__["_dbt_runner_callbacks"]
    assert cosmos_callback.__qualname__ == COSMOS_EVENT_CALLBACK
    assert [getattr(cb, "_leaves_out", False) for cb in task._dbt_runner_callbacks] == [False, True]

    # The same events, every one of them handed to Cosmos' callback: it records the same. The
    # parser's own state from the first pass (bound into the callback) starts empty again.
    for state in ("test_results_per_model", "_upstream_failure_skipped_ids", "_model_outlet_uris"):
        if getattr(task, state, None) is not None:
            getattr(task, state).clear()
    handed_all = RecordedXComs()
    context["ti"] = handed_all
    parser_log.lines.clear()
    for event in every_event:
        cosmos_callback(event)
    assert handed.xcoms == handed_all.xcoms
    assert sorted(filtered_lines) == sorted(parser_log.lines)  # dbt's two threads interleave them

    # Every node's result is there, dbt's skip for the upstream failure recorded as a failure.
    statuses = {k.removesuffix("_status"): v for k, v in handed.xcoms.items() if k.endswith("_status")}
    results = {
        k: getattr(v, "value", v)
        for k, v in ((k, v["status"] if isinstance(v, dict) else v) for k, v in statuses.items())
    }
    assert results[f"model__{NAME}__works"] == "success", results
    assert results[f"model__{NAME}__broken"] == "error", results
    assert results[f"model__{NAME}__after_broken"] == "failed", results
    assert any("unique_duplicated" in k for k in handed.xcoms), sorted(handed.xcoms)
    assert any("Database Error in model broken" in line for line in filtered_lines), filtered_lines

    # Most events were never turned into JSON, and the task log says how many.
    kept = [e for e in every_event if read_by_cosmos(e)]
    assert len(kept) < len(every_event) / 2, (len(kept), len(every_event))
    assert (
        f"dbt events: {len(kept)} handed to Cosmos' watcher parser, {len(every_event) - len(kept)} debug"
        in caplog.text
    )


def test_while_cosmos_logs_debug_lines_every_event_is_handed(producer):
    task, project, profiles = producer
    every_event: list = []
    task._dbt_runner_callbacks = [every_event.append]
    debug = Lines()
    debug.setLevel(logging.DEBUG)
    level = cosmos_parser.logger.level
    cosmos_parser.logger.addHandler(debug)
    cosmos_parser.logger.setLevel(logging.DEBUG)
    try:
        run_build(task, project, profiles, RecordedXComs())
    finally:
        cosmos_parser.logger.setLevel(level)
        cosmos_parser.logger.removeHandler(debug)
    # Cosmos' parser writes a debug line for each event it parses: all of them reached it.
    parsed = [line for line in debug.lines if line.startswith("DEBUG dbt_log: ")]
    assert len(parsed) == len(every_event)
    assert not all(read_by_cosmos(e) for e in every_event)
