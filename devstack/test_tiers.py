"""``make test``: the in-process tiers and the live-scheduler tier at once, each on a stack of its own.

The suite's time is two kinds of work that barely compete: ``tests/unit``, ``tests/dags`` and
``tests/integration`` run DAGs in this process with ``dag.test()`` (one core busy with dbt), while
``tests/scheduler`` mostly waits on a live scheduler. They cannot share one stack: both tiers compare
the whole PostgreSQL cluster, OpenBao mount and git server before and after a saga (the leak
inventories), so each sees the other's resources as leaks. The scheduler tier therefore gets its own
local folder, ports (its PostgreSQL on the stack's port + :data:`PORT_SHIFT`, every other service
derived from it, see :mod:`devstack.settings`) and temporary folder (Cosmos' cache).

Arguments are passed to both pytest runs. Given test paths (``make test PYTEST_ARGS="tests/unit -x"``)
or ``DBT_PLATFORM_TEST_TIERS=serial``, one plain pytest run does what it is asked. The exit status is
the first non-zero of the two (pytest's 5, no tests collected, is a failure too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from devstack.settings import StackSettings, get_stack_settings

PORT_SHIFT = 1000  # clear of every port derived from the stack's (pg + 3 … + 60, api + 100 … + 311)
IN_PROCESS = ["tests/unit", "tests/dags", "tests/integration"]
SCHEDULER = ["tests/scheduler"]


def scheduler_tier_env(stack: StackSettings) -> dict[str, str]:
    """The environment of the scheduler tier's own stack (also what ``devstack down`` stops)."""
    local_dir = stack.local_dir / "scheduler-tier"
    pg_port = stack.pg_port + PORT_SHIFT
    return {
        "DBT_PLATFORM_LOCAL_DIR": str(local_dir),
        "DBT_PLATFORM_PG_PORT": str(pg_port),
        "DBT_PLATFORM_OPENBAO_PORT": str(pg_port + 20),
        "DBT_PLATFORM_GIT_PORT": str(pg_port + 30),
        "DBT_PLATFORM_AIRFLOW_PORT": str(stack.airflow_port + PORT_SHIFT),
        "TMPDIR": str(local_dir / "tmp"),
    }


def _explicit_paths(args: list[str]) -> bool:
    return any(a.startswith("tests") or a.endswith(".py") or "::" in a for a in args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    pytest = [sys.executable, "-m", "pytest"]
    if os.environ.get("DBT_PLATFORM_TEST_TIERS") == "serial" or _explicit_paths(args):
        return subprocess.call([*pytest, *args])

    stack = get_stack_settings()
    tier = scheduler_tier_env(stack)
    Path(tier["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **tier}
    log_path = stack.local_dir / "test-logs" / "scheduler-tier.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"tests/scheduler runs alongside, on its own stack; its output: {log_path}", flush=True)
    with log_path.open("w") as log:
        scheduler = subprocess.Popen(
            [*pytest, *SCHEDULER, *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            in_process = subprocess.call([*pytest, *IN_PROCESS, *args])
            in_process_wall = time.monotonic() - started
            print(f"\n[in-process tiers: exit {in_process} after {in_process_wall:.0f}s]", flush=True)
            scheduler_status = scheduler.wait()
        except BaseException:
            scheduler.send_signal(signal.SIGINT)  # pytest runs its teardown: the live stack stops
            scheduler.wait(timeout=300)
            raise
    print(f"\n===== tests/scheduler (exit {scheduler_status} after {time.monotonic() - started:.0f}s) =====")
    sys.stdout.write(Path(log_path).read_text())
    sys.stdout.flush()
    return in_process or scheduler_status


if __name__ == "__main__":
    raise SystemExit(main())
