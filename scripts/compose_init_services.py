"""docker-compose.yaml's setup of OpenBao and the git server (run by ``airflow-init`` at every ``up``).

OpenBao: initialised once (one key share; the unseal key and root token go to the ``openbao-keys``
volume, 0600, never to the environment), unsealed, the KV v2 mount ``airflow``, the two policies
(include/dbt_platform/adapters/secrets.py), Airflow's read-only token written to the
``openbao-token`` volume (mounted read-only into every Airflow service: VaultBackend's
``token_path``), and the platform's own connections (written with the root token). The git server:
the registered-projects bundle repository and its DAG files. A production deployment auto-unseals
OpenBao with a KMS and keeps no root token; the local stack does the same as this (devstack/).

    python scripts/compose_init_services.py   # environment: the passwords compose passes in
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hvac

from include.dbt_platform.adapters.git import LoopbackGitServer
from include.dbt_platform.adapters.secrets import VaultConnectionStore, policies
from include.dbt_platform.transformations import bundle

OPENBAO = os.environ.get("OPENBAO_URL", "http://openbao:8200")
GIT = os.environ.get("GIT_SERVER_URL", "http://git-server:8000")
KEYS = Path("/run/openbao-keys/init.json")
TOKEN = Path("/run/openbao-token/airflow.token")
MOUNT = "airflow"


def private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def openbao() -> hvac.Client:
    client = hvac.Client(url=OPENBAO, timeout=10)
    for _ in range(60):
        try:
            initialised = client.sys.is_initialized()
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(1)
    else:
        raise SystemExit(f"OpenBao at {OPENBAO} did not answer")
    if not initialised:
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        private(
            KEYS, json.dumps({"unseal_key": result["keys_base64"][0], "root_token": result["root_token"]})
        )
    keys = json.loads(KEYS.read_text())
    if client.sys.is_sealed():
        client.sys.submit_unseal_key(keys["unseal_key"])
    client.token = keys["root_token"]
    while getattr(client.sys.read_health_status(method="GET"), "status_code", 200) != 200:
        time.sleep(0.5)
    return client


def main() -> None:
    root = openbao()
    if f"{MOUNT}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=MOUNT, options={"version": "2"})
    for name, rules in policies(MOUNT).items():
        root.sys.create_or_update_policy(name, rules)
    store = VaultConnectionStore(root, MOUNT)
    current = (store.entry("platform_secrets") or {}).get("password")
    try:
        root.auth.token.lookup(current or "none")
    except hvac.exceptions.VaultError:
        current = None
    saga_token = (
        current
        or root.auth.token.create(policies=[f"{MOUNT}-saga"], no_parent=True, period="768h")["auth"][
            "client_token"
        ]
    )
    reader = root.auth.token.create(policies=[f"{MOUNT}-airflow"], no_parent=True, period="768h")
    private(TOKEN, reader["auth"]["client_token"])
    os.chmod(TOKEN, 0o640)  # read by the Airflow user (group 0), never by anyone else
    env = os.environ
    for conn_id, entry in {
        "platform": {"conn_type": "postgres", "host": "postgres", "port": 5432, "login": "dbt_platform",
                     "password": env["PLATFORM_DB_PASSWORD"], "schema": "platform"},
        "warehouse": {"conn_type": "postgres", "host": "postgres", "port": 5432, "login": "warehouse",
                      "password": env["WAREHOUSE_DB_PASSWORD"], "schema": "warehouse"},
        "platform_secrets": {"conn_type": "vault", "host": "openbao", "port": 8200, "schema": MOUNT,
                             "password": saga_token, "extra": {"auth_type": "token", "kv_engine_version": 2}},
        "platform_git": {"conn_type": "git", "host": f"{GIT}/platform", "login": "dbt-platform",
                         "password": env["GIT_PASSWORD"], "extra": {"provider": "loopback"}},
        "dbt_platform_airflow_api": {"conn_type": "http", "host": "airflow-apiserver", "port": 8080,
                                     "login": "dbt-platform", "password": env["AIRFLOW_PLATFORM_PASSWORD"]},
    }.items():  # fmt: skip
        store.set_platform_connection(conn_id, entry)
    bundle.ensure(LoopbackGitServer(f"{GIT}/platform", "dbt-platform", env["GIT_PASSWORD"]))
    print("OpenBao unsealed, connections written, registered-projects bundle ready")


if __name__ == "__main__":
    main()
