"""PostgreSQL adapter: registry rows, databases, schemas, roles and grants.

Every object this adapter creates carries a marker comment naming the saga that created it, and
every removal checks that marker first: a compensation can never drop what another saga (or a
person) made, however often it runs.

Each effect is atomic where PostgreSQL allows it (a role with its marker and password, a schema with
its marker, an environment's grants: one transaction each). ``CREATE DATABASE`` cannot run in a
transaction, so a database is created under a name that carries the saga's id, marked, then renamed:
a crash between any two statements leaves something the compensation recognises. Passwords never
travel as literals: the SCRAM verifier is computed here and only it reaches the server.

It runs as the platform's own role (CREATEDB, CREATEROLE, no superuser): every role it creates is
granted to it (``DROP OWNED BY`` and ``ALTER DEFAULT PRIVILEGES FOR ROLE`` need that membership).
All of the saga's SQL is in this one class (and the registry beside it), where a reviewer reads it
in one place: that is why it is longer than the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from include.dbt_platform.boundaries import boundary
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import Conflict, Unavailable

MARKER = "dbt-platform saga "


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


def projects_dsn() -> str:
    """The server where project databases are made (the platform's own unless configured apart)."""
    params = connection_params(get_settings().projects_conn_id)
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
    """One adapter per step or compensation: it keeps one connection per database it talks to (a
    connection costs a SCRAM handshake, several milliseconds), closed by :meth:`close` (or with it)."""

    service = "warehouse"  # what the circuit breaker calls it when it cannot be reached

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conns: dict[str | None, psycopg2.extensions.connection] = {}

    def __enter__(self) -> Postgres:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def dsn_for(self, database: str) -> str:
        return make_dsn(self.dsn, dbname=database)

    def _connection(self, database: str | None) -> psycopg2.extensions.connection:
        conn = self._conns.get(database)
        if conn is None or conn.closed:
            try:
                conn = psycopg2.connect(self.dsn_for(database) if database else self.dsn, connect_timeout=10)
            except psycopg2.OperationalError as exc:
                if "does not exist" in str(exc) or "authentication" in str(exc):
                    raise  # the server answered: not a matter of reaching it
                raise Unavailable(self.service, str(exc).strip().splitlines()[0]) from exc
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("set lock_timeout = '10s'")
            self._conns[database] = conn
        return conn

    @contextmanager
    def cursor(self, database: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
        """Autocommit: each statement on its own (what cannot run in a transaction, and reads)."""
        with self._connection(database).cursor() as cur:
            yield cur

    @contextmanager
    def transaction(self, database: str | None = None) -> Iterator[psycopg2.extensions.cursor]:
        """One transaction: every statement inside takes effect together, or none does."""
        conn = self._connection(database)
        conn.autocommit = False
        try:
            with conn, conn.cursor() as cur:
                yield cur
        finally:
            if not conn.closed:
                conn.autocommit = True

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

    def is_template(self, database: str) -> bool:
        with self.cursor() as cur:
            cur.execute("select datistemplate from pg_database where datname = %s", (database,))
            row = cur.fetchone()
            return bool(row and row[0])

    @staticmethod
    def reserved_database_name(database: str, saga_id: str) -> str:
        """The name a database is created under before it is marked and renamed: it carries the saga."""
        return f"{database}__{saga_id.replace('-', '')[:12]}"

    def create_database(self, database: str, saga_id: str) -> None:
        existing = self.database_marker(database)
        if existing == marker(saga_id):
            return  # created (and renamed) by an earlier attempt of this saga
        if existing is not None:
            raise Conflict(f"database '{database}' already exists")
        reserved = self.reserved_database_name(database, saga_id)
        db, tmp = ident(database), ident(reserved)
        with self.cursor() as cur:
            if self.database_marker(reserved) is None:
                cur.execute(sql.SQL("create database {}").format(tmp))
            boundary("database created under its reserved name")  # by this attempt or an earlier one
            cur.execute(sql.SQL("comment on database {} is {}").format(tmp, sql.Literal(marker(saga_id))))
            boundary("database marked")
            # Only roles granted CONNECT (this project's) may connect.
            cur.execute(sql.SQL("revoke connect, temporary on database {} from public").format(tmp))
            boundary("database closed to PUBLIC")
            cur.execute(sql.SQL("alter database {} rename to {}").format(tmp, db))

    def drop_database(self, database: str, saga_id: str) -> bool:
        """Drop the database this saga made, under its final or its reserved name."""
        dropped = False
        with self.cursor() as cur:
            if self.database_marker(database) == marker(saga_id):
                cur.execute(sql.SQL("drop database if exists {} with (force)").format(ident(database)))
                dropped = True
            reserved = self.reserved_database_name(database, saga_id)
            if self.database_marker(reserved) is not None:  # the name carries this saga's id
                cur.execute(sql.SQL("drop database if exists {} with (force)").format(ident(reserved)))
                dropped = True
        return dropped

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
        with self.transaction(database) as cur:
            cur.execute(sql.SQL("create schema {}").format(ident(schema)))
            boundary("schema created, not yet marked (one transaction)")
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

    def platform_role_reasons(self, role: str) -> list[str]:
        """Why ``role`` is a platform role that no project may be given (empty: it is not one)."""
        with self.cursor() as cur:
            cur.execute(
                "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, "
                "rolname = current_user, rolname like 'pg\\_%%', "
                "exists (select from pg_database d where d.datdba = r.oid) "
                "from pg_roles r where rolname = %s",
                (role,),
            )
            row = cur.fetchone()
        if row is None:
            return []
        labels = ["a superuser", "may create roles", "may create databases", "a replication role",
                  "bypasses row security", "the platform's own role", "a built-in role", "owns a database"]  # fmt: skip
        return [label for label, flag in zip(labels, row, strict=True) if flag]

    def _create_role(self, cur, role: str, saga_id: str) -> None:
        cur.execute(sql.SQL("create role {} nologin").format(ident(role)))
        boundary("role created, not yet marked (one transaction)")
        cur.execute(sql.SQL("comment on role {} is {}").format(ident(role), sql.Literal(marker(saga_id))))
        # The platform's membership: DROP OWNED BY and ALTER DEFAULT PRIVILEGES FOR ROLE need it.
        cur.execute(sql.SQL("grant {} to current_user").format(ident(role)))

    def create_role(self, role: str, saga_id: str, password: str | None = None) -> None:
        existing = self.role_marker(role)
        if existing is not None and existing != marker(saga_id):
            raise Conflict(f"role '{role}' already exists")
        with self.transaction() as cur:
            if existing is None:
                self._create_role(cur, role, saga_id)
            if password is not None:
                # Re-set on every attempt: the stored connection always holds the current password.
                # Only the SCRAM verifier, computed here, reaches the server (and its logs).
                verifier = psycopg2.extensions.encrypt_password(
                    password, role, cur.connection, "scram-sha-256"
                )
                boundary("role marked, password not yet set (one transaction)")
                cur.execute(
                    sql.SQL("alter role {} login password {}").format(ident(role), sql.Literal(verifier))
                )

    def set_password(self, role: str, saga_id: str, password: str) -> None:
        """A new password for a login role the saga ``saga_id`` made (as its SCRAM verifier)."""
        if self.role_marker(role) != marker(saga_id):
            raise Conflict(f"role '{role}' was not made by saga {saga_id}")
        with self.transaction() as cur:
            verifier = psycopg2.extensions.encrypt_password(password, role, cur.connection, "scram-sha-256")
            cur.execute(sql.SQL("alter role {} password {}").format(ident(role), sql.Literal(verifier)))

    def set_login(self, roles: dict[str, str], allowed: bool) -> None:
        """LOGIN or NOLOGIN for ``{role: the saga that made it}``, in one transaction; NOLOGIN also
        ends the sessions they have open (a login that may no longer log in may no longer read)."""
        with self.transaction() as cur:
            mine = [
                role for role, saga_id in roles.items() if self._role_marker_in(cur, role) == marker(saga_id)
            ]
            for role in mine:
                cur.execute(
                    sql.SQL(f"alter role {{}} {'login' if allowed else 'nologin'}").format(ident(role))
                )
            if not allowed and mine:
                cur.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where usename = any(%s)", (mine,)
                )

    def drop_roles(self, database: str, roles: dict[str, str]) -> list[str]:
        """Drop ``{role: the saga that made it}``, all in one transaction: either every role is gone or
        none is. What they own in ``database`` (tables their dbt runs built) passes to the platform's
        role first, so a database that is kept keeps its data. Returns the roles dropped."""
        dropped = []
        with self.transaction(database if self.database_marker(database) is not None else None) as cur:
            for role, saga_id in roles.items():
                if self._role_marker_in(cur, role) != marker(saga_id):
                    continue
                cur.execute("select pg_has_role(current_user, %s, 'member')", (role,))
                if not cur.fetchone()[0]:
                    cur.execute(sql.SQL("grant {} to current_user").format(ident(role)))
                cur.execute(sql.SQL("reassign owned by {} to current_user").format(ident(role)))
                cur.execute(sql.SQL("drop owned by {}").format(ident(role)))  # its privileges
                boundary("a role's objects handed over, the role not yet dropped (one transaction)")
                cur.execute(sql.SQL("drop role {}").format(ident(role)))
                dropped.append(role)
        return dropped

    def grant_environment_access(
        self, database: str, *, schema: str, login_role: str, owner_role: str, reader_role: str
    ) -> None:
        """One environment's grants (as :meth:`grant_project_access` gives each), in one transaction."""
        db, sch, login = ident(database), ident(schema), ident(login_role)
        with self.transaction(database) as cur:
            for statement in (
                sql.SQL("grant connect on database {} to {}").format(db, login),
                sql.SQL("grant usage, create on schema {} to {}, {}").format(sch, login, ident(owner_role)),
                sql.SQL("grant usage on schema {} to {}").format(sch, ident(reader_role)),
                sql.SQL(
                    "alter default privileges for role {} in schema {} grant select on tables to {}"
                ).format(login, sch, ident(reader_role)),
            ):
                cur.execute(statement)
                boundary("one grant given, the others not yet (one transaction)")

    def drop_role(self, role: str, saga_id: str, databases: list[str]) -> bool:
        if self.role_marker(role) != marker(saga_id):
            return False
        with self.cursor() as cur:  # an earlier attempt may have died before the grant
            cur.execute(
                "select pg_has_role(current_user, %s, 'member') or "
                "(select rolsuper from pg_roles where rolname = current_user)",
                (role,),
            )
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL("grant {} to current_user").format(ident(role)))
        for database in databases:
            if self.database_marker(database) is not None:
                with self.cursor(database) as cur:
                    cur.execute(sql.SQL("drop owned by {} cascade").format(ident(role)))
        with self.cursor() as cur:
            cur.execute(sql.SQL("drop role if exists {}").format(ident(role)))
        return True

    # ------------------------------------------------------------------ grants

    def grant_project_access(
        self,
        database: str,
        saga_id: str,
        *,
        owner_role: str,
        reader_role: str,
        environments: list[tuple[str, str]],
        reader_groups: list[str],
    ) -> None:
        """In one transaction: the owner and reader roles (created, marked), CONNECT on the project
        database; per ``(schema, login role)``: the login role uses and creates in its schema, the owner
        too, the reader reads what the login role creates; the reader groups join the reader role."""
        db, owner, reader = ident(database), ident(owner_role), ident(reader_role)
        with self.transaction(database) as cur:
            for role in (owner_role, reader_role):
                existing = self._role_marker_in(cur, role)
                if existing is None:
                    self._create_role(cur, role, saga_id)
                elif existing != marker(saga_id):
                    raise Conflict(f"role '{role}' already exists")
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
            for statement in statements:
                cur.execute(statement)
                boundary("one grant given, the others not yet (one transaction)")

    @staticmethod
    def _role_marker_in(cur, role: str) -> str | None:
        cur.execute(
            "select coalesce(shobj_description(oid, 'pg_authid'), '') from pg_roles where rolname = %s",
            (role,),
        )
        row = cur.fetchone()
        return row[0] if row else None

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
        with self.transaction(database) as cur:
            for statement in statements:
                cur.execute(statement)
