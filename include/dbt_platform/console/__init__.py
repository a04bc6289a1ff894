"""The saga console: the Sagas view of the Airflow UI, served by Airflow's api-server as a plugin.

    app.py           the FastAPI app under /sagas: the pages and their JSON API (list, detail, re-drive)
    access.py        who the caller is and what they may do: Airflow's authentication and auth manager
    runs.py          the Airflow side: the DAG runs behind sagas (who triggered them), the re-drive run
    presentation.py  what a person sees: durations, timelines, resources, requests with secrets hidden
    projects.py      projects through REST (state, owner, environments)
    docs.py          each project's dbt docs, under /dbt-docs (mounted by ``plugins/dbt_docs.py``)
    templates/       the page shells;  static/  script, styles and icons

``plugins/saga_console.py`` mounts the app and adds the UI entries (the "Sagas" nav link, the "Saga"
tab of a DAG run). It reads the journal through :mod:`include.dbt_platform.saga.journal_views`; its
one write is the ``redrive_requested`` event of a re-drive. Nothing here runs in a task.
"""
