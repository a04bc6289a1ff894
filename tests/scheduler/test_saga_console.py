"""The saga console (the Sagas view of Airflow's UI) on the real api-server, through its JSON API and
in a real browser.

The API: no token is 401 (a page sends the browser to Airflow's login), the read-only ``viewer`` reads
but may not re-drive (403, nothing journaled), and the list answers in under a second with 10,000
sagas in the journal. The browser (Debian's chromium, driven by Playwright): log in through Airflow's
login page, open Sagas from the nav bar, read a COMPLETED and a COMPENSATED saga step by step, open a
saga from its DAG run's "Saga" tab, re-drive a FAILED one (a compensation failed for good by fault
injection) until it ends COMPENSATED, and open the dbt docs of the project a saga created (served
behind the same authentication: plugins/dbt_docs.py). Screenshots of every page go to ``.local/test/screenshots/``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from devstack.client import client_for
from include.dbt_platform.project_creation import definition as project_saga
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.recovery import recover_sagas
from tests.browser import EXPECT_TIMEOUT_MS, chromium
from tests.harness import STACK, TARGET, TEST_ROOT, wait_for
from tests.saga_support import admin, journal, request, undo_saga, uniq
from tests.scheduler.live import LIVE_TARGET

DAG_ID = "dbt_project_create"
BASE = LIVE_TARGET.api_url
SCREENSHOTS = TEST_ROOT / "screenshots"
# A compensation that fails for good in the run (not in a later re-drive): docs/operations.md, "Fault drills".
FAILING_COMPENSATION = {
    "step": "notify_owner",
    "mode": "permanent",
    "fail_compensation_of": "setup_repository",
}
ALL_STEPS = [
    "validate_request",
    "create_project",
    "provision_database",
    "create_environments",
    "setup_repository",
    "create_credentials",
    "assign_entitlements",
    "register_transformations",
    "notify_owner",
]


@pytest.fixture(scope="module")
def client(live_airflow):
    live_airflow.wait_for_dag(DAG_ID)
    live_airflow.wait_for_dag("saga_recovery")
    # DAGs start paused on the live stack; a re-drive is a run of saga_recovery.
    live_airflow.request("PATCH", "/dags/saga_recovery", {"is_paused": False})
    return live_airflow


@pytest.fixture(scope="module")
def viewer(client):
    return client_for(STACK, LIVE_TARGET, "viewer")


@pytest.fixture(scope="module")
def sagas(client):
    """One saga of each ending, triggered together through the REST API: saga id by ending."""
    faults = {  # ending: (project name, fault)
        j.COMPLETED: ("sales", None),
        j.COMPENSATED: ("marketing", {"step": "notify_owner", "mode": "permanent"}),
        j.FAILED: ("finance", FAILING_COMPENSATION),
    }
    started = {}
    for ending, (name, fault) in faults.items():
        run_id = f"console__{uuid.uuid4().hex[:10]}"
        status, body = client.trigger(DAG_ID, run_id, request(uniq(name), fault_injection=fault))
        assert status == 200, body
        started[ending] = (run_id, j.saga_id_for(DAG_ID, run_id))
    for ending, (run_id, saga_id) in started.items():
        client.wait_for_run(DAG_ID, run_id, timeout=300)
        wait_for(
            lambda s=saga_id, e=ending: saga_state(s) == e,
            180,
            lambda s=saga_id, e=ending: f"saga {s} to end {e} (it is {saga_state(s)})",
        )
    yield {ending: saga_id for ending, (_, saga_id) in started.items()} | {
        f"{ending}_run": run_id for ending, (run_id, _) in started.items()
    }
    # Leave the test databases as found: undo the completed project, and finish the FAILED saga if
    # the browser test did not re-drive it (the fault fails its compensation only in its own run).
    undo_saga(started[j.COMPLETED][1])
    if saga_state(started[j.FAILED][1]) == j.FAILED:
        recover_sagas(
            project_saga.definition(), lambda dag_id, run_id: "failed", saga_id=started[j.FAILED][1]
        )


def saga_state(saga_id: str) -> str | None:
    saga = journal().get(saga_id)
    return saga.state if saga else None


def fetch(method: str, path: str, token: str | None = None, body: dict | None = None):
    """A plain HTTP call that does not follow redirects: (status, headers, parsed JSON or text)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    req = urllib.request.Request(f"{BASE}{path}", method=method, headers=headers, data=data)
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as resp:
            status, reply_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, reply_headers, raw = exc.code, exc.headers, exc.read()
    try:
        return status, reply_headers, json.loads(raw or b"{}")
    except ValueError:
        return status, reply_headers, raw.decode(errors="replace")


