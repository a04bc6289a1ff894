"""docker-compose.yaml: valid against the Compose specification, and wired for these DAGs.

No Docker engine runs here, so the file is checked statically: the schema (vendored in
tests/schemas/, from the compose-spec project) and what the DAGs need from each service.
"""

from __future__ import annotations

import json
import os

import jsonschema
import pytest
import yaml

from devstack.airflow import AIRFLOW_COMPONENTS
from devstack.distributed import (
    PARALLELISM,
    RECOVERY_SETTINGS,
    SCHEDULERS,
    TRIGGERERS,
    WORKER_CONCURRENCY,
    WORKERS,
)
from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.sagas import lineage_emission_policy

COMPOSE = REPO_ROOT / "docker-compose.yaml"
SCHEMA = REPO_ROOT / "tests" / "schemas" / "compose-spec.json"
PROJECT_MOUNTS = {
    "/opt/airflow/dags",
    "/opt/airflow/plugins",
    "/opt/airflow/include",
    "/opt/airflow/dbt_projects",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mount_target(volume: str) -> str:
    """The container path of a short-syntax volume (`SRC:TARGET[:MODE]`; SRC may hold `${X:-.}`)."""
    parts = volume.rsplit(":", 2)
    return parts[-2] if parts[-1] in {"ro", "rw"} else volume.rsplit(":", 1)[-1]


def airflow_services(compose: dict) -> dict:
    return {name: svc for name, svc in compose["services"].items() if name.startswith("airflow-")}


def test_valid_against_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose, schema)


