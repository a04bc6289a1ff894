"""dbt platform on Apache Airflow: what the DAG files in ``dags/`` import.

One package per job; each says in its docstring what lives there and what it may import.

    config.py          the only reader of environment variables and platform settings
    errors.py          the error taxonomy: transient (retry), permanent, invalid request, conflict...
    boundaries.py      the points between two statements of one effect, where drills crash a step
    sagas.py           every saga the platform runs, by name
    saga/              the general saga machinery: definition, engine, journal, recovery, metrics
    project_creation/  the ``dbt_project_create`` saga: its request, its steps, its definition
    project_lifecycle/ the rest of a project's life: add an environment, rotate, decommission
    adapters/          every side effect: PostgreSQL, git, secrets, notifications
    transformations/   dbt projects -> Cosmos DAGs: discovery, manifests, Cosmos config, factory,
                       the triggerer-mode (watcher) operators
    warehouse_setup/   the ``warehouse_setup`` DAG's SQL, dbt runs, report and Airflow glue
    runtime/           what runs inside Airflow's own processes (the triggerer patch)

Imports go downwards only: ``config`` and ``errors`` import nothing of ours; ``saga`` imports only them;
``adapters`` import ``config`` and ``errors``; the workflow packages import those below them. Nothing
here imports the development tooling in ``devstack/``.
"""
