"""What the saga console shows, from journal rows: secrets hidden, the timeline of steps and
compensations, the resources made or removed, and when a re-drive is offered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from include.dbt_platform.console import presentation as p
from include.dbt_platform.saga import journal_schema as j

T0 = datetime(2025, 11, 29, 14, 0, tzinfo=UTC)
LINKS = p.Links(ui_base="", console_base="/sagas")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def saga(state: str, **overrides) -> dict:
    return {
        "saga_id": "0b8c",
        "saga_name": "dbt_project_create",
        "dag_id": "dbt_project_create",
        "run_id": "manual__1",
        "idempotency_key": None,
        "request": {"project_name": "sales", "owner": "ana@example.com"},
        "state": state,
        "error": None,
        "first_cause": None,
        "created_at": at(0),
        "updated_at": at(30),
        "deadline_at": at(1800),
        "finished_at": at(30) if state in j.TERMINAL_SAGA_STATES else None,
        **overrides,
    }


def step(name: str, position: int, state: str, result=None, **overrides) -> dict:
    return {
        "saga_id": "0b8c",
        "step_name": name,
        "position": position,
        "state": state,
        "attempts": 0 if state == j.PENDING else 1,
        "compensation_attempts": 0,
        "result": result,
        "error": None,
        "started_at": None if state == j.PENDING else at(position),
        "finished_at": None if state == j.PENDING else at(position + 0.5),
        "compensated_at": None,
        **overrides,
    }


class Events:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, seconds: float, event: str, step: str | None = None, detail: dict | None = None) -> Events:
        self.rows.append(
            {
                "event_id": len(self.rows) + 1,
                "step_name": step,
                "event": event,
                "detail": detail,
                "at": at(seconds),
            }
        )
        return self


def compensated_saga() -> tuple[dict, list[dict], list[dict]]:
    """create_project and setup_repository ran; notify_owner failed for good; both were undone, the
    repository's removal failing once first; assign_entitlements never ran."""
    steps = [
        step("create_project", 1, j.STEP_COMPENSATED, {"project_name": "sales"}, compensation_attempts=1),
        step(
            "setup_repository", 2, j.STEP_COMPENSATED, {"repository": "/repos/sales"}, compensation_attempts=2
        ),
        step("notify_owner", 3, j.STEP_FAILED, None, attempts=4),
        step("assign_entitlements", 4, j.PENDING),
    ]
    events = (
        Events()
        .add(1, "step_started", "create_project")
        .add(1.5, "step_succeeded", "create_project", {"project_name": "sales"})
        .add(2, "step_started", "setup_repository")
        .add(2.5, "step_succeeded", "setup_repository", {"repository": "/repos/sales"})
        .add(3, "step_started", "notify_owner")
        .add(3.2, "step_retrying", "notify_owner", {"error": "TransientError: SMTP 421"})
        .add(3.5, "step_failed", "notify_owner", {"error": "PermanentError: SMTP 550"})
        .add(10, "compensation_compensating", "setup_repository")
        .add(11, "compensation_compensation_failed", "setup_repository", {"error": "PermanentError: disk"})
        .add(12, "compensation_compensating", "create_project")
        .add(12.5, "compensation_compensated", "create_project")
        .add(20, "compensation_compensating", "setup_repository")
        .add(21.5, "compensation_compensated", "setup_repository")
    ).rows
    return saga(j.COMPENSATED, first_cause="notify_owner: PermanentError: SMTP 550"), steps, events


def test_anything_named_like_a_secret_is_hidden_at_any_depth():
    request = {
        "project_name": "sales",
        "password": "hunter2",
        "nested": {
            "api_token": "t",
            "Client_Secret": "s",
            "keep": 1,
            "list": [{"db_password": "x", "name": "n"}],
        },
        "idempotency_key": "ticket-1",
    }
    shown = p.redact(request)
    assert shown["password"] == p.HIDDEN
    assert shown["nested"]["api_token"] == p.HIDDEN and shown["nested"]["Client_Secret"] == p.HIDDEN
    assert shown["nested"]["list"] == [{"db_password": p.HIDDEN, "name": "n"}]
    assert shown["project_name"] == "sales" and shown["nested"]["keep"] == 1
    assert shown["idempotency_key"] == "ticket-1", "an idempotency key is not a secret"
    assert "hunter2" not in repr(shown)


