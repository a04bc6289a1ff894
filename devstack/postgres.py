"""The local PostgreSQL cluster: initialised, started and stopped as an unprivileged OS user."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from devstack.settings import StackError, StackSettings, admin_dsn, get_stack_settings, pg_password

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


def ensure_databases(stack: StackSettings, names: tuple[str, ...] | list[str]) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(admin_dsn(stack))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("select 1 from pg_database where datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def pg_up(stack: StackSettings | None = None, databases: tuple[str, ...] = STACK_DATABASES) -> StackSettings:
    stack = stack or get_stack_settings()
    pg_start(stack)
    ensure_databases(stack, databases)
    return stack
