"""Who may do what: the platform's Airflow role, and (for a stack's setup) its users.

Airflow's FAB auth manager has ``Admin`` (everything, ``warehouse_setup`` included), ``Viewer`` (reads
everything, changes nothing) and more. The platform adds ``Requester``: it may trigger the
project-lifecycle DAGs (create, add an environment, rotate credentials, decommission), which grant it
that through their ``access_control``, and read them, their runs and logs; it sees no other DAG
(no global read of DAGs) and may not trigger ``warehouse_setup``.

Owners: a project DAG grants the role ``owner:<owner e-mail>`` (a person or a team) read, pause and
trigger rights on itself, when that role exists (the saga checks at registration). So a requester
sees the DAGs of the owners whose roles they hold, and no one else's. An owner role carries no
permission of its own: an admin creates it and adds the team's people to it (or lists it here).

``Platform`` is the service account's role (user ``dbt-platform``): read roles, read and edit (pause)
DAGs, read DAG runs. What a saga changes in Airflow itself goes through the API as that account
(:mod:`include.dbt_platform.adapters.airflow_api`).

    python -m include.dbt_platform.runtime.roles < users.json

creates or updates the ``Requester`` and ``Platform`` roles, then every user of ``users.json`` (a list
of ``{"username", "roles", "password"}``; a listed ``owner:`` role is created when missing), read from
stdin so that no password is in a command line or an environment. Run it after ``airflow db migrate``
and before the dag-processor syncs DAG permissions.
"""

from __future__ import annotations

import json
import sys

from include.dbt_platform.adapters.airflow_api import OWNER_ROLE_PREFIX
from include.dbt_platform.config import PLATFORM_ROLE, REQUESTER_ROLE

# The Viewer's permissions, less reading every DAG (its code, its dependencies), plus creating runs:
# the run of a DAG the role may edit (what access_control grants it on the lifecycle DAGs).
_DROPPED_FROM_VIEWER = {("can_read", "DAGs"), ("can_read", "DAG Code"), ("can_read", "DAG Dependencies")}
_ADDED = {("can_create", "DAG Runs")}
PLATFORM_PERMISSIONS = {
    ("can_read", "Roles"),
    ("can_read", "DAGs"),
    ("can_edit", "DAGs"),
    ("can_read", "DAG Runs"),
}


def requester_permissions(viewer_permissions: list[tuple[str, str]]) -> set[tuple[str, str]]:
    return {*viewer_permissions} - _DROPPED_FROM_VIEWER | _ADDED


def ensure(users: list[dict]) -> None:
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        for name, permissions in (
            (REQUESTER_ROLE, requester_permissions(sm.VIEWER_PERMISSIONS)),
            (PLATFORM_ROLE, PLATFORM_PERMISSIONS),
        ):
            role = sm.find_role(name) or sm.add_role(name)
            for action, resource in sorted(permissions):
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for user in users:
            wanted = []
            for role_name in user["roles"]:
                role = sm.find_role(role_name)
                if role is None and role_name.startswith(OWNER_ROLE_PREFIX):
                    role = sm.add_role(role_name)  # no permission of its own: project DAGs grant them
                if role is None:
                    raise SystemExit(f"no role {role_name!r} for user {user['username']!r}")
                wanted.append(role)
            existing = sm.find_user(username=user["username"])
            if existing is None:
                name = user["username"]
                created = sm.add_user(
                    name, name.title(), "User", user.get("email") or f"{name}@example.com", wanted,
                    user["password"],
                )  # fmt: skip
                if not created:
                    raise SystemExit(f"could not create user {name!r}")
            else:
                existing.roles = wanted
                sm.update_user(existing)
                sm.reset_password(existing.id, user["password"])


def main() -> None:
    ensure(json.loads(sys.stdin.read() or "[]"))
    print(f"roles {REQUESTER_ROLE} and {PLATFORM_ROLE} and the users are in place")


if __name__ == "__main__":
    main()
