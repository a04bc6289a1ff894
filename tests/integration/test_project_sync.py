"""Pushes take effect, in process (``dag.test()``): an owner pushes to their project's repository on
the git server, ``project_sync`` deploys the commit into the registered-projects bundle, and the
project's DAG, loaded from that bundle, shows the new model as a task and runs it. A push dbt cannot
parse is kept out: the last good version keeps running and the DAG's doc says why.
(tests/scheduler/test_pushes_on_scheduler.py shows the same on a real dag-processor and scheduler.)"""

from __future__ import annotations

import pytest
from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.transformations import bundle
from tests.harness import git_admin, registered_dagbag
from tests.saga_support import (
    BROKEN_MODEL,
    NEW_MODEL,
    admin,
    push,
    query,
    request,
    run_saga,
    undo_completed_sagas,
    uniq,
)


@pytest.fixture(scope="module")
def sync_dag():
    return DagBag(dag_folder=str(REPO_ROOT / "dags" / "project_sync.py")).dags["project_sync"]


@pytest.fixture(scope="module")
def project(saga_dag) -> str:
    name = uniq("pushy")
    run, states, _ = run_saga(saga_dag, request(name, environments=["dev"]))
    assert run.state == "success", states
    return name


def model_tasks(dag) -> set[str]:
    return {t.task_id for t in dag.tasks}


def test_a_pushed_model_becomes_a_task_and_runs(project, sync_dag, tmp_path):
    name = project
    before = registered_dagbag(tmp_path / "before").dags[name]
    assert not any("owner_model" in t for t in model_tasks(before))

    commit = push(name, {"models/example/owner_model.sql": NEW_MODEL}, "Add owner_model")
    run = sync_dag.test(run_conf={"projects": []})
    assert run.state == "success"
    assert bundle.registered(git_admin())[name].deployed == commit

    after = registered_dagbag(tmp_path / "after").dags[name]
    assert [t for t in model_tasks(after) if "owner_model" in t], model_tasks(after)
    assert f"running commit `{commit}`" in after.doc_md and "Warning" not in after.doc_md
    assert after.test().state == "success"
    with admin(f"dbt_{name}") as conn:  # built by the project's own role, from the pushed SQL
        assert query(conn, f"select note from {name}_dev.owner_model") == [("pushed by the owner",)]


def test_a_push_dbt_cannot_parse_keeps_the_last_good_version_and_says_why(project, sync_dag, tmp_path):
    name = project
    good = bundle.registered(git_admin())[name].deployed
    bad = push(name, {"models/example/broken.sql": BROKEN_MODEL}, "A broken model")
    run = sync_dag.test(run_conf={"projects": [name]})
    assert run.state == "success", "an owner's bad push is not the platform's failure"
    project_state = bundle.registered(git_admin())[name]
    assert project_state.deployed == good and project_state.rejected["commit"] == bad
    assert "broken" in project_state.rejected["reason"]

    dag = registered_dagbag(tmp_path / "kept").dags[name]
    assert not [t for t in model_tasks(dag) if "broken" in t], "the bad version is not rendered"
    assert f"the latest push `{bad[:12]}` is not running" in dag.doc_md
    assert f"still runs `{good[:12]}`" in dag.doc_md and "broken" in dag.doc_md
    assert dag.test().state == "success", "the last good version still runs"
    # The same bad commit is not tried again; the fix is deployed and the warning goes.
    assert sync_dag.test(run_conf={"projects": [name]}).state == "success"
    fixed = push(name, {"models/example/broken.sql": None}, "Remove the broken model")
    assert sync_dag.test(run_conf={"projects": [name]}).state == "success"
    project_state = bundle.registered(git_admin())[name]
    assert project_state.deployed == fixed and project_state.rejected is None
    assert "Warning" not in registered_dagbag(tmp_path / "fixed").dags[name].doc_md


def test_a_docs_page_an_earlier_version_stored_in_the_bundle_goes_at_the_next_start(project):
    """Earlier versions stored each project's 2.3 MB docs page in the bundle; ``bundle.ensure`` (run
    at every start of the stack) removes them, and leaves the project's manifest."""
    from include.dbt_platform.adapters import git

    host = git_admin()
    page = f"{bundle.PROJECTS}/{project}/target/static_index.html"

    def plant(tree):
        (tree / page).write_text("<html>stored by an earlier version</html>")
        return "An earlier version's docs page"

    assert git.update(bundle.url(host), host, plant)
    bundle.ensure(host)
    with git.fetched(bundle.url(host), host) as (tree, _):
        assert not (tree / page).exists()
        assert (tree / bundle.PROJECTS / project / "target" / "manifest.json").exists()
    assert bundle.registered(host)[project].deployed, "the project is still registered"


@pytest.fixture(autouse=True, scope="module")
def _clean_up_created_projects():
    yield
    undo_completed_sagas()
