"""Connections the saga creates, stored where Airflow and Cosmos read them.

The local backend is Airflow's ``LocalFilesystemBackend`` file (JSON, mode 0600), configured as both
``[secrets] backend`` and ``[workers] secrets_backend``. Writes are atomic and serialised with a lock.
Each entry records the saga that made it, and only that saga removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ConnectionStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = json.loads(self.path.read_text() or "{}") if self.path.exists() else {}
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                tmp = self.path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)

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
            data[conn_id] = {
                "conn_type": "postgres",
                "host": host,
                "port": port,
                "login": login,
                "password": password,
                "schema": database,  # Airflow's postgres "schema" field is the database
                "extra": {"dbt_schema": schema, "created_by_saga": saga_id},
            }

    def delete(self, conn_id: str, saga_id: str) -> bool:
        with self._locked() as data:
            entry = data.get(conn_id)
            if entry and entry.get("extra", {}).get("created_by_saga") == saga_id:
                del data[conn_id]
                return True
        return False
