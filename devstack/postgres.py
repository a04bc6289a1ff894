"""The local PostgreSQL cluster: initialised, started and stopped as an unprivileged OS user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from devstack.settings import (
    STACK_ROLES,
    StackError,
    StackSettings,
    admin_dsn,
    get_stack_settings,
    pg_password,
    role_for,
    role_password,
)

STACK_DATABASES = ("airflow", "warehouse", "platform")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return candidates[-1]
    raise StackError(
        f"PostgreSQL server binary '{name}' not found; install PostgreSQL 14+ "
        "(Debian: apt-get install postgresql) or put its bin/ folder on PATH"
    )


def _as_pg_user(stack: StackSettings, cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", stack.pg_os_user, "--", *cmd]


def _ensure_pg_os_user(stack: StackSettings) -> None:
    if os.geteuid() != 0:
        return
    if subprocess.run(["id", "-u", stack.pg_os_user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", stack.pg_os_user], check=True)


def _chown_tree(stack: StackSettings, path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user=stack.pg_os_user)
        for child in path.rglob("*"):
            shutil.chown(child, user=stack.pg_os_user)


def pg_is_running(stack: StackSettings) -> bool:
    if not (stack.pg_data_dir / "PG_VERSION").exists():
        return False
    result = subprocess.run(
        _as_pg_user(stack, [pg_bin("pg_ctl"), "status", "-D", str(stack.pg_data_dir)]),
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def pg_init(stack: StackSettings) -> None:
    if (stack.pg_data_dir / "PG_VERSION").exists():
        return
    _ensure_pg_os_user(stack)
    pg_root = stack.pg_dir
    pg_root.mkdir(parents=True, exist_ok=True)
    stack.pg_socket_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pg_root, 0o700)
    pwfile = pg_root / "initdb.pw"
    pwfile.write_text(pg_password(stack) + "\n")
    _chown_tree(stack, pg_root)
    probe = subprocess.run(_as_pg_user(stack, ["test", "-w", str(pg_root)]))
    if probe.returncode != 0:
        raise StackError(
            f"OS user '{stack.pg_os_user}' cannot write {pg_root}: every parent folder of the "
            "repository must be traversable by it (chmod o+x), or set DBT_PLATFORM_LOCAL_DIR"
        )
    try:
        subprocess.run(
            _as_pg_user(
                stack,
                [
                    pg_bin("initdb"),
                    "-D",
                    str(stack.pg_data_dir),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                ],
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        raise StackError(f"initdb failed:\n{exc.stdout}{exc.stderr}") from exc
    finally:
        pwfile.unlink(missing_ok=True)
    conf = stack.pg_data_dir / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write(
            "\n# dbt platform local stack\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {stack.pg_port}\n"
            f"unix_socket_directories = '{stack.pg_socket_dir}'\n"
            "max_connections = 300\n"
            # A disposable development cluster: trade crash safety for speed.
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        )


def pg_start(stack: StackSettings) -> None:
    pg_init(stack)
    if pg_is_running(stack):
        return
    logfile = stack.pg_dir / "postgres.log"
    try:
        subprocess.run(
            _as_pg_user(
                stack,
                [
                    pg_bin("pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(stack.pg_data_dir),
                    "-l",
                    str(logfile),
                ],
            ),
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        tail = logfile.read_text()[-2000:] if logfile.exists() else ""
        raise StackError(
            f"PostgreSQL did not start (port {stack.pg_port} in use? set DBT_PLATFORM_PG_PORT):\n"
            f"{exc.stdout}{exc.stderr}\n{tail}"
        ) from exc


def pg_stop(stack: StackSettings) -> None:
    if pg_is_running(stack):
        subprocess.run(
            _as_pg_user(stack, [pg_bin("pg_ctl"), "stop", "-m", "fast", "-w", "-D", str(stack.pg_data_dir)]),
            check=True,
            capture_output=True,
        )


# Objects the superuser made inside a stack database go to the database's owner role (a stack set up
# before the roles existed): schemas, then relations (a table takes its sequences along), then the
# sequences, functions and types left.
_HAND_OVER = """
do $$
declare
    r record;
    target text := %(role)s;
