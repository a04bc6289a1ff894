"""Where the local stack keeps its files, which loopback ports it uses, and its generated secrets."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from include.dbt_platform.config import REPO_ROOT, env

TELEMETRY_OFF = {
    # Cosmos phones home at the end of every task; with no network each task hangs ~9 s.
    "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
    "DO_NOT_TRACK": "true",
    "SCARF_ANALYTICS": "false",
    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
}


class StackError(RuntimeError):
    """Something the operator has to fix; the message says what."""


@dataclass(frozen=True)
class StackSettings:
    """Where the local stack (``make run``) keeps its files and which loopback ports it uses."""

    local_dir: Path
    pg_port: int
    airflow_port: int
    pg_admin_password: str | None
    airflow_admin_password: str | None
    pg_os_user: str
    # PostgreSQL's own folder: data, socket, log. Under local_dir unless pg_os_user cannot reach it.
    pg_dir: Path
    # The secrets manager (OpenBao) and the git server, on loopback; by default beside PostgreSQL's
    # port (+20, its cluster port +21; +30), so parallel clones that move the PostgreSQL port move all.
    openbao_port: int = 0
    git_port: int = 0

    @property
    def pg_data_dir(self) -> Path:
        return self.pg_dir / "data"

    @property
    def pg_socket_dir(self) -> Path:
        return self.pg_dir / "run"

    @property
    def secrets_dir(self) -> Path:
        return self.local_dir / "secrets"

    @property
    def logs_dir(self) -> Path:
        return self.local_dir / "logs"

    @property
    def openbao_dir(self) -> Path:
        """OpenBao's own folder: its configuration, its data (integrated storage), its log."""
        return self.local_dir / "openbao"

    @property
    def git_dir(self) -> Path:
        """The git server's own folder: its bare repositories, its log."""
        return self.local_dir / "git"

    @property
    def openbao_url(self) -> str:
        return f"http://127.0.0.1:{self.openbao_port}"

    @property
    def git_url(self) -> str:
        return f"http://127.0.0.1:{self.git_port}"

    # Ports of the services the distributed profile adds, derived from the PostgreSQL port so that
    # clones with their own DBT_PLATFORM_PG_PORT never collide (devstack/distributed.py).
    @property
    def redis_port(self) -> int:
        return self.pg_port + 10

    @property
    def redis_dir(self) -> Path:
        """Redis's own folder (config, AOF, log), placed like PostgreSQL's: see :func:`pg_dir_for`."""
        return service_dir_for(self.local_dir, "redis", "redis")


def get_stack_settings() -> StackSettings:
    local_dir = Path(env("DBT_PLATFORM_LOCAL_DIR", str(REPO_ROOT / ".local"))).absolute()
    pg_os_user = env("DBT_PLATFORM_PG_OS_USER", "postgres")
    pg_port = int(env("DBT_PLATFORM_PG_PORT", "55432"))
    return StackSettings(
        local_dir=local_dir,
        pg_port=pg_port,
        openbao_port=int(env("DBT_PLATFORM_OPENBAO_PORT", str(pg_port + 20))),
        git_port=int(env("DBT_PLATFORM_GIT_PORT", str(pg_port + 30))),
        airflow_port=int(env("DBT_PLATFORM_AIRFLOW_PORT", "8080")),
        pg_admin_password=env("DBT_PLATFORM_PG_PASSWORD", "") or None,
        airflow_admin_password=env("DBT_PLATFORM_AIRFLOW_PASSWORD", "") or None,
        pg_os_user=pg_os_user,
        pg_dir=pg_dir_for(local_dir, pg_os_user),
    )


def pg_dir_for(local_dir: Path, pg_os_user: str) -> Path:
    """``local_dir/pg``, or, when we run as root and ``pg_os_user`` cannot reach ``local_dir`` (a
    clone under a 0700 home such as /root), a folder of its own under /var/tmp, named after
    ``local_dir`` so every command of this clone finds the same one."""
    return service_dir_for(local_dir, "pg", pg_os_user)


