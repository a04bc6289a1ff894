"""Every side effect the workflows have, each behind a small named adapter.

    postgres.py       registry rows, databases, schemas, roles, grants: all of the platform's SQL
    git.py            project repositories with a dbt scaffold
    secrets.py        the connections a saga creates, where Airflow and Cosmos read them
    notifications.py  owner notifications and operator alerts

Adapters raise the typed errors of :mod:`include.dbt_platform.errors` (or errors that
:func:`~include.dbt_platform.errors.classify` understands) so a caller knows whether a retry can help.
They import only :mod:`include.dbt_platform.config`, :mod:`include.dbt_platform.errors` and Airflow.
"""
