"""Every side effect the workflows have, each behind a small named adapter.

    postgres.py       registry rows, databases, schemas, roles, grants: all of the platform's SQL
    git.py            repositories on a git host (one interface; the local git server today) and
                      moving commits with git
    secrets.py        connections in OpenBao or Vault, where Airflow and Cosmos read them
                      (one interface, ConnectionStore)
    notifications.py  owner notifications and operator alerts

Adapters raise the typed errors of :mod:`include.dbt_platform.errors` (or errors that
:func:`~include.dbt_platform.errors.classify` understands) so a caller knows whether a retry can help.
They import only :mod:`include.dbt_platform.config`, :mod:`include.dbt_platform.errors`, Airflow
(and its HashiCorp provider) and one another.
"""