# ---------------------------------------------------------------------------------------- the API


def test_without_a_token_the_api_answers_401_and_a_page_sends_to_the_login(client):
    for method, path in [
        ("GET", "/sagas/api/sagas"),
        ("GET", "/sagas/api/sagas/any"),
        ("GET", f"/sagas/api/runs/{DAG_ID}/any"),
        ("POST", "/sagas/api/sagas/any/redrive"),
    ]:
        status, _, body = fetch(method, path)
        assert status == 401, (method, path, status, body)
    status, headers, _ = fetch("GET", "/sagas/")
    assert status == 303
    login = urlsplit(headers["Location"])  # the auth manager's login page (FAB's: /auth/login/)
    assert login.path.rstrip("/") == "/auth/login" and "next=" in login.query, headers["Location"]
    status, _, _ = fetch("GET", "/sagas/api/sagas", token="not-a-jwt")
    assert status == 403, "Airflow's answer to a token it cannot verify"


def test_the_viewer_reads_every_saga_but_may_not_redrive(client, viewer, sagas):
    failed = sagas[j.FAILED]
    status, page = viewer.call("GET", "/sagas/api/sagas?state=FAILED&limit=100")
    assert status == 200, page
    assert failed in {s["saga_id"] for s in page["sagas"]}
    status, detail = viewer.call("GET", f"/sagas/api/sagas/{failed}")
    assert status == 200, detail
    assert detail["redrive"] == {**detail["redrive"], "possible": True, "allowed": False}

    status, body = viewer.call("POST", f"/sagas/api/sagas/{failed}/redrive", {})
    assert status == 403, body
    assert "may not re-drive" in body["detail"]
    assert journal().get(failed).state == j.FAILED
    assert "redrive_requested" not in {e["event"] for e in journal().events(failed)}, "nothing journaled"


def test_only_a_failed_saga_can_be_redriven_and_an_unknown_one_is_404(client, sagas):
    status, body = client.call("POST", f"/sagas/api/sagas/{sagas[j.COMPLETED]}/redrive", {})
    assert status == 409 and "only a FAILED saga" in body["detail"], body
    status, body = client.call("POST", f"/sagas/api/sagas/{uuid.uuid4()}/redrive", {})
    assert status == 404, body


def test_a_dag_run_leads_to_its_saga(client, sagas):
    status, body = client.call("GET", f"/sagas/api/runs/{DAG_ID}/{sagas[f'{j.COMPLETED}_run']}")
    assert status == 200, body
    assert body["saga_id"] == sagas[j.COMPLETED]
    status, _, page = fetch("GET", f"/sagas/runs/{DAG_ID}/{sagas[f'{j.COMPLETED}_run']}", token=client.token)
    assert status == 303, "the run's Saga tab opens its saga's page"
    status, _, page = fetch("GET", "/sagas/runs/inventory_transforms/scheduled__x", token=client.token)
    assert status == 200 and "drove no saga" in page, page


