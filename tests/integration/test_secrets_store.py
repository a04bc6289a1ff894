"""The connection store against a real OpenBao, in a mount of its own for each test: what it promises
(an entry records its saga; nobody else's entry is overwritten or removed; retries are idempotent;
a removal leaves no old version) and what each token may do (the sagas' writes only the projects'
connections; Airflow's only reads them, never the rotations' kept passwords)."""

from __future__ import annotations

import threading
import uuid

import hvac
import pytest

from devstack.openbao import ensure_namespace, root_client, token_file
from include.dbt_platform import boundaries
from include.dbt_platform.adapters.secrets import VaultConnectionStore
from include.dbt_platform.errors import Conflict, PermissionDenied
from tests.harness import STACK


@pytest.fixture
def mount():
    """A fresh KV mount with the platform's policies and tokens; removed afterwards."""
    root = root_client(STACK)
    name = f"airflow_store_{uuid.uuid4().hex[:8]}"
    admin, saga_token = ensure_namespace(STACK, root, name, "platform_secrets")
    reader_token = token_file(STACK, name).read_text().strip()
    yield name, admin, saga_token, reader_token
    root.sys.disable_secrets_engine(name)
    for token in (saga_token, reader_token):
        root.auth.token.revoke(token)
    token_file(STACK, name).unlink()
    for policy in (f"{name}-airflow", f"{name}-saga"):
        root.sys.delete_policy(policy)


def store_with(token: str, mount: str) -> VaultConnectionStore:
    return VaultConnectionStore(hvac.Client(url=STACK.openbao_url, token=token), mount)


def put(store, conn_id: str, saga_id: str, password: str = "pw-one-two-three") -> None:
    store.put(conn_id, saga_id=saga_id, host="127.0.0.1", port=5432, login="r", password=password,
              database="db", schema="s")  # fmt: skip


def versions(admin: VaultConnectionStore, path: str) -> int:
    meta = admin.kv.read_secret_metadata(path=path, mount_point=admin.mount)
    return int(meta["data"]["current_version"])


def test_the_store_never_overwrites_or_removes_an_entry_it_did_not_create(mount):
    name, admin, saga_token, _ = mount
    admin.set_platform_connection("platform", {"conn_type": "postgres", "password": "platform-pw"})
    saga = store_with(saga_token, name)
    put(saga, "dbt_sales_dev", "saga-a")
    put(saga, "dbt_sales_dev", "saga-a")  # a retry of the same saga: no new version
    assert versions(admin, "connections/dbt_sales_dev") == 1
    put(saga, "dbt_sales_dev", "saga-a", password="rotated-password")  # the same saga again: fine
    with pytest.raises(Conflict, match="not made by this saga"):
        put(saga, "dbt_sales_dev", "saga-b")
    with pytest.raises(Conflict, match="belongs to saga"):
        admin.set_platform_connection("dbt_sales_dev", {"conn_type": "postgres"})
    assert not saga.delete("dbt_sales_dev", "saga-b")
    with pytest.raises(PermissionDenied, match="permission denied"):
        saga.delete("platform", "saga-b")  # the sagas' token may not even read it
    assert admin.entry("dbt_sales_dev")["password"] == "rotated-password"
    assert admin.entry("dbt_sales_dev")["extra"]["created_by_saga"] == "saga-a"
    assert admin.entry("platform")["password"] == "platform-pw"
    # A removal by its saga takes every version with it.
    assert saga.delete("dbt_sales_dev", "saga-a") and admin.conn_ids() == ["platform"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        admin.kv.read_secret_metadata(path="connections/dbt_sales_dev", mount_point=name)


def test_each_token_can_do_only_its_part(mount):
    name, admin, saga_token, reader_token = mount
    admin.set_platform_connection("platform", {"conn_type": "postgres", "password": "platform-pw"})
    saga, reader = store_with(saga_token, name), store_with(reader_token, name)
    # The sagas' token: never the platform's own connections, nor names that are not a project's.
    with pytest.raises(PermissionDenied):
        saga.set_platform_connection("platform", {"conn_type": "postgres", "password": "mine now"})
    with pytest.raises(PermissionDenied):
        put(saga, "warehouse", "saga-a")
    with pytest.raises(PermissionDenied):
        saga.entry("platform")
    put(saga, "dbt_sales_dev", "saga-a")
    saga.rotate("dbt_sales_dev", created_by="saga-a", saga_id="saga-r", password="new-password-1")
    # Airflow's token reads connections (what VaultBackend does), writes nothing, never a kept password.
    assert reader.entry("dbt_sales_dev")["password"] == "new-password-1"
    assert reader.entry("platform")["password"] == "platform-pw"
    with pytest.raises(PermissionDenied):
        put(reader, "dbt_other_dev", "saga-x")
    with pytest.raises(PermissionDenied):
        reader.rotation_ids()
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.kv.read_secret_version(path="rotations/dbt_sales_dev", mount_point=name)


def test_two_sagas_racing_for_one_entry_exactly_one_wins(mount):
    name, admin, saga_token, _ = mount
    outcomes: dict[str, str] = {}
    barrier = threading.Barrier(8)

    def race(saga_id: str) -> None:
        store = store_with(saga_token, name)
        barrier.wait()
        try:
            put(store, "dbt_race_dev", saga_id, password=f"pw-of-{saga_id}")
            outcomes[saga_id] = "won"
        except Conflict:
            outcomes[saga_id] = "lost"

    threads = [threading.Thread(target=race, args=(f"saga-{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [s for s, o in outcomes.items() if o == "won"]
    assert len(winners) == 1 and len(outcomes) == 8, outcomes
    assert admin.entry("dbt_race_dev")["password"] == f"pw-of-{winners[0]}"


def test_a_rotation_keeps_the_previous_password_until_it_completes_or_is_undone(mount):
    name, admin, saga_token, _ = mount
    saga = store_with(saga_token, name)
    put(saga, "dbt_rot_dev", "maker", password="first-password")
    with pytest.raises(Conflict):
        saga.rotate("dbt_rot_dev", created_by="someone-else", saga_id="rot-1", password="x-x-x-x-x")
    saga.rotate("dbt_rot_dev", created_by="maker", saga_id="rot-1", password="second-password")
    saga.rotate("dbt_rot_dev", created_by="maker", saga_id="rot-1", password="third-password")  # a retry
    with pytest.raises(Conflict, match="being rotated by saga rot-1"):
        saga.rotate("dbt_rot_dev", created_by="maker", saga_id="rot-2", password="x-x-x-x-x")
    assert saga.undo_rotation("dbt_rot_dev", "rot-2") is None
    assert saga.undo_rotation("dbt_rot_dev", "rot-1") == "first-password"
    assert admin.entry("dbt_rot_dev")["password"] == "first-password"
    saga.finish_rotation("dbt_rot_dev", "rot-1")
    assert admin.rotation_ids() == []
    # A crash between keeping the old password and storing the new one: the retry finishes it.
    crashed = []

    def crash(label: str) -> None:
        crashed.append(label)
        raise RuntimeError(label)

    with boundaries.watching(crash), pytest.raises(RuntimeError):
        saga.rotate("dbt_rot_dev", created_by="maker", saga_id="rot-3", password="fourth-password")
    assert admin.entry("dbt_rot_dev")["password"] == "first-password" and admin.rotation_ids() == [
        "dbt_rot_dev"
    ]
    saga.rotate("dbt_rot_dev", created_by="maker", saga_id="rot-3", password="fifth-password")
    assert saga.undo_rotation("dbt_rot_dev", "rot-3") == "first-password", "the kept one is the original"