begin
    for r in select nspname from pg_namespace
             where nspowner = 'postgres'::regrole and nspname not like 'pg\\_%%' and nspname <> 'information_schema'
    loop execute format('alter schema %%I owner to %%I', r.nspname, target); end loop;
    for r in select c.oid::regclass as rel, c.relkind from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relowner = 'postgres'::regrole and c.relkind in ('r', 'p', 'v', 'm', 'f')
               and n.nspname not like 'pg\\_%%' and n.nspname <> 'information_schema'
    loop execute format('alter %%s %%s owner to %%I',
        case r.relkind when 'v' then 'view' when 'm' then 'materialized view' when 'f' then 'foreign table'
        else 'table' end, r.rel, target); end loop;
    for r in select c.oid::regclass as rel from pg_class c join pg_namespace n on n.oid = c.relnamespace
             where c.relowner = 'postgres'::regrole and c.relkind = 'S'
               and n.nspname not like 'pg\\_%%' and n.nspname <> 'information_schema'
    loop execute format('alter sequence %%s owner to %%I', r.rel, target); end loop;
    for r in select p.oid::regprocedure as fn from pg_proc p join pg_namespace n on n.oid = p.pronamespace
             where p.proowner = 'postgres'::regrole and n.nspname not like 'pg\\_%%'
               and n.nspname <> 'information_schema'
    loop execute format('alter routine %%s owner to %%I', r.fn, target); end loop;
    for r in select t.oid::regtype as typ from pg_type t join pg_namespace n on n.oid = t.typnamespace
             where t.typowner = 'postgres'::regrole and t.typtype in ('e', 'd')
               and n.nspname not like 'pg\\_%%' and n.nspname <> 'information_schema'
    loop execute format('alter type %%s owner to %%I', r.typ, target); end loop;
end $$;
"""


def ensure_databases(stack: StackSettings, names: tuple[str, ...] | list[str]) -> None:
    """The stack's roles (least privilege, SCRAM passwords from ``.local/secrets``) and databases,
    each owned by its role; no database of the cluster lets PUBLIC connect."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_dsn(stack))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for role, options in STACK_ROLES.values():
                verifier = psycopg2.extensions.encrypt_password(
                    role_password(stack, role), role, conn, "scram-sha-256"
                )
                cur.execute("select 1 from pg_roles where rolname = %s", (role,))
                verb = "alter" if cur.fetchone() else "create"
                cur.execute(
                    sql.SQL(f"{verb} role {{}} {options} nosuperuser password {{}}").format(
                        sql.Identifier(role), sql.Literal(verifier)
                    )
                )
            # The platform role may end other roles' sessions (not a superuser's): dropping a project's
            # database with FORCE, or decommissioning it, must not wait for a reader's idle session.
            cur.execute("grant pg_signal_backend to dbt_platform")
            for name in names:
                owner = role_for(name)
                cur.execute("select pg_get_userbyid(datdba) from pg_database where datname = %s", (name,))
                row = cur.fetchone()
                if row is None:
                    cur.execute(
                        sql.SQL("create database {}").format(sql.Identifier(name))
                        + (sql.SQL(" owner {}").format(sql.Identifier(owner)) if owner else sql.SQL(""))
                    )
                elif owner and row[0] != owner:
                    cur.execute(
                        sql.SQL("alter database {} owner to {}").format(
                            sql.Identifier(name), sql.Identifier(owner)
                        )
                    )
                    _hand_over(stack, name, owner)
            # DDL is logged (an audit trail, and how the tests see that no password travels in clear).
            cur.execute("select current_setting('log_statement')")
            if cur.fetchone()[0] != "ddl":
                cur.execute("alter system set log_statement = 'ddl'")
                cur.execute("select pg_reload_conf()")
            # Project roles must reach only their own database: nothing is open to PUBLIC.
            cur.execute("select datname from pg_database where datallowconn")
            for (name,) in cur.fetchall():
                cur.execute(
                    sql.SQL("revoke connect, temporary on database {} from public").format(
                        sql.Identifier(name)
                    )
                )
    finally:
        conn.close()


def _hand_over(stack: StackSettings, database: str, role: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_dsn(stack, database))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(_HAND_OVER, {"role": role})
    finally:
        conn.close()


def pg_up(stack: StackSettings | None = None, databases: tuple[str, ...] = STACK_DATABASES) -> StackSettings:
    stack = stack or get_stack_settings()
    pg_start(stack)
    ensure_databases(stack, databases)
    return stack