def test_a_projects_dbt_docs_are_served_behind_auth_saga_created_ones_too(client, sagas):
    """dbt docs per project (plugins/dbt_docs.py): the bundled project and the one the COMPLETED saga
    created are listed with their docs; nothing without a token; a project of another owner is 403."""
    created = journal().get(sagas[j.COMPLETED]).request["project_name"]
    status, _, body = fetch("GET", "/dbt-docs/api/projects")
    assert status == 401, body
    status, headers, _ = fetch("GET", f"/dbt-docs/{created}/")
    assert status == 303 and urlsplit(headers["Location"]).path.rstrip("/") == "/auth/login"

    status, listed = client.call("GET", "/dbt-docs/api/projects")
    assert status == 200, listed
    entries = {e["project"]: e for e in listed["projects"]}
    assert {created, "inventory_transforms"} <= set(entries), sorted(entries)
    assert entries[created]["links"]["docs"] == f"/dbt-docs/{created}/" and entries[created]["docs_built_at"]
    status, headers, page = fetch("GET", f"/dbt-docs/{created}/", token=client.token)
    assert status == 200, page
    assert headers["Content-Type"].startswith("text/html") and "<title>dbt Docs</title>" in page
    assert f"model.{created}.platform_heartbeat" in page, "its own manifest is inside"
    status, _, page = fetch("GET", f"/dbt-docs/{DAG_ID}/", token=client.token)
    assert status == 404 and "not a dbt project" in page, "the DAG tab of a DAG that is not a project"

    requester = client_for(STACK, LIVE_TARGET, "requester")
    status, _, page = fetch("GET", f"/dbt-docs/{created}/", token=requester.token)
    assert status == 403 and "may not read" in page, (status, page[:200])
    status, listed = requester.call("GET", "/dbt-docs/api/projects")
    assert status == 200 and created not in {e["project"] for e in listed["projects"]}


SEED_PREFIX = "console_seed__"


@pytest.fixture
def ten_thousand_sagas(client):
    """10,000 finished sagas seeded straight into the test platform database (older than any real
    one), removed afterwards."""
    journal().ensure_schema()  # what every saga does first: the journal with its indexes
    with admin(TARGET.platform_db) as conn, conn.cursor() as cur:
        cur.execute("delete from saga.sagas where run_id like %s", (SEED_PREFIX + "%",))
        cur.execute(
            """
            insert into saga.sagas (saga_id, saga_name, dag_id, run_id, request, state, first_cause,
                                    created_at, updated_at, finished_at)
            select 'seed-' || i, %(dag)s, %(dag)s, %(prefix)s || i,
                   jsonb_build_object('project_name', 'seeded_' || i, 'owner', 'seed@example.com'),
                   (array['COMPLETED', 'COMPENSATED', 'FAILED', 'COMPLETED'])[1 + i %% 4],
                   case when i %% 4 in (1, 2) then 'notify_owner: PermanentError: seeded' end,
                   t, t + interval '40 seconds', t + interval '40 seconds'
            from generate_series(1, 10000) as i,
                 lateral (select timestamptz '2020-01-01' + i * interval '1 minute' as t) as created
            """,
            {"dag": DAG_ID, "prefix": SEED_PREFIX},
        )
        cur.execute("analyze saga.sagas")  # the statistics autovacuum keeps on a journal that grew
    try:
        yield 10_000
    finally:
        with admin(TARGET.platform_db) as conn, conn.cursor() as cur:
            cur.execute("delete from saga.sagas where run_id like %s", (SEED_PREFIX + "%",))


