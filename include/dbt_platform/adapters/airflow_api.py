"""Airflow's own REST API, as the platform's service account uses it from a saga's tasks.

Airflow 3 tasks cannot touch the metadata database; what a saga must change in Airflow itself goes
through the api-server, like any other client: pause a project's DAG before it is decommissioned,
see whether it still has runs going, and check that an owner's role exists before a project DAG
grants it access (a DAG whose ``access_control`` names a missing role is an import error).

The service account (``dbt-platform``, FAB role ``Platform``: read roles, read and edit DAGs, read
DAG runs; it can create nothing, trigger nothing, manage no user) is an Airflow connection, named by
``DBT_PLATFORM_AIRFLOW_API_CONN_ID`` (``http``: host, port, login, password). Unset, the platform
works without it: no per-owner access, and decommissioning unregisters without pausing first (the
journal says so).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import PermanentError, TransientError

OWNER_ROLE_PREFIX = "owner:"
# What a project DAG grants its owner's role: see it, pause it, read and trigger its runs.
OWNER_PERMISSIONS = {"DAGs": {"can_read", "can_edit"}, "DAG Runs": {"can_read", "can_create"}}
UNFINISHED_RUN_STATES = ("queued", "running")


def owner_role(owner: str) -> str:
    """The Airflow role of the people who own ``owner``'s projects (an e-mail: a person or a team)."""
    return f"{OWNER_ROLE_PREFIX}{owner}"


@dataclass
class AirflowApi:
    base_url: str
    username: str
    password: str
    timeout: float = 30
    _token: str | None = None

    def _open(self, req: urllib.request.Request) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
                return resp.status, json.loads(body) if body else {}
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            return exc.code, detail
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransientError(f"Airflow's API at {self.base_url} is unreachable: {exc}") from exc

    def _token_now(self) -> str:
        if self._token is None:
            status, body = self._open(
                urllib.request.Request(
                    f"{self.base_url}/auth/token",
                    data=json.dumps({"username": self.username, "password": self.password}).encode(),
                    headers={"Content-Type": "application/json"},
                )
            )
            if status not in (200, 201) or "access_token" not in body:
                raise PermanentError(
                    f"Airflow's API refused the platform's service account {self.username!r} (HTTP {status})"
                )
            self._token = body["access_token"]
        return self._token

    def call(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {self._token_now()}", "Content-Type": "application/json"},
        )
        status, body = self._open(req)
        if status >= 500:
            raise TransientError(f"Airflow's API answered {method} {path} with HTTP {status}")
        if status in (401, 403):
            raise PermanentError(
                f"the platform's service account may not {method} {path} (HTTP {status}): "
                "check the Platform role's permissions"
            )
        return status, body

    def role_exists(self, name: str) -> bool:
        status, _ = self.call("GET", f"/auth/fab/v1/roles/{urllib.parse.quote(name, safe='')}")
        return status == 200

    def dag(self, dag_id: str) -> dict | None:
        status, body = self.call("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}")
        return body if status == 200 else None

    def set_paused(self, dag_id: str, paused: bool) -> bool:
        """Pause or unpause; False when Airflow has no such DAG (never parsed, or already removed)."""
        status, body = self.call(
            "PATCH", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}", {"is_paused": paused}
        )
        if status == 404:
            return False
        if status != 200:
            raise PermanentError(f"pausing {dag_id} failed (HTTP {status}): {body.get('detail')}")
        return True

    def unfinished_runs(self, dag_id: str) -> list[str]:
        query = urllib.parse.urlencode([("state", s) for s in UNFINISHED_RUN_STATES] + [("limit", "100")])
        status, body = self.call("GET", f"/api/v2/dags/{urllib.parse.quote(dag_id, safe='')}/dagRuns?{query}")
        if status == 404:
            return []
        return [run["dag_run_id"] for run in body.get("dag_runs", [])]


def configured() -> AirflowApi | None:
    """The service account's client, or None when the platform runs without one."""
    conn_id = get_settings().airflow_api_conn_id
    if not conn_id:
        return None
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    scheme = conn.schema or "http"
    return AirflowApi(f"{scheme}://{conn.host}:{conn.port or 8080}", conn.login or "", conn.password or "")
