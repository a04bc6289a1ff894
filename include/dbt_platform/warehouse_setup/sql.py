"""Everything ``warehouse_setup`` asks of the warehouse: its only SQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg2
from psycopg2 import errors, sql

from include.dbt_platform.adapters.postgres import connection_params
from include.dbt_platform.transformations.projects import DbtProject
from include.dbt_platform.warehouse_setup import WarehouseSetupError

CLEARED_PREFIXES = ("stg_", "int_", "fct_", "dim_")
LOCK_TIMEOUT = "5s"


@contextlib.contextmanager
def warehouse(proj: DbtProject) -> Iterator[psycopg2.extensions.connection]:
    params = connection_params(proj.conn_id)
    where = f"{params['host']}:{params['port']}/{params['dbname']} (Airflow connection '{proj.conn_id}')"
    try:
        pg = psycopg2.connect(**params, connect_timeout=5, application_name="warehouse_setup")
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise WarehouseSetupError(
            f"cannot reach the warehouse at {where}: {reason}. Check that PostgreSQL is running "
            "(`make run` starts the local one) and that the connection's host, port and credentials "
            "are right, then re-run."
        ) from None
    pg.autocommit = True
    try:
        yield pg
    finally:
        pg.close()


def relations(pg, schema: str) -> dict[str, str]:
    """Name -> kind ('table', 'view', 'materialized view') of every relation in the schema."""
    with pg.cursor() as cur:
        cur.execute(
            "select c.relname, case c.relkind when 'r' then 'table' when 'v' then 'view' "
            "when 'm' then 'materialized view' end from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind in ('r', 'v', 'm') order by c.relname",
            (schema,),
        )
        return dict(cur.fetchall())


def row_counts(pg, schema: str) -> dict[str, int | str]:
    """Rows per relation; a relation another session holds locked is reported, not waited for."""
    counts: dict[str, int | str] = {}
    with pg.cursor() as cur:
        cur.execute("set lock_timeout = '2s'")
        for name in relations(pg, schema):
            try:
                cur.execute(
                    sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
                )
                counts[name] = cur.fetchone()[0]
            except errors.LockNotAvailable:
                counts[name] = f"locked by {_lock_holder(pg, schema, name)}"
            except psycopg2.Error as exc:
                counts[name] = f"unreadable: {str(exc).strip().splitlines()[0]}"
    return counts


def _lock_holder(pg, schema: str, name: str) -> str:
    with pg.cursor() as cur:
        cur.execute(
            "select a.pid, a.usename, a.state, left(a.query, 80) from pg_locks l "
            "join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace "
            "join pg_stat_activity a on a.pid = l.pid "
            "where n.nspname = %s and c.relname = %s and l.granted and a.pid <> pg_backend_pid() limit 1",
            (schema, name),
        )
        row = cur.fetchone()
    if not row:
        return "another session"
    pid, user, state, query = row
    return f"session pid {pid} (user {user}, {state}: {query!r})"


def clear_relations(proj: DbtProject) -> list[str]:
    """Drop the schema's stg_/int_/fct_/dim_ relations (views before tables). Returns what was dropped."""
    dropped = []
    with warehouse(proj) as pg:
        found = relations(pg, proj.schema)
        targets = sorted(
            (n for n in found if n.startswith(CLEARED_PREFIXES)), key=lambda n: (found[n] == "table", n)
        )
        with pg.cursor() as cur:
            cur.execute(f"set lock_timeout = '{LOCK_TIMEOUT}'")
            for name in targets:
                kind = sql.SQL(found[name].upper())
                statement = sql.SQL("drop {} if exists {}.{} cascade").format(
                    kind, sql.Identifier(proj.schema), sql.Identifier(name)
                )
                try:
                    cur.execute(statement)
                except errors.LockNotAvailable:
                    holder = _lock_holder(pg, proj.schema, name)
                    raise WarehouseSetupError(
                        f"relation {proj.schema}.{name} is locked by {holder}; it was not dropped after "
                        f"{LOCK_TIMEOUT}. Wait for that session to finish (or end it: select "
                        "pg_terminate_backend(<pid>)), then re-run."
                    ) from None
                dropped.append(name)
    return dropped


def count_offending_rows(pg, check_sql: str) -> int:
    """Run one data-quality check: its SQL returns the number of offending rows."""
    with pg.cursor() as cur:
        cur.execute(check_sql)
        return int(cur.fetchone()[0])