def test_the_list_answers_in_under_a_second_with_10000_sagas(client, ten_thousand_sagas):
    queries = {
        "newest first": "/sagas/api/sagas?limit=25",
        "FAILED only": "/sagas/api/sagas?state=FAILED&limit=25",
        "the last page": "/sagas/api/sagas?limit=25&offset=9990",
    }
    status, warm = client.call("GET", queries["newest first"])  # warm-up: connections, caches
    assert status == 200, warm
    assert warm["total_entries"] >= ten_thousand_sagas
    started = [s["started_at"] for s in warm["sagas"]]
    assert started == sorted(started, reverse=True), "newest first"

    timings = {}
    for name, path in queries.items():
        began = time.perf_counter()
        status, page = client.call("GET", path)
        timings[name] = time.perf_counter() - began
        assert status == 200, page
        assert len(page["sagas"]) > 0, name
    print("list wall times:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    assert all(seconds < 1.0 for seconds in timings.values()), timings

    # Not a property of this machine's speed: every page walks an index, none sorts the journal.
    with admin(TARGET.platform_db) as conn, conn.cursor() as cur:
        for where in ("", "where state = 'FAILED'"):
            cur.execute(
                f"explain select * from saga.sagas {where} order by created_at desc, saga_id desc limit 25"
            )
            plan = "\n".join(r[0] for r in cur.fetchall())
            assert "Index Scan" in plan and "Sort" not in plan and "Seq Scan" not in plan, plan


# ------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(browser, client):
    """A browser tab logged in to Airflow as admin, through Airflow's own login page."""
    from devstack.settings import airflow_user_password

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(EXPECT_TIMEOUT_MS)
    tab.goto(f"{BASE}/")
    tab.wait_for_url("**/auth/login**")
    tab.locator("input[name=username]").fill("admin")
    tab.locator("input[name=password]").fill(airflow_user_password(STACK, "admin"))
    tab.locator("[type=submit]").first.click()
    tab.wait_for_url(lambda url: "/auth/login" not in url)
    yield tab
    context.close()


def console_frame(tab, title: str = "Sagas"):
    return tab.frame_locator(f"iframe[title='{title}']")


def shoot(tab, name: str) -> Path:
    """What the person sees: Airflow's UI with the console in it."""
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path))
    return path


def shoot_whole(tab, saga_id: str, name: str) -> Path:
    """The whole of a saga's page (every section), opened on its own in a second tab."""
    whole = tab.context.new_page()
    try:
        whole.goto(f"{BASE}/sagas/s/{saga_id}")
        whole.locator("table.resources, p.empty").first.wait_for()
        path = SCREENSHOTS / f"{name}.png"
        whole.screenshot(path=str(path), full_page=True)
        return path
    finally:
        whole.close()


def timeline_of(frame) -> list[tuple[str, str, str]]:
    rows = frame.locator("table.timeline tbody tr")
    return [
        (
            rows.nth(i).get_attribute("data-kind"),
            rows.nth(i).get_attribute("data-step"),
            rows.nth(i).get_attribute("data-state"),
        )
        for i in range(rows.count())
    ]


def test_the_sagas_view_lists_and_details_a_completed_and_a_compensated_saga(page, sagas):
    from playwright.sync_api import expect

    page.get_by_role("link", name="Sagas").click()
    page.wait_for_url("**/plugin/sagas**")
    frame = console_frame(page)
    for ending in (j.COMPLETED, j.COMPENSATED, j.FAILED):
        expect(frame.locator(f"tr[data-saga-id='{sagas[ending]}'] .badge")).to_have_text(ending)
    expect(frame.locator(f"tr[data-saga-id='{sagas[j.COMPENSATED]}'] td.cause")).to_contain_text(
        "notify_owner"
    )
    shoot(page, "sagas-list")

    frame.locator(f"tr[data-saga-id='{sagas[j.COMPLETED]}'] a.project").click()
    expect(frame.locator(".title .badge")).to_have_text(j.COMPLETED)
    assert timeline_of(frame) == [("step", step, j.SUCCEEDED) for step in ALL_STEPS]
    expect(frame.locator("table.resources")).to_contain_text("Airflow connection")
    shoot(page, "saga-completed")

    frame.get_by_role("link", name="← All sagas").click()
    frame.locator(f"tr[data-saga-id='{sagas[j.COMPENSATED]}'] a.project").click()
    expect(frame.locator(".title .badge")).to_have_text(j.COMPENSATED)
    made = ALL_STEPS[1:-1]  # validate_request has nothing to undo; notify_owner failed
    assert timeline_of(frame) == [
        *[("step", step, j.SUCCEEDED) for step in ALL_STEPS[:-1]],
        ("step", "notify_owner", j.STEP_FAILED),
        *[("compensation", step, j.STEP_COMPENSATED) for step in reversed(made)],
    ]
    expect(frame.locator(".cause-box")).to_contain_text("notify_owner: PermanentError")
    expect(frame.locator("button", has_text="Re-drive")).to_have_count(0)
    assert set(
        frame.locator("table.resources tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")
    ) == {"removed"}
    shoot(page, "saga-compensated")
    shoot_whole(page, sagas[j.COMPENSATED], "saga-compensated-whole-page")


