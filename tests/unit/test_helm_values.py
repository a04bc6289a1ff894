"""docs/helm-values.yaml, the Kubernetes shape of the distributed stack (docs/kubernetes.md): it parses,
it says what `make run-distributed` runs, and it ships the same recovery settings. No cluster and no
`helm template` here (neither is installed): this checks the file, not a deployment."""

from __future__ import annotations

import json

import pytest
import yaml

from devstack.distributed import (
    PARALLELISM,
    RECOVERY_SETTINGS,
    SCHEDULERS,
    TRIGGERERS,
    WORKER_CONCURRENCY,
    WORKERS,
)
from include.dbt_platform.config import REPO_ROOT

VALUES = REPO_ROOT / "docs" / "helm-values.yaml"


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_the_same_topology_as_the_distributed_profile(values):
    assert values["executor"] == "CeleryExecutor"
    assert values["scheduler"]["replicas"] == len(SCHEDULERS) == 2
    assert values["triggerer"]["replicas"] == len(TRIGGERERS) == 2
    assert values["workers"]["replicas"] == len(WORKERS) == 2
    assert values["dagProcessor"]["enabled"] is True
    assert values["redis"]["enabled"] is True and values["redis"]["persistence"]["enabled"] is True
    assert values["config"]["core"]["parallelism"] == str(PARALLELISM)
    assert values["config"]["celery"]["worker_concurrency"] == str(WORKER_CONCURRENCY)


def test_the_triggerer_is_stock_and_gets_the_patch_from_the_image(values):
    # No command override: the chart's `airflow triggerer`. The chart's own airflow_local_settings
    # would shadow plugins/airflow_local_settings.py (the patch), so it is off.
    assert "command" not in values["triggerer"] and "args" not in values["triggerer"]
    assert values["airflowLocalSettings"] is None
    assert (REPO_ROOT / "plugins" / "airflow_local_settings.py").exists()
    assert {"name": "PYTHONPATH", "value": "/opt/airflow"} in values["env"]


def test_the_same_recovery_settings(values):
    config = values["config"]
    for key, value in RECOVERY_SETTINGS.items():
        _, section, option = key.lower().split("__")
        assert config[section][option] == value, key


def test_secrets_backend_and_dag_bundle(values):
    secrets = values["config"]["secrets"]
    assert secrets["backend"] == "airflow.providers.hashicorp.secrets.vault.VaultBackend"
    kwargs = json.loads(secrets["backend_kwargs"])
    assert kwargs["auth_type"] == "token" and kwargs["token_path"].startswith("/opt/airflow/secrets/")
    assert any(
        m["mountPath"] == "/opt/airflow/secrets/openbao" and m["readOnly"] for m in values["volumeMounts"]
    )
    bundles = json.loads(values["config"]["dag_processor"]["dag_bundle_config_list"])
    assert {b["classpath"] for b in bundles} == {"airflow.providers.git.bundles.git.GitDagBundle"}
    named = {b["name"]: b["kwargs"] for b in bundles}
    assert named["dbt-platform"]["subdir"] == "dags"
    # The projects the sagas created: the same bundle and connection as docker-compose.yaml.
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
    env = compose["x-airflow-common"]["environment"]
    composed = {
        b["name"]: b["kwargs"] for b in json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    }
    assert named["registered_projects"]["git_conn_id"] == composed["registered_projects"]["git_conn_id"]
    assert named["registered_projects"]["repo_url"].endswith("/platform/dbt-platform-projects.git")
    assert {k["git_conn_id"] for k in named.values()} == {"platform_git"}
    assert values["dags"]["gitSync"]["enabled"] is False


def test_no_secret_in_the_file(values):
    # Every secret comes from a Kubernetes Secret by name; none is written here.
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert not values.get(key), key
    assert values["data"]["metadataSecretName"] and values["data"]["brokerUrlSecretName"]
    assert "metadataConnection" not in values["data"] and not values["data"].get("brokerUrl")
    for name in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[name], name
    assert values["redis"]["passwordSecretName"]
    telemetry = {e["name"]: e["value"] for e in values["env"]}
    assert telemetry["AIRFLOW__COSMOS__ENABLE_TELEMETRY"] == "False" and telemetry["DO_NOT_TRACK"] == "true"
