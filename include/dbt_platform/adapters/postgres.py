"""PostgreSQL adapter: registry rows, databases, schemas, roles and grants.

Every object this adapter creates carries a marker comment naming the saga that created it, and
every removal checks that marker first: a compensation can never drop what another saga (or a
person) made, however often it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import Conflict

MARKER = "dbt-platform saga "

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


def connection_params(conn_id: str) -> dict:
    """psycopg2 keyword arguments for an Airflow connection (looked up at run time, not at parse)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    return {
        "host": conn.host,
        "port": conn.port or 5432,
        "user": conn.login,
        "password": conn.password,
        "dbname": conn.schema,
    }


def platform_dsn() -> str:
    """The platform database (registry and saga journal), from the Airflow connection in the settings."""
    params = connection_params(get_settings().platform_conn_id)
    return make_dsn(**{**params, "dbname": params["dbname"] or "platform"})


def count_rows_by(conn_id: str, schema: str, table: str, column: str) -> dict:
    """``{value: rows}`` of ``schema.table`` grouped by ``column``, through an Airflow connection."""
    with psycopg2.connect(**connection_params(conn_id)) as pg, pg.cursor() as cur:
        cur.execute(
            sql.SQL("select {col}, count(*) from {}.{} group by 1 order by 1").format(
                ident(schema), ident(table), col=ident(column)
            )
        )
        counts = dict(cur.fetchall())
    pg.close()
    return counts


def marker(saga_id: str) -> str:
    return MARKER + saga_id


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