def test_a_dag_runs_saga_tab_shows_its_saga(page, sagas):
    from playwright.sync_api import expect

    page.goto(f"{BASE}/dags/{DAG_ID}/runs/{sagas[f'{j.COMPENSATED}_run']}/plugin/saga")
    frame = console_frame(page, "Saga")
    expect(frame.locator(".title .badge")).to_have_text(j.COMPENSATED)
    expect(frame.locator(".ids")).to_contain_text(sagas[j.COMPENSATED])
    expect(frame.get_by_role("link", name="All sagas ↗")).to_have_attribute("target", "_top")
    shoot(page, "dag-run-saga-tab")


def test_a_failed_saga_is_redriven_from_the_page_and_ends_compensated(page, client, sagas):
    from playwright.sync_api import expect

    failed = sagas[j.FAILED]
    page.goto(f"{BASE}/plugin/sagas/sagas/s/{failed}")  # the Sagas view's own deep link
    frame = console_frame(page)
    expect(frame.locator(".title .badge")).to_have_text(j.FAILED)
    assert ("compensation", "setup_repository", j.COMPENSATION_FAILED) in timeline_of(frame)
    expect(frame.locator("table.resources tr[data-status^='still there']")).to_contain_text("git repository")
    shoot(page, "saga-failed")

    frame.get_by_role("button", name="Re-drive compensations…").click()
    dialog = frame.locator("dialog[open]")
    expect(dialog).to_contain_text(f'{{"saga_id": "{failed}"}}')
    shoot(page, "saga-redrive-confirm")
    dialog.get_by_role("button", name="Re-drive").click()

    expect(frame.locator(".title .badge")).to_have_text(j.COMPENSATED, timeout=240_000)
    expect(frame.locator("table.redrives")).to_contain_text("admin")
    shoot(page, "saga-redriven")
    shoot_whole(page, failed, "saga-redriven-whole-page")

    saga = journal().get(failed)
    assert saga.state == j.COMPENSATED
    assert journal().step(failed, "setup_repository").state == j.STEP_COMPENSATED
    asked = [e for e in journal().events(failed) if e["event"] == "redrive_requested"]
    assert len(asked) == 1 and asked[0]["detail"]["user"] == "admin", asked
    run_id = asked[0]["detail"]["recovery_run_id"]
    status, run = client.request("GET", f"/dags/saga_recovery/dagRuns/{run_id}")
    assert status == 200, run
    assert run["conf"] == {"saga_id": failed}
    assert run["triggering_user_name"] == "admin" and run["state"] == "success", run


def test_a_projects_dbt_docs_open_from_the_nav_bar(page, sagas):
    from playwright.sync_api import expect

    created = journal().get(sagas[j.COMPLETED]).request["project_name"]
    page.goto(f"{BASE}/")
    page.get_by_role("link", name="dbt docs").click()
    page.wait_for_url("**/plugin/dbt-docs**")
    frame = console_frame(page, "dbt docs")
    expect(frame.locator(f"tr[data-project='{created}']")).to_contain_text(created)
    expect(frame.locator("tr[data-project='inventory_transforms'] a.project")).to_be_visible()
    shoot(page, "dbt-docs-list")

    frame.locator(f"tr[data-project='{created}'] a.project").click()
    # dbt's own docs site, in the same frame: its project tree names the project's models.
    expect(frame.locator("body")).to_contain_text(created, timeout=60_000)
    expect(frame.locator("body")).to_contain_text("platform_heartbeat")
    shoot(page, "dbt-docs-project")
