"""What a person sees of a saga: pure functions from journal rows (and DAG-run facts) to the JSON
the console's pages and REST callers read. No database, no Airflow: unit-tested on plain rows.

Nothing secret leaves here: every value under a key named like a password, secret, token, key or
credential is replaced by :data:`HIDDEN` (the journal holds none today; this is the belt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from include.dbt_platform.saga import journal_schema as j

HIDDEN = "•••• (hidden)"
_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|credential|private[_-]?key|api[_-]?key|dsn", re.IGNORECASE
)
# Events that end a compensation attempt, by the state they leave the step in.
_COMPENSATION_END = {
    "compensation_compensated": j.STEP_COMPENSATED,
    "compensation_compensation_failed": j.COMPENSATION_FAILED,
}
# What a step's state says of the resources its result names.
_RESOURCE_STATUS = {
    j.SUCCEEDED: "created",
    j.STEP_COMPENSATED: "removed",
    j.COMPENSATION_FAILED: "still there: its removal failed",
    j.STEP_COMPENSATING: "being removed",
    j.EXECUTING: "unknown: the step did not finish",
    j.STEP_FAILED: "partly made: the step failed",
}
REDRIVE_EVENT = "redrive_requested"


def redact(value: Any) -> Any:
    """``value`` with everything under a secret-looking key hidden, at any depth."""
    if isinstance(value, dict):
        return {k: HIDDEN if _SECRET_NAME.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


@dataclass(frozen=True)
class RunFacts:
    """What Airflow knows of the DAG run behind a saga (the metadata database, not the journal)."""

    state: str | None
    run_type: str | None
    triggered_by: str | None  # ui, rest_api, cli, operator, timetable, test...
    triggering_user_name: str | None


@dataclass(frozen=True)
class Links:
    """Paths in the Airflow UI and in the console (``ui_base``: the UI's path prefix, usually "")."""

    ui_base: str
    console_base: str

    def run(self, dag_id: str, run_id: str) -> str:
        return f"{self.ui_base}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"

    def task(self, dag_id: str, run_id: str, task_id: str) -> str:
        """A task instance's page, which opens on its log."""
        return f"{self.run(dag_id, run_id)}/tasks/{quote(task_id, safe='')}"

    def saga(self, saga_id: str) -> str:
        return f"{self.console_base}/s/{quote(saga_id, safe='')}"

    def saga_api(self, saga_id: str) -> str:
        return f"{self.console_base}/api/sagas/{quote(saga_id, safe='')}"


def requester(journaled: str | None, run: RunFacts | None) -> dict | None:
    """Who asked for the saga: the journal's requester (the run's triggering user, recorded when the
    saga began: it outlives the run), with how the run was triggered (ui, rest_api...) when the run is
    still there; the run's own triggering user for sagas journaled before requesters were recorded."""
    via = run.triggered_by if run is not None else None
    if journaled:
        return {"name": journaled, "via": via, "source": "journal"}
    if run is None or not (run.triggering_user_name or run.triggered_by):
        return None
    return {"name": run.triggering_user_name, "via": via, "source": "dag_run"}


def project_of(request: dict | None) -> str | None:
    return (request or {}).get("project_name")


def summary(saga: dict, run: RunFacts | None, links: Links, now: datetime) -> dict:
    """One row of the list."""
    end = saga["finished_at"] or (now if saga["state"] not in j.TERMINAL_SAGA_STATES else saga["updated_at"])
    return {
        "saga_id": saga["saga_id"],
        "saga_name": saga["saga_name"],
        "project": project_of(saga["request"]),
        "requester": requester(saga.get("requester"), run),
        "state": saga["state"],
        "started_at": iso(saga["created_at"]),
        "finished_at": iso(saga["finished_at"]),
        "duration_seconds": seconds_between(saga["created_at"], end),
        "first_cause": saga["first_cause"],
        "dag_id": saga["dag_id"],
        "run_id": saga["run_id"],
        "run_state": run.state if run else None,
        "links": {"detail": links.saga(saga["saga_id"]), "run": links.run(saga["dag_id"], saga["run_id"])},
    }


def _forward_outcome(step: dict, events: list[dict]) -> tuple[str, str | None]:
    """How the step's forward run ended (its state column moves on once it is compensated), and the
    error of its last failed attempt."""
    state, error = step["state"], None
    for event in events:
        if event["event"] in ("step_failed", "step_retrying"):
            error = (event["detail"] or {}).get("error")
    ends = [e["event"] for e in events if e["event"] in ("step_succeeded", "step_failed")]
    if state in (j.STEP_COMPENSATING, j.STEP_COMPENSATED, j.COMPENSATION_FAILED):
        state = (
            {"step_succeeded": j.SUCCEEDED, "step_failed": j.STEP_FAILED}.get(ends[-1], "") if ends else ""
        )
        state = state or (j.EXECUTING if step["started_at"] else j.PENDING)
    return state, error


def timeline(saga: dict, steps: list[dict], events: list[dict], links: Links) -> list[dict]:
    """Each step's forward run (in declared order), then each compensation (in the order they ran):
    state, attempts, start, end, duration, error and where its log is."""
    by_step: dict[str, list[dict]] = {}
    for event in events:
        by_step.setdefault(event["step_name"], []).append(event)
    redrives = [e for e in events if e["event"] == REDRIVE_EVENT]
    forward, undo = [], []
    for step in steps:
        name, own = step["step_name"], by_step.get(step["step_name"], [])
        state, error = _forward_outcome(step, own)
        ran = state != j.PENDING
        forward.append(
            {
                "kind": "step",
                "step": name,
                "position": step["position"],
                "state": state,
                "attempts": step["attempts"],
                "started_at": iso(step["started_at"]),
                "finished_at": iso(step["finished_at"]),
                "duration_seconds": seconds_between(step["started_at"], step["finished_at"]),
                "error": error,
                "log": links.task(saga["dag_id"], saga["run_id"], name) if ran else None,
            }
        )
        compensating = [e for e in own if e["event"] == "compensation_compensating"]
        if not compensating:
            continue
        last_start = compensating[-1]
        ends = [e for e in own if e["event"] in _COMPENSATION_END and e["event_id"] > last_start["event_id"]]
        failures = [e for e in own if e["event"] == "compensation_compensation_failed"]
        undo.append(
            {
                "kind": "compensation",
                "step": name,
                "position": step["position"],
                "state": _COMPENSATION_END[ends[0]["event"]] if ends else j.STEP_COMPENSATING,
                "attempts": step["compensation_attempts"],
                "started_at": iso(last_start["at"]),
                "finished_at": iso(ends[0]["at"]) if ends else None,
                "duration_seconds": seconds_between(last_start["at"], ends[0]["at"] if ends else None),
                "error": (failures[-1]["detail"] or {}).get("error") if failures else None,
                "first_event_id": compensating[0]["event_id"],
                "log": _compensation_log(saga, last_start, redrives, links),
            }
        )
    undo.sort(key=lambda entry: entry.pop("first_event_id"))
    return forward + undo


def _compensation_log(saga: dict, started: dict, redrives: list[dict], links: Links) -> dict:
    """Where the log of a compensation attempt is, as far as the journal tells: after a re-drive,
    its recovery run's task; before, the saga run's ``compensate`` task. (A run that timed out is
    compensated by the DAG's failure callback, whose log is the dag-processor's.)"""
    before = [r for r in redrives if r["event_id"] < started["event_id"]]
    detail = (before[-1]["detail"] or {}) if before else {}
    if detail.get("recovery_run_id"):
        dag_id, run_id = detail["recovery_dag_id"], detail["recovery_run_id"]
        return {"label": "re-drive", "href": links.task(dag_id, run_id, "recover")}
    return {"label": "compensate", "href": links.task(saga["dag_id"], saga["run_id"], "compensate")}


# The keys of step results that name something a step made, and what to call it. Other keys are
# facts about the step (an environment chosen, reader groups granted, the owner notified), not
# things the saga made: they stay in the step's result, shown with its timeline.
RESOURCE_KINDS = {
    "project_name": "registry entry",
    "database": "database",
    "schemas": "schema",
    "repository": "git repository",
    "roles": "role",
    "connections": "Airflow connection",
    "registered": "transformation project",
}


def resources(steps: list[dict], compensable: set[str] | None = None) -> list[dict]:
    """What the saga made, and whether it is still there, from each step's recorded result. Only
    steps with a compensation make something (``compensable``, from the saga's definition; None: any
    step); a ``created: false`` result names what the saga only adopted (never removed)."""
    found = []
    for step in steps:
        if compensable is not None and step["step_name"] not in compensable:
            continue  # a check (validate_request) or the pivot: its result names nothing it made
        result = redact(step["result"] or {})
        status = _RESOURCE_STATUS.get(step["state"])
        if not status:
            continue
        adopted = result.get("created") is False
        for key, kind in RESOURCE_KINDS.items():
            value = result.get(key)
            for name in value if isinstance(value, list) else [value]:
                if isinstance(name, str) and name:
                    found.append(
                        {
                            "step": step["step_name"],
                            "kind": kind,
                            "name": name,
                            "status": "adopted, kept: not made by this saga" if adopted else status,
                        }
                    )
    return found


def redrive_requests(events: list[dict], links: Links, run_states: dict[str, str | None]) -> list[dict]:
    """Each re-drive asked for from the console: who, when, and its recovery run (with its state)."""
    requests = []
    for event in events:
        if event["event"] != REDRIVE_EVENT:
            continue
        detail = event["detail"] or {}
        run_id = detail.get("recovery_run_id")
        requests.append(
            {
                "requested_by": detail.get("user"),
                "at": iso(event["at"]),
                "recovery_dag_id": detail.get("recovery_dag_id"),
                "recovery_run_id": run_id,
                "recovery_run_state": run_states.get(run_id) if run_id else None,
                "link": links.run(detail["recovery_dag_id"], run_id) if run_id else None,
            }
        )
    return requests


def event_rows(events: list[dict]) -> list[dict]:
    return [
        {
            "event_id": e["event_id"],
            "at": iso(e["at"]),
            "step": e["step_name"],
            "event": e["event"],
            "detail": redact(e["detail"]),
        }
        for e in events
    ]


def detail_view(
    saga: dict,
    steps: list[dict],
    events: list[dict],
    duplicate_runs: list[dict],
    *,
    run: RunFacts | None,
    links: Links,
    now: datetime,
    run_states: dict[str, str | None],
    may_redrive: bool,
    compensable: set[str] | None = None,
) -> dict:
    """Everything the detail page shows of one saga."""
    requests = redrive_requests(events, links, run_states)
    in_progress = next(
        (r for r in reversed(requests) if r["recovery_run_state"] in ("queued", "running")), None
    )
    return {
        **summary(saga, run, links, now),
        "idempotency_key": saga["idempotency_key"],
        "deadline_at": iso(saga["deadline_at"]),
        "error": saga["error"],
        "request": redact(saga["request"]),
        "timeline": timeline(saga, steps, events, links),
        "results": {s["step_name"]: redact(s["result"]) for s in steps if s["result"]},
        "resources": resources(steps, compensable),
        "events": event_rows(events),
        "duplicate_requests": [
            {"run_id": d["run_id"], "at": iso(d["recorded_at"]), "link": links.run(d["dag_id"], d["run_id"])}
            for d in duplicate_runs
        ],
        "redrive": {
            "possible": saga["state"] == j.FAILED,
            "allowed": may_redrive,
            "compensations_to_retry": [
                s["step_name"] for s in steps if s["state"] in (j.COMPENSATION_FAILED, j.STEP_COMPENSATING)
            ],
            "in_progress": in_progress,
            "requests": requests,
            "api": links.saga_api(saga["saga_id"]) + "/redrive",
        },
    }
