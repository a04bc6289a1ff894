"""Connections the sagas create, kept in the secrets manager Airflow reads them from.

Airflow reads connections through its secrets-backend interface: HashiCorp's ``VaultBackend``
(apache-airflow-providers-hashicorp) against OpenBao or Vault, configured as ``[secrets] backend``
and ``[workers] secrets_backend``, with a token that may only *read* connections and variables. The
sagas write here, in the same KV v2 mount, with a token of their own (the Airflow connection
``platform_secrets``, read like any other), whose policy (:func:`policies`) lets it write only the
projects' connections (``connections/dbt_*``) and the rotations' bookkeeping (``rotations/dbt_*``):
never the platform's own connections, which the stack's setup writes with an administrator token.

The guarantees of the file-based store this replaced:

- every entry records the saga that made it (``created_by_saga`` in its extra);
- an entry another saga (or the platform's setup) made is never overwritten or removed: every write
  is a check-and-set on the version just read (KV v2 ``cas``; a new entry needs ``cas=0``), so of two
  writers racing for one entry exactly one wins and the other re-reads;
- every call is idempotent for the saga making it (a retry writes no new version);
- a removal deletes every version of the entry (KV v2 metadata): no old password lingers.

A rotation keeps the previous password under ``rotations/<conn_id>`` (Airflow's token cannot read it)
until it completes or is undone. :class:`ConnectionStore` is the one interface; another secrets
manager is one more implementation of it.
"""

from __future__ import annotations

from typing import Protocol

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.errors import Conflict, PermissionDenied, TransientError, Unavailable

CREATED_BY = "created_by_saga"
CONNECTIONS = "connections"
ROTATIONS = "rotations"
PROJECT_PREFIX = "dbt_"  # every connection a saga makes is dbt_<project>_<env>
SERVICE = "secrets manager"


def marker_of(entry: dict | None) -> str | None:
    return ((entry or {}).get("extra") or {}).get(CREATED_BY)


class ConnectionStore(Protocol):
    def put(self, conn_id: str, *, saga_id: str, host: str, port: int, login: str, password: str,
            database: str, schema: str) -> None: ...  # fmt: skip
    def entry(self, conn_id: str) -> dict | None: ...
    def password_of(self, conn_id: str, created_by: str) -> str | None: ...
    def rotate(self, conn_id: str, *, created_by: str, saga_id: str, password: str) -> None: ...
    def undo_rotation(self, conn_id: str, saga_id: str) -> str | None: ...
    def finish_rotation(self, conn_id: str, saga_id: str) -> None: ...
    def set_platform_connection(self, conn_id: str, entry: dict) -> None: ...
    def delete(self, conn_id: str, saga_id: str) -> bool: ...
    def conn_ids(self) -> list[str]: ...
    def rotation_ids(self) -> list[str]: ...


class _CasMismatch(Exception):
    """Someone wrote the entry between our read and our write: read again."""


def policies(mount: str) -> dict[str, str]:
    """The two policies, by name: what Airflow's components read, what the sagas write."""
    return {
        f"{mount}-airflow": (
            f'path "{mount}/data/{CONNECTIONS}/*" {{ capabilities = ["read"] }}\n'
            f'path "{mount}/data/variables/*" {{ capabilities = ["read"] }}\n'
        ),
        f"{mount}-saga": "".join(
            f'path "{mount}/data/{folder}/{PROJECT_PREFIX}*" {{ capabilities = ["create", "read", "update"] }}\n'
            f'path "{mount}/metadata/{folder}/{PROJECT_PREFIX}*" {{ capabilities = ["read", "delete"] }}\n'
            f'path "{mount}/metadata/{folder}/" {{ capabilities = ["list"] }}\n'
            for folder in (CONNECTIONS, ROTATIONS)
        ),
    }


