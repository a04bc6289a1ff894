"""The live Airflow of the scheduler tier: api-server, scheduler, dag-processor and triggerer for the
test target, started once per session when a test first asks for them (``live_airflow`` fixture).

DAGs start paused so that scheduled DAGs do not run behind the other tests' backs;
``AirflowClient.trigger`` unpauses one. Step timeouts are short so the hang tests finish in seconds
(see ``DBT_PLATFORM_SAGA_TIMEOUTS``), except register_transformations's: it runs dbt parse. The whole
saga gets room for four hung attempts of its last step with eight other sagas running beside it;
register_transformations hangs past it.
"""

from __future__ import annotations

import json

from devstack.airflow import AirflowTarget
from include.dbt_platform.project_creation.definition import definition
from tests.harness import TARGET, TEST_ROOT

LIVE_STEP_TIMEOUT = 12
LIVE_SAGA_TIMEOUTS = {
    "saga": 150,
    **{s.name: LIVE_STEP_TIMEOUT for s in definition().steps if s.name != "register_transformations"},
}
LIVE_PROJECTS_DIR = TEST_ROOT / "live_projects"  # what the live scheduler's DAG factory reads
LIVE_ENV = {
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    "DBT_PLATFORM_SCHEDULE": "none",  # transformation DAGs of earlier sessions may be unpaused
    # A test that triggers saga_recovery unpauses it; its schedule must not then race the failure
    # callback that the whole-saga timeout test proves (the sweep is proven by its own tests).
    "DBT_PLATFORM_RECOVERY_SCHEDULE": "none",
    "DBT_PLATFORM_EXECUTION_MODE": "triggerer",
    "DBT_PLATFORM_PROJECTS_DIR": str(LIVE_PROJECTS_DIR),
    "DBT_PLATFORM_SAGA_TIMEOUTS": json.dumps(LIVE_SAGA_TIMEOUTS),
    # The fault matrices trigger up to 16 sagas at once, all as one user.
    "DBT_PLATFORM_SAGAS_PER_REQUESTER": "32",
}
# Metrics (StatsD -> the stack's exporter -> Prometheus), lineage and traces: as the stack's own
# Airflow has them (devstack/observability.py), on the test target's ports.

# Its own metadata database: a scheduler sharing airflow_test would pick up the runs dag.test()
# creates there and execute their tasks itself, with this environment.
LIVE_TARGET = AirflowTarget(
    home=TEST_ROOT / "live_airflow",
    metadata_db="airflow_live_test",
    warehouse_db=TARGET.warehouse_db,
    platform_db=TARGET.platform_db,
    api_port=TARGET.api_port,
    state_dir=TARGET.state_dir,
    namespace=TARGET.namespace,  # the same OpenBao mount and git org as the in-process tests
)
