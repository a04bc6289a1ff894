"""The general saga machinery: steps with compensations and policies, turned into Airflow tasks.

    definition.py  RetryPolicy, Step, SagaDefinition, StepContext: what a saga is made of
    faults.py      the fault injector operators use for drills (and the tests use everywhere)
    engine.py      running a step, completing, compensating (newest first), the run's verdict
    tasks.py       the Airflow task graph built from a definition
    journal.py     the saga journal in PostgreSQL (sagas, steps, append-only events)
    recovery.py    finishing sagas that their runs left unfinished; re-driving FAILED ones
    metrics.py     saga and step outcomes and durations through Airflow's metrics layer

It knows nothing of dbt, projects or database roles: a workflow (``project_creation``) declares its
steps and hands them to this package. It imports only :mod:`include.dbt_platform.errors` and Airflow.
"""