class VaultConnectionStore:
    """Connections in a KV v2 mount of OpenBao or HashiCorp Vault (``hvac``)."""

    def __init__(self, client, mount: str) -> None:
        self.client, self.mount = client, mount
        self.kv = client.secrets.kv.v2

    @classmethod
    def from_connection(cls, conn_id: str) -> VaultConnectionStore:
        """Through the Airflow connection ``conn_id`` (type ``vault``: host, port, the mount as its
        schema, the token as its password; any auth type HashiCorp's ``VaultHook`` supports)."""
        from airflow.providers.hashicorp.hooks.vault import VaultHook

        hook = VaultHook(vault_conn_id=conn_id)
        return cls(_call(hook.get_conn), hook.connection.schema or "airflow")

    # ------------------------------------------------------------------ KV v2, with typed errors
    def _read(self, path: str) -> tuple[dict | None, int]:
        """The entry's data (None if there is none) and its current version (0: never written)."""
        import hvac.exceptions

        for _ in range(5):
            try:
                found = _call(self.kv.read_secret_version, path=path, mount_point=self.mount,
                              raise_on_deleted_version=True)  # fmt: skip
                return found["data"]["data"], found["data"]["metadata"]["version"]
            except hvac.exceptions.InvalidPath:
                pass
            try:  # a deleted latest version leaves metadata (and a version number to check against)
                meta = _call(self.kv.read_secret_metadata, path=path, mount_point=self.mount)["data"]
            except hvac.exceptions.InvalidPath:
                return None, 0
            current = str(meta["current_version"])
            latest = meta.get("versions", {}).get(current, {})
            if latest.get("deletion_time") or latest.get("destroyed"):
                return None, int(current)
            # Written between the two reads: the version number is not that of "no entry" (a
            # check-and-set on it would overwrite what another writer just put there). Read again.
        raise TransientError(f"{path} in {self.mount} kept changing while it was read; try again")

    def _write(self, path: str, data: dict, version: int) -> None:
        import hvac.exceptions

        try:
            _call(
                self.kv.create_or_update_secret, path=path, secret=data, cas=version, mount_point=self.mount
            )
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                raise _CasMismatch(path) from None
            raise

    def _remove(self, path: str) -> None:
        import hvac.exceptions

        try:
            _call(self.kv.delete_metadata_and_all_versions, path=path, mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            pass

    def _list(self, folder: str) -> list[str]:
        import hvac.exceptions

        try:
            found = _call(self.kv.list_secrets, path=folder, mount_point=self.mount)
        except hvac.exceptions.InvalidPath:
            return []
        return sorted(k for k in found["data"]["keys"] if not k.endswith("/"))

    def _update(self, path: str, change) -> None:
        """Read, let ``change(data)`` return the new data (or None: nothing to write), write with
        check-and-set; on a concurrent write, read again (bounded)."""
        for _ in range(5):
            data, version = self._read(path)
            new = change(data)
            if new is None or new == data:
                return
            try:
                self._write(path, new, version)
                return
            except _CasMismatch:
                continue
        raise TransientError(f"{path} in {self.mount} kept changing while it was written; try again")

    # ------------------------------------------------------------------ the interface
    def put(self, conn_id: str, *, saga_id: str, host: str, port: int, login: str, password: str,
            database: str, schema: str) -> None:  # fmt: skip
        entry = {
            "conn_type": "postgres",
            "host": host,
            "port": port,
            "login": login,
            "password": password,
            "schema": database,  # Airflow's postgres "schema" field is the database
            "extra": {"dbt_schema": schema, CREATED_BY: saga_id},
        }

        def change(existing):
            if existing is not None and marker_of(existing) != saga_id:
                raise Conflict(f"connection '{conn_id}' already exists and was not made by this saga")
            return entry

        self._update(f"{CONNECTIONS}/{conn_id}", change)

    def entry(self, conn_id: str) -> dict | None:
        return self._read(f"{CONNECTIONS}/{conn_id}")[0]

    def password_of(self, conn_id: str, created_by: str) -> str | None:
        """The stored password of an entry the saga ``created_by`` made (None if there is none)."""
        entry = self.entry(conn_id)
        return entry.get("password") if entry and marker_of(entry) == created_by else None

    def rotate(self, conn_id: str, *, created_by: str, saga_id: str, password: str) -> None:
        """The entry (made by the saga ``created_by``) gets ``password``; its previous password is kept
        for :meth:`undo_rotation` until :meth:`finish_rotation`. Idempotent for one rotating saga."""
        entry = self.entry(conn_id)
        if not entry or marker_of(entry) != created_by:
            raise Conflict(f"connection '{conn_id}' was not made by saga {created_by}")

        def keep(kept):
            if kept and kept["saga"] != saga_id:
                raise Conflict(f"connection '{conn_id}' is being rotated by saga {kept['saga']}")
            return kept or {"saga": saga_id, "previous": entry["password"]}

        self._update(f"{ROTATIONS}/{conn_id}", keep)
        boundary("previous password kept, the new one not yet stored")

        def change(current):
            if not current or marker_of(current) != created_by:
                raise Conflict(f"connection '{conn_id}' was not made by saga {created_by}")
            return {**current, "password": password}

        self._update(f"{CONNECTIONS}/{conn_id}", change)

    def undo_rotation(self, conn_id: str, saga_id: str) -> str | None:
        """Put the previous password back (if ``saga_id`` rotated this entry); returns it."""
        kept, _ = self._read(f"{ROTATIONS}/{conn_id}")
        if not kept or kept["saga"] != saga_id:
            return None
        self._update(
            f"{CONNECTIONS}/{conn_id}", lambda cur: {**cur, "password": kept["previous"]} if cur else None
        )
        return kept["previous"]

    def finish_rotation(self, conn_id: str, saga_id: str) -> None:
        """Forget the previous password of a rotation ``saga_id`` completed (or undid)."""
        kept, _ = self._read(f"{ROTATIONS}/{conn_id}")
        if kept and kept["saga"] == saga_id:
            self._remove(f"{ROTATIONS}/{conn_id}")

    def set_platform_connection(self, conn_id: str, entry: dict) -> None:
        """An entry of the platform's own (its database, its warehouse, its git server): written by
        the stack's setup with an administrator token, never by a saga; a saga's entry is not replaced."""

        def change(existing):
            if existing is not None and marker_of(existing):
                raise Conflict(f"connection '{conn_id}' belongs to saga {marker_of(existing)}")
            return entry

        self._update(f"{CONNECTIONS}/{conn_id}", change)

    def delete(self, conn_id: str, saga_id: str) -> bool:
        entry = self.entry(conn_id)
        if entry is None or marker_of(entry) != saga_id:
            return False
        self._remove(f"{CONNECTIONS}/{conn_id}")
        return True

    def adopt(self, conn_id: str, entry: dict, rotation: dict | None = None) -> bool:
        """Bring an entry made elsewhere (a migration), as it was, unless one is there already;
        with the previous password of a rotation it was in the middle of. True if written."""
        written = []

        def change(existing):
            if existing is not None:
                return None
            written.append(conn_id)
            return entry

        self._update(f"{CONNECTIONS}/{conn_id}", change)
        if rotation:
            self._update(f"{ROTATIONS}/{conn_id}", lambda kept: None if kept else rotation)
        return bool(written)

    def conn_ids(self) -> list[str]:
        return self._list(CONNECTIONS)

    def rotation_ids(self) -> list[str]:
        return self._list(ROTATIONS)


def _call(fn, *args, **kwargs):
    """``fn`` with the secrets manager's failures in the platform's taxonomy."""
    import hvac.exceptions
    import requests

    try:
        return fn(*args, **kwargs)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise Unavailable(SERVICE, type(exc).__name__) from None
    except (
        hvac.exceptions.VaultDown,
        hvac.exceptions.InternalServerError,
        hvac.exceptions.BadGateway,
    ) as exc:
        raise Unavailable(SERVICE, _one_line(exc)) from None
    except hvac.exceptions.Forbidden as exc:
        raise PermissionDenied(f"{SERVICE}: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    """hvac's message on one line ("1 error occurred: * permission denied, on get <url>")."""
    return " ".join(str(exc).split())[:300]


def connection_store() -> ConnectionStore:
    """The store the sagas write to, through the connection the settings name."""
    from include.dbt_platform.config import get_settings

    return VaultConnectionStore.from_connection(get_settings().secrets_conn_id)
