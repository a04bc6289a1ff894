"""Connections the saga creates, stored where Airflow and Cosmos read them.

The local backend is Airflow's ``LocalFilesystemBackend`` file (JSON, mode 0600), configured as both
``[secrets] backend`` and ``[workers] secrets_backend``. Every change is made under an exclusive lock
and written atomically: a temporary file beside it, flushed to disk, renamed over it (a crash leaves
the old file or the new one, never half of one; a temporary file a crash left behind is removed by the
next change). Each entry records the saga that made it; an entry that another saga (or the platform's
own setup) made is never overwritten or removed.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.errors import Conflict

CREATED_BY = "created_by_saga"


class ConnectionStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _temporary(self) -> Path:
        return self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def _write(self, data: dict) -> None:
        tmp = self._temporary()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        boundary("connections written to a temporary file, not yet renamed")
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a writer that died before its rename
            data = json.loads(self.path.read_text() or "{}") if self.path.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)

    def put(
        self,
        conn_id: str,
        *,
        saga_id: str,
        host: str,
        port: int,
        login: str,
        password: str,
        database: str,
        schema: str,
    ) -> None:
        with self._locked() as data:
            existing = data.get(conn_id)
            if existing is not None and (existing.get("extra") or {}).get(CREATED_BY) != saga_id:
                raise Conflict(f"connection '{conn_id}' already exists and was not made by this saga")
            data[conn_id] = {
                "conn_type": "postgres",
                "host": host,
                "port": port,
                "login": login,
                "password": password,
                "schema": database,  # Airflow's postgres "schema" field is the database
                "extra": {"dbt_schema": schema, CREATED_BY: saga_id},
            }

    def password_of(self, conn_id: str, created_by: str) -> str | None:
        """The stored password of an entry the saga ``created_by`` made (None if there is none)."""
        with self._locked() as data:
            entry = data.get(conn_id)
            if entry and (entry.get("extra") or {}).get(CREATED_BY) == created_by:
                return entry.get("password")
        return None

    # A rotation keeps the previous password until it completes, beside the store (never in a
    # connection's extra, which tasks and profiles read): ``<file>.rotations``, 0600, same lock.
    def _rotations_path(self) -> Path:
        return self.path.with_name(self.path.name + ".rotations")

    def _rotations(self) -> dict:
        path = self._rotations_path()
        return json.loads(path.read_text() or "{}") if path.exists() else {}

    def _save_rotations(self, rotations: dict) -> None:
        path = self._rotations_path()
        if not rotations:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(rotations, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def rotate(self, conn_id: str, *, created_by: str, saga_id: str, password: str) -> None:
        """The entry (made by the saga ``created_by``) gets ``password``; its previous password is kept
        for :meth:`undo_rotation` until :meth:`finish_rotation`. Idempotent for one rotating saga."""
        with self._locked() as data:
            entry = data.get(conn_id)
            if not entry or (entry.get("extra") or {}).get(CREATED_BY) != created_by:
                raise Conflict(f"connection '{conn_id}' was not made by saga {created_by}")
            rotations = self._rotations()
            kept = rotations.get(conn_id)
            if kept and kept["saga"] != saga_id:
                raise Conflict(f"connection '{conn_id}' is being rotated by saga {kept['saga']}")
            if not kept:
                rotations[conn_id] = {"saga": saga_id, "previous": entry["password"]}
                self._save_rotations(rotations)
            boundary("previous password kept, the new one not yet stored")
            entry["password"] = password

    def undo_rotation(self, conn_id: str, saga_id: str) -> str | None:
        """Put the previous password back (if ``saga_id`` rotated this entry); returns it."""
        with self._locked() as data:
            rotations = self._rotations()
            kept = rotations.get(conn_id)
            if not kept or kept["saga"] != saga_id:
                return None
            if conn_id in data:
                data[conn_id]["password"] = kept["previous"]
            return kept["previous"]

    def finish_rotation(self, conn_id: str, saga_id: str) -> None:
        """Forget the previous password of a rotation ``saga_id`` completed (or undid)."""
        with self._locked():
            rotations = self._rotations()
            if rotations.get(conn_id, {}).get("saga") == saga_id:
                del rotations[conn_id]
                self._save_rotations(rotations)

    def set_platform_connection(self, conn_id: str, entry: dict) -> None:
        """An entry of the platform's own (its database, its warehouse): written by the stack's setup,
        never by a saga; an entry a saga made is not replaced."""
        with self._locked() as data:
            existing = data.get(conn_id)
            if existing is not None and (existing.get("extra") or {}).get(CREATED_BY):
                raise Conflict(f"connection '{conn_id}' belongs to saga {existing['extra'][CREATED_BY]}")
            data[conn_id] = entry

    def delete(self, conn_id: str, saga_id: str) -> bool:
        with self._locked() as data:
            entry = data.get(conn_id)
            if entry and (entry.get("extra") or {}).get(CREATED_BY) == saga_id:
                del data[conn_id]
                return True
        return False