def test_the_timeline_shows_each_forward_step_then_the_compensations_in_the_order_they_ran():
    record, steps, events = compensated_saga()
    timeline = p.timeline(record, steps, events, LINKS)

    assert [(t["kind"], t["step"], t["state"]) for t in timeline] == [
        ("step", "create_project", j.SUCCEEDED),  # its state column says COMPENSATED: the events tell
        ("step", "setup_repository", j.SUCCEEDED),
        ("step", "notify_owner", j.STEP_FAILED),
        ("step", "assign_entitlements", j.PENDING),
        ("compensation", "setup_repository", j.STEP_COMPENSATED),  # undone first (newest first)
        ("compensation", "create_project", j.STEP_COMPENSATED),
    ]
    failed = timeline[2]
    assert failed["attempts"] == 4 and failed["error"] == "PermanentError: SMTP 550"
    assert failed["log"] == "/dags/dbt_project_create/runs/manual__1/tasks/notify_owner"
    assert timeline[3]["log"] is None, "a step that never ran has no log"
    repo_undo = timeline[4]
    assert repo_undo["attempts"] == 2
    assert repo_undo["started_at"] == at(20).isoformat(), "the last attempt's start"
    assert repo_undo["duration_seconds"] == 1.5
    assert repo_undo["error"] == "PermanentError: disk", "the failed attempt's error stays visible"
    assert repo_undo["log"] == {
        "label": "compensate",
        "href": "/dags/dbt_project_create/runs/manual__1/tasks/compensate",
    }


def test_a_compensation_run_by_a_redrive_links_to_the_recovery_runs_log():
    record, steps, events = compensated_saga()
    redrive = {"user": "admin", "recovery_dag_id": "saga_recovery", "recovery_run_id": "redrive__1"}
    events.insert(
        -2, {"event_id": 11.5, "step_name": None, "event": p.REDRIVE_EVENT, "detail": redrive, "at": at(19)}
    )
    undo = next(t for t in p.timeline(record, steps, events, LINKS) if t["kind"] == "compensation")
    assert undo["log"] == {
        "label": "re-drive",
        "href": "/dags/saga_recovery/runs/redrive__1/tasks/recover",
    }


def test_resources_say_what_was_made_and_whether_it_is_still_there():
    steps = [
        step("create_project", 1, j.SUCCEEDED, {"project_name": "sales"}),
        step("provision_database", 2, j.STEP_COMPENSATED, {"database": "dbt_sales", "created": True}),
        step("create_environments", 3, j.COMPENSATION_FAILED, {"schemas": ["sales_dev", "sales_prod"]}),
        step("create_credentials", 4, j.EXECUTING, {"roles": ["sales_dev_rw"], "password": "leaked?"}),
        step("assign_entitlements", 5, j.PENDING, None),
        step("notify_owner", 6, j.SUCCEEDED, {"notified": "ana@example.com"}),
    ]
    found = [(r["kind"], r["name"], r["status"]) for r in p.resources(steps)]
    assert found == [
        ("registry entry", "sales", "created"),
        ("database", "dbt_sales", "removed"),
        ("schema", "sales_dev", "still there: its removal failed"),
        ("schema", "sales_prod", "still there: its removal failed"),
        ("role", "sales_dev_rw", "unknown: the step did not finish"),
    ], "facts (the owner notified) are not resources, and nothing secret is listed"


def test_only_steps_with_a_compensation_name_resources():
    steps = [
        step("validate_request", 1, j.SUCCEEDED, {"project_name": "sales", "database": "dbt_sales"}),
        step("create_project", 2, j.SUCCEEDED, {"project_name": "sales"}),
    ]
    found = p.resources(steps, compensable={"create_project"})
    assert [(r["step"], r["name"]) for r in found] == [("create_project", "sales")]


