"""The local Redis (Celery's broker in the distributed profile): Debian's ``redis-server``, installed by
the stack when missing, run as the unprivileged ``redis`` OS user, on 127.0.0.1 only, password required.

Its folder (``.local/redis``, or ``/var/tmp/dbt-platform-redis-<hash>`` when ``redis`` cannot reach the
clone) holds its config (0600: it carries the password), its append-only file and its log. The
password is generated once into ``.local/secrets/redis_password`` (0600); it never appears in a
command line (the config file holds it) nor in a component's environment (``airflow.cfg`` holds the
broker URL).

Persistence is on (AOF, fsync every second, plus a snapshot on shutdown): a restarted Redis still
holds the Celery messages queued before it went down, so a restart loses no queued task (the
``redis`` drill of ``make chaos`` proves it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from devstack.settings import StackError, StackSettings, stored_secret

REDIS_USER = "redis"


def redis_password(stack: StackSettings) -> str:
    return stored_secret(stack, "redis_password")


def broker_url(stack: StackSettings, db: int = 0) -> str:
    """Celery's broker URL for database ``db`` of the stack's Redis (secret: goes to airflow.cfg only)."""
    return f"redis://:{redis_password(stack)}@127.0.0.1:{stack.redis_port}/{db}"


def ensure_redis_installed() -> str:
    """The ``redis-server`` binary; installed from Debian's packages when missing (needs root)."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError("redis-server not found: install it (Debian: apt-get install redis-server)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise StackError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    # Debian's package may have started its own server on 6379 where an init system runs; ours is
    # another one, on the stack's port. (In a container without one, policy-rc.d refuses the start.)
    return shutil.which("redis-server") or "/usr/bin/redis-server"


def _as_redis_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", REDIS_USER, "--", *command]


def _config(stack: StackSettings) -> str:
    folder = stack.redis_dir
    return "\n".join(
        [
            "# dbt platform local stack: Celery's broker (devstack/redis.py). Generated; do not edit.",
            "bind 127.0.0.1",
            "protected-mode yes",
            f"port {stack.redis_port}",
            f'requirepass "{redis_password(stack)}"',
            "daemonize yes",
            f"pidfile {folder / 'redis.pid'}",
            f"logfile {folder / 'redis.log'}",
            f"dir {folder / 'data'}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',  # AOF only; SHUTDOWN still flushes it
            "databases 16",
            "",
        ]
    )


def _client(stack: StackSettings):
    import redis

    return redis.Redis(
        host="127.0.0.1", port=stack.redis_port, password=redis_password(stack), socket_timeout=2
    )


def redis_is_running(stack: StackSettings) -> bool:
    import redis

    try:
        return bool(_client(stack).ping())
    except (redis.RedisError, OSError):
        return False


def redis_pid(stack: StackSettings) -> int | None:
    pidfile = stack.redis_dir / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def redis_start(stack: StackSettings, timeout: float = 30) -> None:
    binary = ensure_redis_installed()
    if redis_is_running(stack):
        return
    folder: Path = stack.redis_dir
    (folder / "data").mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    conf = folder / "redis.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(_config(stack))
    os.chmod(conf, 0o600)
    if os.geteuid() == 0:
        for path in [folder, *folder.rglob("*")]:
            shutil.chown(path, user=REDIS_USER)
    result = subprocess.run(_as_redis_user([binary, str(conf)]), capture_output=True, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis_is_running(stack):
            return
        time.sleep(0.2)
    log = folder / "redis.log"
    tail = log.read_text()[-2000:] if log.exists() else ""
    raise StackError(
        f"Redis did not start on 127.0.0.1:{stack.redis_port} (port in use? set DBT_PLATFORM_PG_PORT):\n"
        f"{result.stdout}{result.stderr}\n{tail}"
    )


def redis_stop(stack: StackSettings, timeout: float = 30) -> None:
    """A clean shutdown: Redis flushes its append-only file, then exits."""
    import redis

    pid = redis_pid(stack)
    if not redis_is_running(stack) and pid is None:
        return
    try:
        _client(stack).shutdown()
    except (redis.ConnectionError, redis.ResponseError, OSError):
        pass  # the connection closes as it goes down
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def queued_messages(stack: StackSettings, db: int, queue: str = "default") -> int:
    """How many Celery messages wait in ``queue`` of database ``db`` (not yet taken by a worker)."""
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=stack.redis_port, password=redis_password(stack), db=db, socket_timeout=2
    )
    return int(client.llen(queue))
