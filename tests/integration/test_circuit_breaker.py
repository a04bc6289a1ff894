"""The circuit breaker, with a real warehouse server that really stops: project databases are made on
a second PostgreSQL cluster of their own (``DBT_PLATFORM_PROJECTS_CONN_ID``), which the test stops
and starts again while the platform database (journal, registry, breaker) stays up."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import psycopg2
import pytest

from devstack.postgres import pg_stop, pg_up
from devstack.settings import pg_dir_for, role_password
from include.dbt_platform.adapters.breaker import breaker
from include.dbt_platform.saga import journal as j
from tests.harness import STACK, TEST_ROOT
from tests.saga_support import inventory, journal, request, run_saga, undo_saga, uniq

SERVER = replace(
    STACK,
    local_dir=TEST_ROOT / "projects_server",
    pg_port=STACK.pg_port + 3,
    pg_dir=pg_dir_for(TEST_ROOT / "projects_server", STACK.pg_os_user),
)


@pytest.fixture
def projects_server(monkeypatch: pytest.MonkeyPatch):
    pg_up(SERVER, ("platform",))  # its own least-privilege roles; the platform role owns `platform`
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": SERVER.pg_port, "login": "dbt_platform",
                  "password": role_password(SERVER, "dbt_platform"), "schema": "platform"}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_PROJECTS_SERVER", json.dumps(connection))
    monkeypatch.setenv("DBT_PLATFORM_PROJECTS_CONN_ID", "projects_server")
    monkeypatch.setenv("DBT_PLATFORM_BREAKER_FAILURES", "2")
    monkeypatch.setenv("DBT_PLATFORM_BREAKER_PROBE_SECONDS", "3600")
    breaker().succeeded("warehouse")  # a closed breaker to start from
    yield SERVER
    breaker().succeeded("warehouse")
    # A second server left running would outlive the suite (`make stop` knows only the stack's).
    pg_stop(SERVER)


class Said(logging.Handler):
    """The breaker's log lines (Airflow's logging setup does not hand them to pytest's capture)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def databases_on(server) -> set[str]:
    conn = psycopg2.connect(host="127.0.0.1", port=server.pg_port, dbname="platform", user="dbt_platform",
                            password=role_password(server, "dbt_platform"))  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute("select datname from pg_database where datname like 'dbt\\_%'")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


def test_with_the_warehouse_stopped_the_breaker_opens_refuses_fast_and_closes_when_it_is_back(
    saga_dag, projects_server, monkeypatch
):
    said = Said()
    logging.getLogger("include.dbt_platform.adapters.breaker").addHandler(said)
    first = uniq("cb")
    run, states, first_saga = run_saga(saga_dag, request(first, environments=["dev"]))
    assert run.state == "success", states
    assert f"dbt_{first}" in databases_on(projects_server), "made on the projects server"
    assert f"dbt_{first}" not in inventory()["databases"], "not on the platform's own"

    pg_stop(projects_server)
    # A saga finds the warehouse unreachable: each attempt counts; the second opens the breaker and
    # the third is refused at once, with nothing made.
    run, states, saga_id = run_saga(saga_dag, request(uniq("cb"), environments=["dev"]))
    assert run.state == "failed"
    step = journal().step(saga_id, "validate_request")
    assert step.attempts == 3 and "CircuitOpen" in step.error, step.error
    assert journal().get(saga_id).state == j.COMPENSATED
    assert breaker().state("warehouse") == {"service": "warehouse", "open": True, "failures": 2}
    assert any("circuit breaker for warehouse OPEN: 2 failures" in line for line in said.lines), "logged"

    # The next request is refused fast: one attempt, a clear reason, nothing created.
    before = inventory()
    started = time.monotonic()
    run, states, saga_id = run_saga(saga_dag, request(uniq("cb"), environments=["dev"]))
    assert run.state == "failed" and states["create_project"] == "upstream_failed"
    step = journal().step(saga_id, "validate_request")
    assert step.attempts == 1, "no retry while the breaker is open"
    assert "the warehouse has been unreachable" in step.error and "nothing was created" in step.error
    assert time.monotonic() - started < 60
    assert inventory() == before

    # The warehouse is back; a probe is let through (the probe interval has passed) and closes it.
    pg_up(projects_server, ("platform",))
    monkeypatch.setenv("DBT_PLATFORM_BREAKER_PROBE_SECONDS", "0")
    last = uniq("cb")
    run, states, last_saga = run_saga(saga_dag, request(last, environments=["dev"]))
    assert run.state == "success", states
    assert breaker().state("warehouse") == {"service": "warehouse", "open": False, "failures": 0}
    assert any("circuit breaker for warehouse CLOSED" in line for line in said.lines)
    assert {f"dbt_{first}", f"dbt_{last}"} <= databases_on(projects_server)

    for saga in (last_saga, first_saga):  # take them down while the projects server is configured
        undo_saga(saga)
    assert not {f"dbt_{first}", f"dbt_{last}"} & databases_on(projects_server)