def test_an_adopted_database_is_never_said_to_be_made_or_removed():
    steps = [step("provision_database", 1, j.STEP_COMPENSATED, {"database": "shared", "created": False})]
    assert p.resources(steps) == [
        {
            "step": "provision_database",
            "kind": "database",
            "name": "shared",
            "status": "adopted, kept: not made by this saga",
        }
    ]


def test_a_list_row_has_the_project_requester_and_duration_of_a_running_saga_so_far():
    running = saga(j.EXECUTING)
    run = p.RunFacts(
        state="running", run_type="manual", triggered_by="rest_api", triggering_user_name="portal"
    )
    row = p.summary(running, run, LINKS, now=at(95))
    assert row["project"] == "sales"
    assert row["requester"] == {"name": "portal", "via": "rest_api", "source": "dag_run"}
    assert row["duration_seconds"] == 95
    assert row["links"] == {"detail": "/sagas/s/0b8c", "run": "/dags/dbt_project_create/runs/manual__1"}
    finished = p.summary(saga(j.COMPLETED), None, LINKS, now=at(999))
    assert finished["duration_seconds"] == 30 and finished["requester"] is None


def test_links_quote_run_ids_and_keep_the_uis_path_prefix():
    links = p.Links(ui_base="/airflow", console_base="/airflow/sagas")
    assert links.run("d", "manual__2025-01-01T00:00:00+00:00") == (
        "/airflow/dags/d/runs/manual__2025-01-01T00%3A00%3A00%2B00%3A00"
    )
    assert links.saga("x/y") == "/airflow/sagas/s/x%2Fy"


def test_a_redrive_is_offered_only_for_a_failed_saga_and_shows_one_in_progress():
    record, steps, events = compensated_saga()
    steps[1] = {**steps[1], "state": j.COMPENSATION_FAILED}
    failed = saga(j.FAILED)
    view = p.detail_view(
        failed, steps, events, [], run=None, links=LINKS, now=at(60), run_states={}, may_redrive=True
    )
    assert view["redrive"]["possible"] and view["redrive"]["allowed"]
    assert view["redrive"]["compensations_to_retry"] == ["setup_repository"]
    assert view["redrive"]["in_progress"] is None
    assert view["redrive"]["api"] == "/sagas/api/sagas/0b8c/redrive"

    asked = {"user": "ops", "recovery_dag_id": "saga_recovery", "recovery_run_id": "redrive__2"}
    events = [
        *events,
        {"event_id": 99, "step_name": None, "event": p.REDRIVE_EVENT, "detail": asked, "at": at(70)},
    ]
    view = p.detail_view(
        failed,
        steps,
        events,
        [],
        run=None,
        links=LINKS,
        now=at(71),
        run_states={"redrive__2": "queued"},
        may_redrive=False,
    )
    assert view["redrive"]["in_progress"]["requested_by"] == "ops"
    assert view["redrive"]["in_progress"]["link"] == "/dags/saga_recovery/runs/redrive__2"
    assert not view["redrive"]["allowed"]

    done = p.detail_view(
        saga(j.COMPENSATED), steps, [], [], run=None, links=LINKS, now=at(71), run_states={}, may_redrive=True
    )
    assert not done["redrive"]["possible"]


def test_the_journaled_requester_is_shown_even_once_the_run_is_gone():
    journaled = {**saga(j.COMPLETED), "requester": "ana"}
    run = p.RunFacts(state="success", run_type="manual", triggered_by="ui", triggering_user_name="ana")
    assert p.summary(journaled, run, LINKS, now=at(99))["requester"] == {
        "name": "ana",
        "via": "ui",
        "source": "journal",
    }
    assert p.summary(journaled, None, LINKS, now=at(99))["requester"] == {
        "name": "ana",
        "via": None,
        "source": "journal",
    }
