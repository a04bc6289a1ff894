"""``warehouse_setup`` (SPEC workflow 3): bootstrap a dbt project's warehouse schema.

``complete``: clear ``stg_``/``int_``/``fct_``/``dim_`` relations, load every seed, run foundation
models, run configuration models, validate, report. ``quick``: no clearing, only seeds whose file
changed (or whose table is missing). ``status``: a read-only report.

Model groups: *foundation* models are those tagged ``foundation``; if no model has that tag, every
model under ``models/staging/``. *Configuration* models are those tagged ``configuration``; if no
model has that tag, every other model. Data-quality checks live in the project's ``platform.yml``::

    checks:
      - name: no_orphan_applications
        severity: error          # error fails the run; warn only reports
        sql: select count(*) from {{ schema }}.fct_applications where owner_email is null

Each check's SQL returns the number of offending rows. Every failure that users commonly hit raises
:class:`WarehouseSetupError` with a message that says what to do.

    sql.py       everything it asks of the warehouse: relations, row counts, locks, dropping, checks
    dbt_runs.py  what it asks of dbt: seeds (and which changed), model groups, compile check
    report.py    the checks a project declares, and the report (Markdown) of a run
    steps.py     the six steps, as plain functions of a project and a mode
    tasks.py     the Airflow glue: a task per step, the report task

It imports ``transformations`` (projects, the one dbt runner), the Postgres adapter and ``config``.
"""

MODES = ("complete", "quick", "status")


class WarehouseSetupError(Exception):
    """A failure with a message that tells the operator what to do."""
