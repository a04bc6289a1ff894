"""dbt projects become Cosmos DAGs: one DAG per project under ``dbt_projects/`` and per registered one.

    projects.py       discovery: what a project is, ``platform.yml`` (read and written only here)
    dbt.py            the one way the platform runs dbt itself (manifests, warehouse_setup)
    manifests.py      ``dbt deps`` (declared packages) + ``dbt parse`` -> ``target/manifest.json``,
                      (``make manifests``); the project's dbt docs page, built from the manifest
    failures.py       why a dbt run failed and whether a retry can help (no retry when not)
    cosmos_config.py  every Cosmos configuration object, built in one place
    factory.py        the DAG factory (``dags/transformations.py``, the bundle's ``registered_projects.py``)
                      and the import-error report
    bundle.py         the registered-projects bundle on the git server (its DAG files: bundle_files/)
    sync.py           pushes take effect: a project's newest commit deployed into the bundle
    assets.py         stable Airflow assets per model, for data-aware scheduling
    marts_report.py   what the example downstream DAG computes
    lineage.py        OpenLineage events per model in the triggerer mode (LOCAL: the provider's own)
    tracing.py        one OpenTelemetry trace per run: the run, each dbt invocation, each node
    watcher/          the ``triggerer`` execution mode (the default): one dbt build, node tasks in
                      the triggerer

It imports :mod:`include.dbt_platform.config`, :mod:`include.dbt_platform.errors`,
:mod:`include.dbt_platform.observability`, the Postgres and git adapters, Cosmos, dbt and Airflow.
"""
