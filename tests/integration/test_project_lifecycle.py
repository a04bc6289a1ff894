"""The rest of a project's life, on real PostgreSQL, OpenBao, git server, dbt and Airflow runs (``dag.test()``):
add an environment, rotate credentials, decommission, create again with the same name; and each
lifecycle saga's fault matrix, checked against the leak inventory."""

from __future__ import annotations

from contextlib import closing

import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.config import REPO_ROOT
from include.dbt_platform.project_lifecycle import add_environment, decommission, rotate_credentials
from include.dbt_platform.saga import journal as j
from tests.harness import STACK, TARGET, query, registered_dagbag
from tests.saga_support import (
    admin,
    inventory,
    journal,
    request,
    run_saga,
    stored_password,
    undo_completed_sagas,
    uniq,
)

ADD, ROTATE, DECOMMISSION = (
    "dbt_project_add_environment",
    "dbt_project_rotate_credentials",
    "dbt_project_decommission",
)


@pytest.fixture(scope="module")
def dags():
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags


def can_login(role: str, password: str, database: str) -> bool:
    try:
        psycopg2.connect(
            host="127.0.0.1", port=STACK.pg_port, dbname=database, user=role, password=password
        ).close()
        return True
    except psycopg2.OperationalError:
        return False


def project_row(name: str):
    with admin(TARGET.platform_db) as conn:
        rows = query(conn, "select status, busy_saga from platform.projects where project_name = %s", (name,))
    return rows[0] if rows else None


def create(dags, name: str, **overrides) -> str:
    run, states, saga_id = run_saga(dags["dbt_project_create"], request(name, **overrides))
    assert run.state == "success", states
    return saga_id


def lifecycle(dags, dag_id: str, conf: dict):
    conf = {"idempotency_key": None, "fault_injection": None, **conf}
    return run_saga(dags[dag_id], conf)


def test_a_project_lives_grows_rotates_is_decommissioned_and_its_name_is_free_again(
    dags, warehouse, tmp_path
):
    name = uniq("life")
    before = inventory()
    create(dags, name, environments=["dev"])
    old_dev = stored_password(f"dbt_{name}_dev")

    # A new environment: schema, role, connection, grants; the DAG now targets it (prod is primary).
    run, states, _ = lifecycle(dags, ADD, {"project_name": name, "environment": "prod"})
    assert run.state == "success", states
    after_add = inventory()
    assert f"{name}_prod" in after_add["schemas"][f"dbt_{name}"]
    assert f"{name}_prod_rw" in after_add["roles"] and f"dbt_{name}_prod" in after_add["connections"]
    prod_pw = stored_password(f"dbt_{name}_prod")
    assert can_login(f"{name}_prod_rw", prod_pw, f"dbt_{name}") and not can_login(
        f"{name}_prod_rw", prod_pw, TARGET.warehouse_db
    )
    prod = psycopg2.connect(
        host="127.0.0.1", port=STACK.pg_port, dbname=f"dbt_{name}", user=f"{name}_prod_rw", password=prod_pw
    )
    with closing(prod), prod, prod.cursor() as cur:
        cur.execute(f"create table {name}_prod.t (id int)")  # creates in its own schema
    bag = registered_dagbag(tmp_path / "bundle")
    project_dag = bag.dags[name]
    assert "prod" in project_dag.tasks[0].profile_config.profile_mapping.conn_id
    assert project_dag.test().state == "success", "the transformation DAG runs in the new environment"
    assert project_row(name) == ("ACTIVE", None), "the project is free again"

    # Rotation: the old passwords stop working, the connections hold the new ones, the DAG still runs.
    run, states, _ = lifecycle(dags, ROTATE, {"project_name": name, "environments": []})
    assert run.state == "success", states
    new_dev = stored_password(f"dbt_{name}_dev")
    assert new_dev != old_dev and stored_password(f"dbt_{name}_prod") != prod_pw
    assert not can_login(f"{name}_dev_rw", old_dev, f"dbt_{name}") and not can_login(
        f"{name}_prod_rw", prod_pw, f"dbt_{name}"
    )
    assert can_login(f"{name}_dev_rw", new_dev, f"dbt_{name}")
    assert registered_dagbag(tmp_path / "bundle").dags[name].test().state == "success"
    assert inventory()["rotations"] == before["rotations"], "old passwords forgotten"

    # Decommission, dropping the database: nothing is left but the archive and the history row.
    run, states, saga_id = lifecycle(dags, DECOMMISSION, {"project_name": name, "drop_database": True})
    assert run.state == "success", states
    gone = inventory()
    assert {k: v for k, v in gone.items() if k != "repositories"} == {
        k: v for k, v in before.items() if k != "repositories"
    }
    archived = f"{name}.archived-{saga_id.replace('-', '')[:12]}"
    assert [r for r in gone["repositories"] if r not in before["repositories"]] == [archived]
    assert name not in registered_dagbag(tmp_path / "bundle").dags
    with admin(TARGET.platform_db) as conn:
        assert query(
            conn, "select database_kept from platform.project_history where project_name = %s", (name,)
        ) == [(False,)]

    # The name is free again.
    create(dags, name, environments=["dev"])
    assert project_row(name) == ("ACTIVE", None)


