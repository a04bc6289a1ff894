"""The platform's registry of projects (platform database, schema ``platform``): who owns a name.

A project's row is written by the saga that creates it and carries that saga's id; only that saga
removes it. The registry's primary key is how exactly one of two concurrent sagas wins a name.
"""

from __future__ import annotations

from include.dbt_platform.adapters.postgres import Postgres
from include.dbt_platform.boundaries import boundary
from include.dbt_platform.errors import Conflict

REGISTRY_SQL = """
create schema if not exists platform;
create table if not exists platform.projects (
    project_name text primary key,
    saga_id text not null,
    owner text not null,
    database_name text not null,
    status text not null check (status in ('PROVISIONING', 'ACTIVE')),
    created_at timestamptz not null default clock_timestamp()
);
create table if not exists platform.environments (
    project_name text not null,
    environment text not null,
    schema_name text not null,
    saga_id text not null,
    primary key (project_name, environment)
);
"""


class Registry(Postgres):
    """Registry rows, through the platform database's connection (reads and writes of ``platform.*``)."""

    def ensure_registry(self) -> None:
        with self.transaction() as cur:
            cur.execute("select pg_advisory_xact_lock(hashtext('platform-registry-schema'))")
            cur.execute(REGISTRY_SQL)

    def project_owner_saga(self, name: str) -> str | None:
        with self.cursor() as cur:
            cur.execute("select saga_id from platform.projects where project_name = %s", (name,))
            row = cur.fetchone()
            return row[0] if row else None

    def projects_using_database(self, database: str) -> dict[str, str]:
        """Project name -> saga id of every registered project whose database is ``database``."""
        with self.cursor() as cur:
            cur.execute(
                "select project_name, saga_id from platform.projects where database_name = %s", (database,)
            )
            return dict(cur.fetchall())

    def insert_project(self, name: str, saga_id: str, owner: str, database: str) -> None:
        with self.cursor() as cur:
            cur.execute(
                "insert into platform.projects (project_name, saga_id, owner, database_name, status) "
                "values (%s, %s, %s, %s, 'PROVISIONING') on conflict (project_name) do nothing "
                "returning saga_id",
                (name, saga_id, owner, database),
            )
            if cur.fetchone() is None and self.project_owner_saga(name) != saga_id:
                raise Conflict(f"project name '{name}' is already taken")
        boundary("registry row inserted")

    def set_project_status(self, name: str, saga_id: str, status: str) -> None:
        with self.cursor() as cur:
            cur.execute(
                "update platform.projects set status = %s where project_name = %s and saga_id = %s",
                (status, name, saga_id),
            )

    def delete_project(self, name: str, saga_id: str) -> None:
        with self.transaction() as cur:
            cur.execute(
                "delete from platform.environments where project_name = %s and saga_id = %s", (name, saga_id)
            )
            cur.execute(
                "delete from platform.projects where project_name = %s and saga_id = %s", (name, saga_id)
            )

    def record_environment(self, name: str, env: str, schema: str, saga_id: str) -> None:
        with self.cursor() as cur:
            cur.execute(
                "insert into platform.environments values (%s, %s, %s, %s) on conflict do nothing",
                (name, env, schema, saga_id),
            )
