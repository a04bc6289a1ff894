"""The local stack's StatsD -> Prometheus exporter, with the project's mapping file, over real sockets:
what the saga and Airflow send becomes the labelled metrics docs/observability.md lists."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from devstack.statsd_exporter import Exporter, Registry, load_rules, parse_line
from include.dbt_platform.config import REPO_ROOT

MAPPING = REPO_ROOT / "config" / "statsd_mapping.yml"
SAGA = "airflow.dbt_platform.saga.dbt_project_create"


@pytest.fixture
def exporter():
    running = Exporter(("127.0.0.1", 0), ("127.0.0.1", 0), Registry(load_rules(MAPPING)))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    yield running
    running.stop.set()
    thread.join(timeout=5)


def send(exporter: Exporter, *lines: str) -> None:
    udp, _ = exporter.addresses
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto("\n".join(lines).encode(), udp)


def scrape(exporter: Exporter, until: str, timeout: float = 5) -> dict[str, float]:
    _, (host, port) = exporter.addresses
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        samples = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        if until in samples or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_saga_metrics_become_labelled_prometheus_metrics(exporter):
    send(
        exporter,
        f"{SAGA}.started:1|c",
        f"{SAGA}.started:1|c",
        f"{SAGA}.active:2|g",
        f"{SAGA}.step.provision_database.succeeded:1|c",
        f"{SAGA}.step.provision_database.duration:1500|ms",
        f"{SAGA}.compensation.create_project.compensated:1|c",
        f"{SAGA}.compensation.create_project.duration:20|ms",
        f"{SAGA}.compensated:1|c",
        f"{SAGA}.duration:42000|ms",
    )
    got = scrape(exporter, until='dbt_platform_saga_duration_seconds_count{saga="dbt_project_create"}')
    assert got['dbt_platform_sagas_started_total{saga="dbt_project_create"}'] == 2
    assert got['dbt_platform_sagas_active{saga="dbt_project_create"}'] == 2
    step = 'saga="dbt_project_create",step="provision_database"'
    assert got[f'dbt_platform_saga_steps_total{{outcome="succeeded",{step}}}'] == 1
    # a timer in milliseconds is observed in seconds, into the mapping's buckets
    assert got[f"dbt_platform_saga_step_duration_seconds_sum{{{step}}}"] == 1.5
    assert got[f'dbt_platform_saga_step_duration_seconds_bucket{{{step},le="1.0"}}'] == 0
    assert got[f'dbt_platform_saga_step_duration_seconds_bucket{{{step},le="2.5"}}'] == 1
    assert got[f'dbt_platform_saga_step_duration_seconds_bucket{{{step},le="+Inf"}}'] == 1
    comp = 'saga="dbt_project_create",step="create_project"'
    assert got[f'dbt_platform_saga_compensations_total{{outcome="compensated",{comp}}}'] == 1
    assert got[f"dbt_platform_saga_compensation_duration_seconds_count{{{comp}}}"] == 1
    assert got['dbt_platform_sagas_finished_total{saga="dbt_project_create",state="compensated"}'] == 1
    assert got['dbt_platform_saga_duration_seconds_sum{saga="dbt_project_create"}'] == 42


def test_airflow_metrics_keep_their_ids_as_labels_and_the_rest_keep_their_names(exporter):
    send(
        exporter,
        "airflow.ti.finish.inventory_transforms.stg_users_model_build.success:1|c",
        "airflow.dagrun.duration.success.inventory_transforms:12000|ms",
        "airflow.pool.open_slots.sagas:16|g",
        "airflow.scheduler_heartbeat:1|c|@0.5",
        "airflow.executor.running_tasks:3|g",
        "airflow.executor.running_tasks:-1|g",
        "not a statsd line",
    )
    got = scrape(exporter, until="airflow_executor_running_tasks")
    ti = 'airflow_ti_finish_total{dag_id="inventory_transforms",state="success",task_id="stg_users_model_build"}'
    assert got[ti] == 1
    assert got['airflow_dagrun_duration_seconds_sum{dag_id="inventory_transforms",state="success"}'] == 12
    assert got['airflow_pool_open_slots{pool="sagas"}'] == 16
    assert got["airflow_scheduler_heartbeat"] == 2, "a sampled counter counts 1/rate"
    assert got["airflow_executor_running_tasks"] == 2, "a gauge takes +/- deltas"


def test_a_name_taken_by_another_type_is_dropped_and_counted(exporter):
    send(exporter, "airflow.thing:1|c")
    scrape(exporter, until="airflow_thing")
    send(exporter, "airflow.thing:5|g")
    got = scrape(exporter, until="statsd_exporter_conflicts_total")
    deadline = time.monotonic() + 5
    while got["statsd_exporter_conflicts_total"] < 1 and time.monotonic() < deadline:
        got = scrape(exporter, until="airflow_thing")
    assert got["statsd_exporter_conflicts_total"] == 1 and got["airflow_thing"] == 1


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        ("a.b:3|c|@0.1", ("a.b", 30.0, "c", {}, False)),
        ("a.b:-2|g", ("a.b", -2.0, "g", {}, True)),
        ("a.b:7|ms|#dag_id:x,state:ok", ("a.b", 7.0, "ms", {"dag_id": "x", "state": "ok"}, False)),
        ("a.b|c", None),
        ("a.b:x|c", None),
    ],
)
def test_statsd_lines(line, parsed):
    assert parse_line(line) == parsed
