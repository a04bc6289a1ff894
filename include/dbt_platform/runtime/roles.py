"""Who may do what: the platform's Airflow role, and (for a stack's setup) its users.

Airflow's FAB auth manager has ``Admin`` (everything, ``warehouse_setup`` included), ``Viewer`` (reads
everything, changes nothing) and more. The platform adds ``Requester``: it may trigger the
project-lifecycle DAGs (create, add an environment, rotate credentials, decommission), which grant it
that through their ``access_control``, and read them, their runs and logs; it sees no other DAG
(no global read of DAGs) and may not trigger ``warehouse_setup``.

    python -m include.dbt_platform.runtime.roles < users.json

creates or updates the ``Requester`` role, then every user of ``users.json`` (a list of
``{"username", "role", "password"}``, read from stdin so that no password is in a command line or an
environment). Run it after ``airflow db migrate`` and before the dag-processor syncs DAG permissions.
"""

from __future__ import annotations

import json
import sys

from include.dbt_platform.config import REQUESTER_ROLE

# The Viewer's permissions, less reading every DAG (its code, its dependencies), plus creating runs:
# the run of a DAG the role may edit (what access_control grants it on the lifecycle DAGs).
_DROPPED_FROM_VIEWER = {("can_read", "DAGs"), ("can_read", "DAG Code"), ("can_read", "DAG Dependencies")}
_ADDED = {("can_create", "DAG Runs")}


def requester_permissions(viewer_permissions: list[tuple[str, str]]) -> set[tuple[str, str]]:
    return {*viewer_permissions} - _DROPPED_FROM_VIEWER | _ADDED


def ensure(users: list[dict]) -> None:
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        role = sm.find_role(REQUESTER_ROLE) or sm.add_role(REQUESTER_ROLE)
        for action, resource in sorted(requester_permissions(sm.VIEWER_PERMISSIONS)):
            sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for user in users:
            wanted = sm.find_role(user["role"])
            if wanted is None:
                raise SystemExit(f"no role {user['role']!r} for user {user['username']!r}")
            existing = sm.find_user(username=user["username"])
            if existing is None:
                name = user["username"]
                created = sm.add_user(
                    name, name.title(), "User", f"{name}@example.com", wanted, user["password"]
                )
                if not created:
                    raise SystemExit(f"could not create user {name!r}")
            else:
                existing.roles = [wanted]
                sm.update_user(existing)
                sm.reset_password(existing.id, user["password"])


def main() -> None:
    ensure(json.loads(sys.stdin.read() or "[]"))
    print(f"role {REQUESTER_ROLE} and the users are in place")


if __name__ == "__main__":
    main()
