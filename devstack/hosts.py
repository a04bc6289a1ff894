"""Several "hosts" on one machine: what the distributed profile needs so its components look like
separate machines to Airflow, while every server stays on 127.0.0.1.

- :func:`hostname` is every component's ``[core] hostname_callable``: the name the profile gave it
  (``DBT_PLATFORM_HOSTNAME``: ``scheduler-1``, ``worker-2``...). Task instances and jobs record it,
  so an operator (and ``make chaos``) sees which worker ran a task and which scheduler queued it.
- ``python -m devstack.hosts serve-logs`` is a worker's log server, as ``airflow celery worker``
  starts one, but on 127.0.0.1 (Airflow's binds every interface) and on the port the profile gave
  that worker (two workers on one machine cannot share one).
- :data:`LOGGING_CONFIG` is the api-server's logging config: Airflow's own, except that the task
  log handler finds a worker's log server by the worker's name (``DBT_PLATFORM_LOG_SERVERS``:
  ``{"worker-1": port, ...}``) instead of ``http://<hostname>:<worker_log_server_port>``, so the
  UI shows the log of a task whichever worker ran it. On real hosts (compose, Kubernetes) none of
  this is needed: every worker serves its logs on the default port of its own address.

Development tooling (imported by the stack's Airflow processes through ``PYTHONPATH``), never by
``include/``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from functools import cache

HOSTNAME_ENV = "DBT_PLATFORM_HOSTNAME"
LOG_SERVERS_ENV = "DBT_PLATFORM_LOG_SERVERS"


def hostname() -> str:
    """This component's host name: the profile's name for it, else the machine's."""
    return os.environ.get(HOSTNAME_ENV) or socket.getfqdn()


def log_servers() -> dict[str, int]:
    """Worker name -> the loopback port of its log server."""
    return {str(k): int(v) for k, v in json.loads(os.environ.get(LOG_SERVERS_ENV) or "{}").items()}


def serve_logs(port: int) -> None:
    """Airflow's worker log server (JWT-checked, serves ``[logging] base_log_folder``) on 127.0.0.1."""
    import uvicorn

    uvicorn.run(
        "airflow.utils.serve_logs.log_server:get_app",
        host="127.0.0.1",
        port=port,
        log_level="warning",
        log_config=None,
        access_log=False,
    )


def _logging_config() -> dict:
    from copy import deepcopy

    from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

    config = deepcopy(DEFAULT_LOGGING_CONFIG)
    config["handlers"]["task"]["class"] = "devstack.hosts.LoopbackLogServersHandler"
    return config


def __getattr__(name: str):
    # Built on first use: only the api-server asks for it, and it needs Airflow's config loaded.
    if name == "LOGGING_CONFIG":
        return _logging_config()
    if name == "LoopbackLogServersHandler":
        return _handler_class()
    raise AttributeError(name)


@cache
def _handler_class():
    from urllib.parse import urljoin

    from airflow.utils.log.file_task_handler import FileTaskHandler

    class LoopbackLogServersHandler(FileTaskHandler):
        """Airflow's file task handler; a worker's served logs are found by the worker's name."""

        def _get_log_retrieval_url(self, ti, log_relative_path, log_type=None):
            url, rel_path = super()._get_log_retrieval_url(ti, log_relative_path, log_type=log_type)
            port = log_servers().get(getattr(ti, "hostname", None) or "")
            if url and port and getattr(log_type, "value", log_type) != "trigger":
                return urljoin(f"http://127.0.0.1:{port}/log/", log_relative_path), rel_path
            return url, rel_path

    return LoopbackLogServersHandler


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve-logs":
        serve_logs(int(argv[1]))
        return 0
    print("usage: python -m devstack.hosts serve-logs PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