def service_dir_for(local_dir: Path, name: str, os_user: str) -> Path:
    """``local_dir/<name>`` for a service run as ``os_user``, or a folder under /var/tmp (see
    :func:`pg_dir_for`)."""
    wanted = local_dir / name
    if os.geteuid() != 0 or can_reach(local_dir, os_user):
        return wanted
    digest = hashlib.sha1(str(local_dir).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"dbt-platform-{name}-{digest}"


def can_reach(path: Path, user: str) -> bool:
    """Whether ``user`` may traverse every existing folder on the way to ``path``."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return True  # created later as a system user: it will own what it needs
    groups = {account.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return True  # created later, by us, with default (traversable) permissions
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def stored_secret(stack: StackSettings, name: str, given: str | None = None) -> str:
    """The secret ``name``: given through the environment, else generated once and kept (0600)."""
    if given:
        return given
    path = stack.secrets_dir / name
    if path.exists():
        return path.read_text().strip()
    stack.secrets_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(stack.secrets_dir, 0o700)
    value = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def pg_password(stack: StackSettings) -> str:
    return stored_secret(stack, "pg_admin_password", stack.pg_admin_password)


def airflow_password(stack: StackSettings) -> str:
    return stored_secret(stack, "airflow_admin_password", stack.airflow_admin_password)


# The local stack's Airflow users (FAB auth manager), by name: their role. ``requester`` may trigger
# the project-lifecycle DAGs and nothing else (include/dbt_platform/runtime/roles.py); ``viewer`` may
# read everything and change nothing.
# The stack's Airflow users and their FAB roles. The requester owns the projects requested with the
# owner requester@example.com (its owner role); dbt-platform is the service account sagas act as.
AIRFLOW_USERS = {
    "admin": ["Admin"],
    "requester": ["Requester", "owner:requester@example.com"],
    "viewer": ["Viewer"],
    "dbt-platform": ["Platform"],
}


def airflow_user_password_file(stack: StackSettings, user: str) -> Path:
    """Where the password of the stack's Airflow user ``user`` is kept (0600)."""
    return stack.secrets_dir / f"airflow_{user}_password"


def airflow_user_password(stack: StackSettings, user: str) -> str:
    """The password of the stack's Airflow user ``user``, generated once like the admin's."""
    if user == "admin":
        return airflow_password(stack)
    return stored_secret(stack, airflow_user_password_file(stack, user).name)


# The stack's least-privilege roles, by the kind of database they own (a database's kind is the start
# of its name: airflow, airflow_test... platform, platform_test... warehouse, warehouse_bench...).
# The superuser (postgres) only sets the stack up.
STACK_ROLES = {
    "airflow": ("airflow", "LOGIN"),  # Airflow's metadata database
    "platform": ("dbt_platform", "LOGIN CREATEDB CREATEROLE"),  # registry, saga journal; runs the sagas
    "warehouse": ("warehouse", "LOGIN"),  # the bundled projects' dbt output
}


def role_for(database: str) -> str | None:
    """The stack role that owns ``database`` (by its kind), or None for any other database."""
    for kind, (role, _) in STACK_ROLES.items():
        if database == kind or database.startswith(f"{kind}_"):
            return role
    return None


def role_password(stack: StackSettings, role: str) -> str:
    return stored_secret(stack, f"pg_role_{role}")


def role_dsn(stack: StackSettings, database: str) -> str:
    """A DSN for ``database`` as the stack role that owns it."""
    role = role_for(database)
    if role is None:
        raise StackError(f"no stack role owns database {database!r}")
    return f"postgresql://{role}:{role_password(stack, role)}@127.0.0.1:{stack.pg_port}/{database}"


def admin_dsn(stack: StackSettings, database: str = "postgres") -> str:
    return f"postgresql://postgres:{pg_password(stack)}@127.0.0.1:{stack.pg_port}/{database}"
