"""The rest of a project's life, each a saga on the same machinery as its creation.

    requests.py            the requests (DAG params, strict parsing)
    common.py              what they share: finding the project, claiming it, telling its owner
    add_environment.py     ``dbt_project_add_environment``: schema, login role, connection, grants
    rotate_credentials.py  ``dbt_project_rotate_credentials``: new passwords, connections updated
    decommission.py        ``dbt_project_decommission``: unregister, archive, drop, retire the name

Each declares its steps in order with their compensations and policies, like
``project_creation/definition.py``. It imports the saga machinery, the adapters, ``config``,
``errors``, ``project_creation`` (the names a project's resources carry) and ``transformations``.
"""