class Postgres:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def dsn_for(self, database: str) -> str:
        return make_dsn(self.dsn, dbname=database)

    @contextmanager
    def cursor(self, database: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
        conn = psycopg2.connect(self.dsn_for(database) if database else self.dsn, connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("set lock_timeout = '10s'")
                yield cur
        finally:
            conn.close()

    # ------------------------------------------------------------------ registry

    def ensure_registry(self) -> None:
        with self.cursor() as cur:
            cur.execute("select pg_advisory_lock(hashtext('platform-registry-schema'))")
            cur.execute(REGISTRY_SQL)
            cur.execute("select pg_advisory_unlock(hashtext('platform-registry-schema'))")

    def project_owner_saga(self, name: str) -> str | None:
        with self.cursor() as cur:
            cur.execute("select saga_id from platform.projects where project_name = %s", (name,))
            row = cur.fetchone()
            return row[0] if row else None

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

    def set_project_status(self, name: str, saga_id: str, status: str) -> None:
        with self.cursor() as cur:
            cur.execute(
                "update platform.projects set status = %s where project_name = %s and saga_id = %s",
                (status, name, saga_id),
            )

    def delete_project(self, name: str, saga_id: str) -> None:
        with self.cursor() as cur:
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

    # ------------------------------------------------------------------ databases

    def database_marker(self, database: str) -> str | None:
        """The database's comment if it exists ('' when uncommented), None when it does not exist."""
        with self.cursor() as cur:
            cur.execute(
                "select coalesce(shobj_description(oid, 'pg_database'), '') from pg_database where datname = %s",
                (database,),
            )
            row = cur.fetchone()
            return row[0] if row else None

    def create_database(self, database: str, saga_id: str) -> None:
        existing = self.database_marker(database)
        if existing == marker(saga_id):
            return  # created by an earlier attempt of this saga
        if existing is not None:
            raise Conflict(f"database '{database}' already exists")
        with self.cursor() as cur:
            cur.execute(sql.SQL("create database {}").format(ident(database)))
            cur.execute(
                sql.SQL("comment on database {} is {}").format(ident(database), sql.Literal(marker(saga_id)))
            )
            # Only roles granted CONNECT (this project's) may connect.
            cur.execute(
                sql.SQL("revoke connect, temporary on database {} from public").format(ident(database))
            )

    def drop_database(self, database: str, saga_id: str) -> bool:
        if self.database_marker(database) != marker(saga_id):
            return False
        with self.cursor() as cur:
            cur.execute(sql.SQL("drop database if exists {} with (force)").format(ident(database)))
        return True

    # ------------------------------------------------------------------ schemas

    def schema_marker(self, database: str, schema: str) -> str | None:
        with self.cursor(database) as cur:
            cur.execute(
                "select coalesce(obj_description(oid, 'pg_namespace'), '') from pg_namespace where nspname = %s",
                (schema,),
            )
            row = cur.fetchone()
            return row[0] if row else None

    def create_schema(self, database: str, schema: str, saga_id: str) -> None:
        existing = self.schema_marker(database, schema)
        if existing == marker(saga_id):
            return
        if existing is not None:
            raise Conflict(f"schema '{schema}' already exists in database '{database}'")
        with self.cursor(database) as cur:
            cur.execute(sql.SQL("create schema {}").format(ident(schema)))
            cur.execute(
                sql.SQL("comment on schema {} is {}").format(ident(schema), sql.Literal(marker(saga_id)))
            )

    def drop_schema(self, database: str, schema: str, saga_id: str) -> bool:
        if self.database_marker(database) is None or self.schema_marker(database, schema) != marker(saga_id):
            return False
        with self.cursor(database) as cur:
            cur.execute(sql.SQL("drop schema if exists {} cascade").format(ident(schema)))
        return True

    # ------------------------------------------------------------------ roles

    def role_marker(self, role: str) -> str | None:
        with self.cursor() as cur:
            cur.execute(
                "select coalesce(shobj_description(oid, 'pg_authid'), '') from pg_roles where rolname = %s",
                (role,),
            )
            row = cur.fetchone()
            return row[0] if row else None

    def role_exists(self, role: str) -> bool:
        return self.role_marker(role) is not None

    def create_role(self, role: str, saga_id: str, password: str | None = None) -> None:
        existing = self.role_marker(role)
        if existing is not None and existing != marker(saga_id):
            raise Conflict(f"role '{role}' already exists")
        with self.cursor() as cur:
            if existing is None:
                cur.execute(sql.SQL("create role {} nologin").format(ident(role)))
                cur.execute(
                    sql.SQL("comment on role {} is {}").format(ident(role), sql.Literal(marker(saga_id)))
                )
            if password is not None:
                # Re-set on every attempt: the stored connection always holds the current password.
                cur.execute(
                    sql.SQL("alter role {} login password {}").format(ident(role), sql.Literal(password))
                )

    def drop_role(self, role: str, saga_id: str, databases: list[str]) -> bool:
        if self.role_marker(role) != marker(saga_id):
            return False
        for database in databases:
            if self.database_marker(database) is not None:
                with self.cursor(database) as cur:
                    cur.execute(sql.SQL("drop owned by {} cascade").format(ident(role)))
        with self.cursor() as cur:
            cur.execute(sql.SQL("drop role if exists {}").format(ident(role)))
        return True

    def execute(self, database: str, statements: list[sql.Composable]) -> None:
        with self.cursor(database) as cur:
            for statement in statements:
                cur.execute(statement)

    # ------------------------------------------------------------------ grants

    def grant_project_access(
        self,
        database: str,
        *,
        owner_role: str,
        reader_role: str,
        environments: list[tuple[str, str]],
        reader_groups: list[str],
    ) -> None:
        """Owner and reader roles on the project database; per ``(schema, login role)``: the login role
        uses and creates in its schema, the owner too, the reader reads what the login role creates;
        the reader groups become members of the reader role."""
        db, owner, reader = ident(database), ident(owner_role), ident(reader_role)
        statements = [sql.SQL("grant connect on database {} to {}, {}").format(db, owner, reader)]
        for schema_name, login_role in environments:
            schema, login = ident(schema_name), ident(login_role)
            statements += [
                sql.SQL("grant connect on database {} to {}").format(db, login),
                sql.SQL("grant usage, create on schema {} to {}, {}").format(schema, login, owner),
                sql.SQL("grant usage on schema {} to {}").format(schema, reader),
                sql.SQL(
                    "alter default privileges for role {} in schema {} grant select on tables to {}"
                ).format(login, schema, reader),
            ]
        statements += [sql.SQL("grant {} to {}").format(reader, ident(group)) for group in reader_groups]
        self.execute(database, statements)

    def revoke_reader_defaults(
        self, database: str, *, reader_role: str, environments: list[tuple[str, str]], saga_id: str
    ) -> None:
        """Undo the reader's default privileges in each ``(schema, login role)`` this saga made (before
        the reader role is dropped: default privileges are not removed with it)."""
        if self.database_marker(database) is None or not self.role_exists(reader_role):
            return
        statements = [
            sql.SQL(
                "alter default privileges for role {} in schema {} revoke select on tables from {}"
            ).format(ident(login_role), ident(schema_name), ident(reader_role))
            for schema_name, login_role in environments
            if self.role_marker(login_role) == marker(saga_id) and self.schema_marker(database, schema_name)
        ]
        self.execute(database, statements)
