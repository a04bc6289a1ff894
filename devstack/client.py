"""A small client for Airflow's public REST API (v2), as a portal or a ticketing bot would use it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from devstack.airflow import AirflowTarget
from devstack.settings import StackError, StackSettings, airflow_user_password


class AirflowClient:
    """A small client for Airflow's public REST API (v2), authenticated with a JWT."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = self._fetch_token(username, password)

    @property
    def token(self) -> str:
        """The JWT this client sends (for a caller that builds its own requests)."""
        return self._token

    def _fetch_token(self, username: str, password: str) -> str:
        body = json.dumps({"username": username, "password": password}).encode()
        req = urllib.request.Request(
            f"{self.base_url}/auth/token", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())["access_token"]

    def request(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """The public REST API: ``path`` under ``/api/v2``."""
        return self.call(method, f"/api/v2{path}", payload)

    def call(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict]:
        """Any JSON endpoint of the api-server (a plugin's too), with this client's token."""
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            method=method,
            data=None if payload is None else json.dumps(payload).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read() or b"{}")
            except ValueError:
                detail = {}
            return exc.code, detail

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/dags/{dag_id}")
            if status == 200:
                return body
            time.sleep(2)
        raise StackError(f"DAG {dag_id} did not appear within {timeout:.0f}s (import errors? see the UI)")

    def trigger(self, dag_id: str, run_id: str, conf: dict | None = None) -> tuple[int, dict]:
        self.request("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        return self.request(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}},
        )

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
            if status == 200 and body.get("state") in {"success", "failed"}:
                return body
            time.sleep(2)
        raise StackError(f"run {dag_id}/{run_id} did not finish within {timeout:.0f}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of a run, page by page: the API returns at most ``[api]
        maximum_page_limit`` (100) rows per request, whatever ``limit`` asks for."""
        tis: list[dict] = []
        while True:
            _, body = self.request(
                "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100&offset={len(tis)}"
            )
            page = body.get("task_instances", [])
            tis += page
            if not page or len(tis) >= body.get("total_entries", 0):
                return tis

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        """A try's log through the REST API: its lines, each with its fields (an exception's too)."""
        _, body = self.request(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        )
        return "\n".join(str(line) for line in body.get("content") or [])

    def explain(self, dag_id: str, run_id: str, lines: int = 25) -> str:
        """What a test prints when a run did not end as it should: every task's state and try, and
        the end of each failed or retried try's log."""
        tis = self.task_instances(dag_id, run_id)
        report = [
            f"{dag_id}/{run_id}: " + ", ".join(f"{t['task_id']}={t['state']}#{t['try_number']}" for t in tis)
        ]
        for ti in tis:
            if ti["state"] in ("success", "skipped", None) and ti["try_number"] <= 1:
                continue
            for attempt in range(1, ti["try_number"] + 1):
                tail = self.task_log(dag_id, run_id, ti["task_id"], attempt).splitlines()[-lines:]
                report += [f"--- {ti['task_id']} try {attempt} ({ti['state']}):", *tail]
        return "\n".join(report)


def client_for(stack: StackSettings, target: AirflowTarget, user: str = "admin") -> AirflowClient:
    """A client logged in as one of the stack's users (``devstack.settings.AIRFLOW_USERS``)."""
    return AirflowClient(target.api_url, user, airflow_user_password(stack, user))