def test_decommission_keeps_the_database_unless_asked(dags):
    name = uniq("keep")
    create(dags, name, environments=["dev"])
    dev = psycopg2.connect(host="127.0.0.1", port=STACK.pg_port, dbname=f"dbt_{name}", user=f"{name}_dev_rw",
                           password=stored_password(f"dbt_{name}_dev"))  # fmt: skip
    with closing(dev), dev, dev.cursor() as cur:
        cur.execute(f"create table {name}_dev.precious as select 42 as answer")
    # Every param explicit: dag.test() keeps the value an earlier run's conf gave one left out.
    run, states, _ = lifecycle(dags, DECOMMISSION, {"project_name": name, "drop_database": False})
    assert run.state == "success", states
    left = inventory()
    assert f"dbt_{name}" in left["databases"] and not [r for r in left["roles"] if r.startswith(f"{name}_")]
    with admin(f"dbt_{name}") as conn:  # the data is kept, owned by the platform now
        assert query(conn, f"select answer from {name}_dev.precious") == [(42,)]
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f"drop database dbt_{name}")


ADD_STEPS = [s.name for s in add_environment.definition().steps]
ROTATE_STEPS = [s.name for s in rotate_credentials.definition().steps]
DECOMMISSION_STEPS = [s.name for s in decommission.definition().steps]
PIVOT = DECOMMISSION_STEPS.index("drop_roles")


@pytest.fixture(scope="module")
def project_for_faults(dags):
    name = uniq("faults")
    create(dags, name, environments=["dev"])
    return name


@pytest.mark.parametrize(
    ("dag_id", "step"), [(ADD, s) for s in ADD_STEPS] + [(ROTATE, s) for s in ROTATE_STEPS]
)
def test_a_permanent_fault_in_a_lifecycle_saga_leaves_the_project_as_it_was(
    dags, project_for_faults, dag_id, step
):
    name = project_for_faults
    conf = {"project_name": name, "fault_injection": {"step": step, "mode": "permanent"}}
    conf |= {"environment": "staging"} if dag_id == ADD else {"environments": ["dev"]}
    before, dev_pw = inventory(), stored_password(f"dbt_{name}_dev")
    run, states, saga_id = lifecycle(dags, dag_id, conf)
    assert run.state == "failed" and states[step] == "failed", states
    assert journal().get(saga_id).state == j.COMPENSATED
    assert journal().step(saga_id, step).attempts == 1
    assert inventory() == before
    assert stored_password(f"dbt_{name}_dev") == dev_pw and can_login(f"{name}_dev_rw", dev_pw, f"dbt_{name}")
    assert project_row(name) == ("ACTIVE", None), "the project is free again"