def test_schema_rejects_an_invalid_file(compose):
    # The validation above must be able to fail.
    broken = {**compose, "services": {**compose["services"], "redis": {"image": "redis", "ports": "6379"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_official_shape_celery_redis_postgres(compose):
    services = compose["services"]
    assert {
        "postgres",
        "redis",
        "airflow-apiserver",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
    } <= set(services)
    commands = [svc.get("command") for svc in airflow_services(compose).values()]
    # The same services as `make run-distributed` (devstack/distributed.py).
    assert commands.count("scheduler") == len(SCHEDULERS) == 2, "two schedulers for HA"
    assert commands.count("celery worker") == len(WORKERS) == 2, "two workers"
    assert commands.count("triggerer") == len(TRIGGERERS) == 2, "two triggerers, stock"
    assert sum(c == "dag-processor" for c in commands) == 1 and sum(c == "api-server" for c in commands) == 1
    for name, svc in airflow_services(compose).items():
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert (
            env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
            or "@redis:" in env["AIRFLOW__CELERY__BROKER_URL"]
        )
        assert "@postgres/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_every_airflow_service_mounts_and_configures_the_project(compose):
    for name, svc in airflow_services(compose).items():
        targets = {mount_target(volume) for volume in svc["volumes"]}
        assert PROJECT_MOUNTS <= targets, (name, PROJECT_MOUNTS - targets)
        env = svc["environment"]
        assert env["PYTHONPATH"] == "/opt/airflow"
        assert env["DBT_PLATFORM_PROJECTS_DIR"] == "/opt/airflow/dbt_projects"
        assert not [k for k in env if k.startswith("AIRFLOW_CONN_")], "connections live in OpenBao"
        for key in ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__WORKERS__SECRETS_BACKEND"):
            assert env[key] == "airflow.providers.hashicorp.secrets.vault.VaultBackend", (name, key)
            kwargs = json.loads(env[f"{key}_KWARGS"])
            assert kwargs["url"] == "http://openbao:8200" and "token" not in kwargs, (
                "a token path, never a token"
            )
            assert any(mount_target(v) == os.path.dirname(kwargs["token_path"]) for v in svc["volumes"])
        bundles = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
        assert [b["name"] for b in bundles] == ["dags-folder", "registered_projects"]
        assert bundles[1]["kwargs"]["repo_url"].startswith("http://git-server:8000/")
        assert env["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] == "False"
        assert env["DO_NOT_TRACK"] == "true"


def test_published_ports_bind_loopback_only(compose):
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_referenced_files_exist(compose):
    assert (REPO_ROOT / "Dockerfile").exists()
    mounts = compose["services"]["postgres"]["volumes"]
    init_sql = [m.split(":")[0] for m in mounts if m.startswith("./")]  # plain relative sources
    assert init_sql and all((REPO_ROOT / path).exists() for path in init_sql)
    init = (REPO_ROOT / init_sql[0]).read_text()
    assert "CREATE DATABASE warehouse OWNER warehouse" in init
    assert "CREATE ROLE dbt_platform LOGIN CREATEDB CREATEROLE" in init, "the sagas' role: no superuser"
    assert "FROM PUBLIC" in init


SECRETS = ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "PLATFORM_DB_PASSWORD", "WAREHOUSE_DB_PASSWORD",
           "REDIS_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "AIRFLOW_API_SECRET_KEY",
           "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_PLATFORM_PASSWORD", "GIT_PASSWORD")  # fmt: skip


def test_no_secret_has_a_default_and_redis_requires_a_password(compose):
    import re

    text = COMPOSE.read_text()
    # Compose's own interpolation (not `$${...}`, which the container's shell expands).
    uses = re.findall(r"(?<!\$)\$\{([A-Z_]+)(:?[-?][^}]*)?\}", text)
    for name in SECRETS:
        forms = {form for used, form in uses if used == name}
        assert forms, f"{name} is not used"
        assert all(form.startswith(":?") for form in forms), f"{name} has a default: {forms}"
    assert "changeme" not in text
    redis = compose["services"]["redis"]
    assert "--requirepass" in redis["command"]
    broker = compose["x-airflow-common"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker.startswith("redis://:${REDIS_PASSWORD:?"), broker
    for name, svc in airflow_services(compose).items():
        env = svc["environment"]
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager"), ("real roles", name)
    # The platform's own connections are written into OpenBao by airflow-init, least privilege kept.
    init = (REPO_ROOT / "scripts" / "compose_init_services.py").read_text()
    assert '"login": "dbt_platform"' in init and '"login": "warehouse"' in init
    assert '"dbt_platform_airflow_api"' in init and 'env["AIRFLOW_PLATFORM_PASSWORD"]' in init


def test_openbao_and_the_git_server_are_internal_and_keep_their_data_in_volumes(compose):
    services = compose["services"]
    assert services["openbao"]["command"] == "server" and "ports" not in services["openbao"]
    config = json.loads(services["openbao"]["environment"]["BAO_LOCAL_CONFIG"])
    assert "raft" in config["storage"]
    git = services["git-server"]
    assert "ports" not in git and "devstack.git_server" in git["command"][-1]
    assert (REPO_ROOT / "devstack" / "git_server.py").exists()
    assert "python /opt/airflow/scripts/compose_init_services.py" in services["airflow-init"]["command"][-1]


def test_the_triggerer_is_stock_and_finds_the_patch_in_the_plugins_folder(compose):
    # As the local stack (devstack/airflow.py): `airflow triggerer`, patched by the plugins folder's
    # airflow_local_settings.py, which imports include.* (so /opt/airflow is on PYTHONPATH).
    # Both triggerers of the distributed deployment.
    for name in ("airflow-triggerer", "airflow-triggerer-2"):
        service = compose["services"][name]
        assert service["command"] == "triggerer", name
        assert any(v.endswith("/plugins:/opt/airflow/plugins") for v in service["volumes"]), name
        assert "/opt/airflow" in service["environment"]["PYTHONPATH"].split(":"), name
    assert AIRFLOW_COMPONENTS["triggerer"][0] == "triggerer"
    assert (REPO_ROOT / "plugins" / "airflow_local_settings.py").exists()


def test_metrics_and_lineage_are_switched_on(compose):
    """StatsD to the statsd-exporter service (the mapping the local stack reads too), Prometheus
    scraping it, OpenLineage to a file beside the logs."""
    services = compose["services"]
    for name, svc in airflow_services(compose).items():
        env = svc["environment"]
        assert env["AIRFLOW__METRICS__STATSD_ON"] == "true", name
        assert env["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter", name
        transport = json.loads(env["AIRFLOW__OPENLINEAGE__TRANSPORT"])
        assert transport["type"] == "file" and transport["log_file_path"].startswith("/opt/airflow/logs/")
        # The sagas' tasks emit no task events: the same rule the local stack sets.
        assert json.loads(env["AIRFLOW__OPENLINEAGE__EMISSION_POLICY"]) == json.loads(
            lineage_emission_policy()
        )
    exporter = services["statsd-exporter"]
    assert exporter["image"].startswith("prom/statsd-exporter:")
    mapping = next(v for v in exporter["volumes"] if v.endswith(":ro") and "statsd_mapping.yml" in v)
    assert (REPO_ROOT / mapping.split(":")[0]).exists()
    assert f"--statsd.mapping-config={mount_target(mapping)}" in exporter["command"]
    prometheus = yaml.safe_load((REPO_ROOT / "config" / "prometheus.yml").read_text())
    (targets,) = [c["static_configs"][0]["targets"] for c in prometheus["scrape_configs"]]
    assert targets == ["statsd-exporter:9102"]
    # airflow-init makes the lineage and trace folders (the file transport does not) in the shared logs.
    init = services["airflow-init"]
    assert any(mount_target(v) == "/opt/airflow/logs" for v in init["volumes"])
    assert "mkdir -p /opt/airflow/logs/lineage /opt/airflow/logs/traces" in "\n".join(init["command"])


def test_the_same_recovery_settings_as_the_distributed_profile(compose):
    # What makes a lost scheduler, worker or triggerer cost under a minute (make chaos measures it):
    # compose ships exactly what the local distributed profile runs.
    env = compose["x-airflow-common"]["environment"]
    for key, value in RECOVERY_SETTINGS.items():
        assert str(env.get(key)) == value, key
    assert env["AIRFLOW__CORE__PARALLELISM"] == str(PARALLELISM)
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == str(WORKER_CONCURRENCY)
    assert int(env["AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT"]) <= 60


def test_redis_keeps_queued_tasks_across_a_restart(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(mount_target(v) == "/data" for v in redis["volumes"]), (
        "the append-only file outlives the container"
    )


def test_each_worker_is_its_own_host(compose):
    workers = [svc for svc in airflow_services(compose).values() if svc.get("command") == "celery worker"]
    assert len({svc["hostname"] for svc in workers}) == len(workers) == 2
