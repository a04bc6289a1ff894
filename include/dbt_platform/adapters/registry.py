"""The platform's registry of projects (platform database, schema ``platform``): who owns a name.

A project's row is written by the saga that creates it and carries that saga's id; only that saga
removes it, or a decommissioning saga retires it (into ``platform.project_history``; the name is then
free again). The registry's primary key is how exactly one of two concurrent sagas wins a name. A
lifecycle saga (add an environment, rotate credentials, decommission) claims the project
(``busy_saga``) so that two of them never work on one project at once.
"""

from __future__ import annotations

from dataclasses import dataclass

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
alter table platform.projects add column if not exists busy_saga text;
do $$ begin
    if exists (select from pg_constraint where conname = 'projects_status_check'
               and pg_get_constraintdef(oid) not like '%DECOMMISSIONING%') then
        alter table platform.projects drop constraint projects_status_check;
        alter table platform.projects add constraint projects_status_check
            check (status in ('PROVISIONING', 'ACTIVE', 'DECOMMISSIONING'));
    end if;
end $$;
create table if not exists platform.project_history (
    project_name text not null,
    saga_id text not null,
    owner text not null,
    database_name text not null,
    created_at timestamptz not null,
    retired_at timestamptz not null default clock_timestamp(),
    retired_by_saga text not null,
    database_kept boolean not null,
    primary key (project_name, saga_id)
);
"""


@dataclass(frozen=True)
class ProjectRecord:
    name: str
    saga_id: str  # the saga that created it (its markers are on what it made)
    owner: str
    database: str
    status: str
    busy_saga: str | None
    environments: dict[str, tuple[str, str]]  # environment -> (schema, the saga that made it)


class Registry(Postgres):
    """Registry rows, through the platform database's connection (reads and writes of ``platform.*``)."""

    service = "platform database"

    def ensure_registry(self) -> None:
        with self.transaction() as cur:
            cur.execute("select to_regclass('platform.project_history') is not null")
            if cur.fetchone()[0]:
                return  # this version's tables are there
            cur.execute("select pg_advisory_xact_lock(hashtext('platform-registry-schema'))")
            cur.execute(REGISTRY_SQL)

    def project(self, name: str) -> ProjectRecord | None:
        with self.cursor() as cur:
            cur.execute(
                "select project_name, saga_id, owner, database_name, status, busy_saga "
                "from platform.projects where project_name = %s",
                (name,),
            )
            row = cur.fetchone()
            if row is None:
                return None
            cur.execute(
                "select environment, schema_name, saga_id from platform.environments where project_name = %s",
                (name,),
            )
            environments = {env: (schema, saga) for env, schema, saga in cur.fetchall()}
        return ProjectRecord(*row, environments=environments)

    def describe(self, names: set[str] | None = None) -> list[dict]:
        """Every project (or those of ``names``) as a reader sees it: its state, owner, database,
        environments, and its history (earlier projects of the name, decommissioned); newest first."""
        with self.cursor() as cur:
            cur.execute(
                "select p.project_name, p.status, p.owner, p.database_name, p.saga_id, p.busy_saga, "
                "p.created_at, coalesce((select json_agg(json_build_object('environment', e.environment, "
                "'schema', e.schema_name, 'saga_id', e.saga_id) order by e.environment) "
                "from platform.environments e where e.project_name = p.project_name), '[]') "
                "from platform.projects p where %(all)s or p.project_name = any(%(names)s)",
                {"all": names is None, "names": sorted(names or ())},
            )
            current = [
                {"project_name": n, "state": status, "owner": owner, "database": db,
                 "created_by_saga": saga, "busy_saga": busy, "created_at": created.isoformat(),
                 "environments": envs}
                for n, status, owner, db, saga, busy, created, envs in cur.fetchall()
            ]  # fmt: skip
            cur.execute(
                "select project_name, owner, database_name, saga_id, created_at, retired_at, "
                "retired_by_saga, database_kept from platform.project_history "
                "where %(all)s or project_name = any(%(names)s) order by retired_at desc",
                {"all": names is None, "names": sorted(names or ())},
            )
            history = [
                {"project_name": n, "state": "DECOMMISSIONED", "owner": owner, "database": db,
                 "created_by_saga": saga, "created_at": created.isoformat(),
                 "decommissioned_at": retired.isoformat(), "decommissioned_by_saga": by,
                 "database_kept": kept}
                for n, owner, db, saga, created, retired, by, kept in cur.fetchall()
            ]  # fmt: skip
        return sorted(current, key=lambda p: p["created_at"], reverse=True) + history

    def claim(
        self, name: str, saga_id: str, *, status_from: str = "ACTIVE", status_to: str | None = None
    ) -> bool:
        """Take the project for a lifecycle saga (idempotent for the same saga). False if another has it
        or it is not in ``status_from``."""
        with self.cursor() as cur:
            cur.execute(
                "update platform.projects set busy_saga = %s, status = coalesce(%s, status) "
                "where project_name = %s and (busy_saga = %s or (busy_saga is null and status = %s)) "
                "returning 1",
                (saga_id, status_to, name, saga_id, status_from),
            )
            return cur.fetchone() is not None

    def release(self, name: str, saga_id: str, *, status: str | None = None) -> None:
        """Give the project back (and set its status), if ``saga_id`` has it."""
        with self.cursor() as cur:
            cur.execute(
                "update platform.projects set busy_saga = null, status = coalesce(%s, status) "
                "where project_name = %s and busy_saga = %s",
                (status, name, saga_id),
            )

    def retire(self, name: str, saga_id: str, *, database_kept: bool) -> None:
        """Into the history, out of the registry (the name is free again); only by the saga holding it."""
        with self.transaction() as cur:
            cur.execute(
                "insert into platform.project_history (project_name, saga_id, owner, database_name, "
                "created_at, retired_by_saga, database_kept) select project_name, saga_id, owner, "
                "database_name, created_at, %s, %s from platform.projects where project_name = %s "
                "and busy_saga = %s on conflict do nothing",
                (saga_id, database_kept, name, saga_id),
            )
            cur.execute(
                "delete from platform.environments where project_name = %s and exists (select from "
                "platform.projects where project_name = %s and busy_saga = %s)",
                (name, name, saga_id),
            )
            cur.execute(
                "delete from platform.projects where project_name = %s and busy_saga = %s", (name, saga_id)
            )

    def delete_environment(self, name: str, env: str, saga_id: str) -> None:
        with self.cursor() as cur:
            cur.execute(
                "delete from platform.environments where project_name = %s and environment = %s and saga_id = %s",
                (name, env, saga_id),
            )

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