@pytest.mark.parametrize("step", ROTATE_STEPS)
def test_a_transient_fault_in_a_rotation_is_retried_and_the_rotation_completes(
    dags, project_for_faults, step
):
    name = project_for_faults
    old = stored_password(f"dbt_{name}_dev")
    conf = {"project_name": name, "environments": ["dev"]}
    conf["fault_injection"] = {"step": step, "mode": "transient", "times": 1}
    run, states, saga_id = lifecycle(dags, ROTATE, conf)
    assert run.state == "success", states
    assert journal().get(saga_id).state == j.COMPLETED
    assert journal().step(saga_id, step).attempts == 2
    new = stored_password(f"dbt_{name}_dev")
    assert new != old and can_login(f"{name}_dev_rw", new, f"dbt_{name}")
    assert not can_login(f"{name}_dev_rw", old, f"dbt_{name}"), "the old password stops working"
    assert project_row(name) == ("ACTIVE", None)


def test_a_transient_fault_while_adding_an_environment_is_retried_without_a_second_copy(
    dags, project_for_faults
):
    name = project_for_faults
    conf = {"project_name": name, "environment": "prod"}
    conf["fault_injection"] = {"step": "create_credentials", "mode": "transient", "times": 2}
    run, states, saga_id = lifecycle(dags, ADD, conf)
    assert run.state == "success", states
    assert journal().step(saga_id, "create_credentials").attempts == 3
    after = inventory()
    assert [r for r in after["roles"] if r.startswith(f"{name}_prod")] == [f"{name}_prod_rw"]
    assert [c for c in after["connections"] if c.startswith(f"dbt_{name}_prod")] == [f"dbt_{name}_prod"]
    assert can_login(f"{name}_prod_rw", stored_password(f"dbt_{name}_prod"), f"dbt_{name}")


@pytest.mark.parametrize("step", DECOMMISSION_STEPS)
def test_decommission_undoes_a_fault_before_its_pivot_and_goes_forward_after_it(dags, step, tmp_path):
    name = uniq("dec")
    create(dags, name, environments=["dev", "prod"])
    dev_pw = stored_password(f"dbt_{name}_dev")
    before = inventory()
    conf = {
        "project_name": name,
        "drop_database": True,
        "fault_injection": {"step": step, "mode": "permanent"},
    }
    run, states, saga_id = lifecycle(dags, DECOMMISSION, conf)
    assert run.state == "failed" and states[step] == "failed", states
    saga = journal().get(saga_id)
    if DECOMMISSION_STEPS.index(step) <= PIVOT:
        assert saga.state == j.COMPENSATED
        assert inventory() == before, "the project is as it was"
        assert can_login(f"{name}_dev_rw", dev_pw, f"dbt_{name}")
        assert project_row(name) == ("ACTIVE", None)
        assert name in registered_dagbag(tmp_path / "bundle").dags, "registered again"
    else:  # past the pivot: the run's failure callback went forward (dag.test() runs it too)
        assert saga.state == j.COMPLETED
        gone = inventory()
        assert f"dbt_{name}" not in gone["databases"] and name not in gone["projects"]
        assert not [r for r in gone["roles"] if r.startswith(f"{name}_")]
        assert not [c for c in gone["connections"] if name in c]
        assert {s.step_name for s in journal().steps(saga_id) if s.state != j.SUCCEEDED} == set()


def test_two_lifecycle_sagas_never_work_on_one_project_at_once(dags):
    name = uniq("busy")
    create(dags, name, environments=["dev"])
    # A rotation holds the project (it stops, failed, at its notification; its claim is given back).
    # While it holds it, nothing else gets in: shown by claiming directly as a second saga would.
    from include.dbt_platform.project_lifecycle import common

    assert common.registry().claim(name, "saga-one")
    assert not common.registry().claim(name, "saga-two")
    run, states, saga_id = lifecycle(dags, ADD, {"project_name": name, "environment": "prod"})
    assert run.state == "failed" and states["validate_request"] == "failed"
    assert "busy with saga saga-one" in journal().step(saga_id, "validate_request").error
    common.registry().release(name, "saga-one")
    run, states, _ = lifecycle(dags, ADD, {"project_name": name, "environment": "prod"})
    assert run.state == "success", states


@pytest.fixture(autouse=True, scope="module")
def _clean_up_created_projects():
    yield
    undo_completed_sagas()
