"""Background servers of the local stack other than PostgreSQL and Airflow (OpenBao, the git server):
started once in their own session, found again by a pidfile, stopped by that pid only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from devstack.settings import StackError


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a child of this process that has exited is reaped (else it lingers, a
    zombie, and looks alive). The stack's one liveness check: airflow.py and distributed.py use it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def service_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_service(
    name: str, command: list[str], *, pidfile: Path, logfile: Path, port: int, env: dict | None = None
) -> int:
    """Start ``command`` (unless its pidfile names a live process) and wait until ``port`` listens."""
    pid = service_pid(pidfile)
    if pid is None:
        if port_open(port):
            raise StackError(
                f"{name}: port {port} on 127.0.0.1 is taken by another process; move the stack's ports "
                "(DBT_PLATFORM_PG_PORT moves them all) or stop it"
            )
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(logfile, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        pidfile.write_text(str(proc.pid))
        pid = proc.pid
    deadline = time.monotonic() + 30
    while not port_open(port):
        if not alive(pid):
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise StackError(f"{name} exited while starting; its log ({logfile}) ends:\n{tail}")
        if time.monotonic() > deadline:
            raise StackError(f"{name} did not listen on 127.0.0.1:{port} within 30 s; see {logfile}")
        time.sleep(0.1)
    return pid


def stop_service(pidfile: Path, timeout: float = 15) -> None:
    pid = service_pid(pidfile)
    if pid is not None:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pidfile.unlink(missing_ok=True)
