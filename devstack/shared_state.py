"""Where the platform's state lives in the local stack, and how Airflow is wired to it: OpenBao (every
connection, read through ``VaultBackend``) and the git server (projects' repositories, and the
registered-projects DAG bundle). Nothing of the sagas' or the transformations' is kept elsewhere on
this machine's disk (warehouse_setup's seed state and report excepted: docs/operations.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devstack.settings import StackSettings, airflow_user_password, role_for, role_password
from include.dbt_platform.config import PLATFORM_USER, get_settings

if TYPE_CHECKING:
    from devstack.airflow import AirflowTarget


VAULT_BACKEND = "airflow.providers.hashicorp.secrets.vault.VaultBackend"
# The connection of the platform's service account (include/dbt_platform/adapters/airflow_api.py).
# Components started here run with it set; dag.test() in the tests, with no api-server, without.
AIRFLOW_API_CONN_ID = "dbt_platform_airflow_api"


def secrets_backend_kwargs(stack: StackSettings, target: AirflowTarget) -> dict:
    """``VaultBackend``'s settings: OpenBao on loopback, the target's mount, and the path of a token
    that may only read (never the token itself: nothing secret in the environment)."""
    from devstack.openbao import token_file

    return {
        "url": stack.openbao_url,
        "auth_type": "token",
        "token_path": str(token_file(stack, target.secrets_mount)),
        "mount_point": target.secrets_mount,
        "connections_path": "connections",
        "variables_path": "variables",
        "config_path": None,
    }


def dag_bundles(stack: StackSettings, target: AirflowTarget) -> list[dict]:
    """The DAG bundles: the platform's own DAG files (this repository's dags/), and the registered
    projects, a versioned git bundle on the git server (every worker checks out the commit a run was
    parsed from; include/dbt_platform/transformations/bundle.py)."""
    from include.dbt_platform.transformations import bundle

    return [
        {
            "name": "dags-folder",
            "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
            "kwargs": {},
        },
        {
            "name": bundle.BUNDLE_NAME,
            "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
            "kwargs": {
                "git_conn_id": get_settings().git_conn_id,
                "repo_url": f"{stack.git_url}/{target.git_org}/{bundle.REPOSITORY}.git",
                "tracking_ref": "main",
                "refresh_interval": 30,
            },
        },
    ]


def prepare_services(stack: StackSettings, target: AirflowTarget) -> None:
    """OpenBao and the git server up; the target's secrets mount, policies and tokens; the platform's
    own connections in OpenBao (written with the administrator's token: the sagas' token cannot);
    what an older stack kept under ``.local/`` moved there once; the registered-projects bundle.
    The platform's own: ``platform`` and ``warehouse`` (least-privilege roles), ``platform_secrets``
    and ``platform_git``, and the service account on the target's REST API."""
    from devstack.git_server import git_password, git_up
    from devstack.migrate import migrate_local_state
    from devstack.openbao import bao_up, ensure_namespace
    from include.dbt_platform.adapters.git import LoopbackGitServer
    from include.dbt_platform.transformations import bundle

    settings = get_settings()
    git_up(stack)
    root = bao_up(stack)
    store, saga_token = ensure_namespace(stack, root, target.secrets_mount, settings.secrets_conn_id)
    host = LoopbackGitServer(f"{stack.git_url}/{target.git_org}", "dbt-platform", git_password(stack))
    connections = {
        settings.secrets_conn_id: {
            "conn_type": "vault", "host": "127.0.0.1", "port": stack.openbao_port,
            "schema": target.secrets_mount, "password": saga_token,
            "extra": {"auth_type": "token", "kv_engine_version": 2},
        },
        settings.git_conn_id: {
            "conn_type": "git", "host": f"{stack.git_url}/{target.git_org}", "login": "dbt-platform",
            "password": git_password(stack), "extra": {"provider": "loopback"},
        },
        # The platform's service account on this target's API (used where a component runs the tasks).
        AIRFLOW_API_CONN_ID: {
            "conn_type": "http", "host": "127.0.0.1", "port": target.api_port, "login": PLATFORM_USER,
            "password": airflow_user_password(stack, PLATFORM_USER),
        },
    }  # fmt: skip
    for conn_id, database in (
        (settings.platform_conn_id, target.platform_db),
        (settings.warehouse_conn_id, target.warehouse_db),
    ):
        role = role_for(database)
        connections[conn_id] = {
            "conn_type": "postgres", "host": "127.0.0.1", "port": stack.pg_port, "login": role,
            "password": role_password(stack, role), "schema": database,
        }  # fmt: skip
    for conn_id, entry in connections.items():
        store.set_platform_connection(conn_id, entry)
    bundle.ensure(host)
    migrate_local_state(target.state_dir, store, host)
