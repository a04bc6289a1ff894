"""``python -m devstack up|up-distributed|down|status|demo|pg-up|pg-down|dsn|env``: the local stack's commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from devstack.airflow import (
    AIRFLOW_COMPONENTS,
    airflow_env,
    airflow_up,
    component_pid,
    default_target,
    health,
    stop_airflow,
)
from devstack.demo import demo, demo_project_saga, describe
from devstack.distributed import (
    describe_distributed,
    distributed_up,
    profile,
    stop_distributed,
    supervisor_pid,
)
from devstack.git_server import git_down, git_running
from devstack.observability import observability_down
from devstack.openbao import bao_down, bao_running
from devstack.postgres import pg_is_running, pg_stop, pg_up
from devstack.redis import redis_is_running, redis_stop
from devstack.settings import StackError, admin_dsn, get_stack_settings
from devstack.test_tiers import other_stacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "command",
        choices=["up", "up-distributed", "down", "status", "pg-up", "pg-down", "demo", "dsn", "env"],
    )
    args = parser.parse_args(argv)
    stack = get_stack_settings()
    target = default_target(stack)
    distributed = profile(stack)
    try:
        if args.command == "pg-up":
            pg_up(stack)
        elif args.command == "pg-down":
            pg_stop(stack)
        elif args.command == "up":
            stop_distributed(stack, distributed)  # one profile at a time on the stack's port
            airflow_up(stack, target)
            print(describe(stack, target))
        elif args.command == "up-distributed":
            distributed_up(stack, distributed)
            print(describe(stack, target))
            print(describe_distributed(stack, distributed))
        elif args.command == "down":
            for name in ("distributed", "chaos", "bench"):  # the drills' and the load's, if left over
                stop_distributed(stack, profile(stack, name))
            stop_airflow(stack, target)
            observability_down(target)
            git_down(stack)
            bao_down(stack)
            redis_stop(stack)
            pg_stop(stack)
            for tier in other_stacks(stack):  # `make test`'s shards run on stacks of their own
                if Path(tier["DBT_PLATFORM_LOCAL_DIR"]).is_dir():
                    subprocess.call([sys.executable, "-m", "devstack", "down"], env=tier)
            print("Stopped Airflow, Redis, the git server, OpenBao and PostgreSQL.")
        elif args.command == "status":
            print(f"PostgreSQL running: {pg_is_running(stack)}")
            print(f"OpenBao running:    {bao_running(stack)}")
            print(f"git server running: {git_running(stack)}")
            if supervisor_pid(distributed):
                print(f"Redis running: {redis_is_running(stack)}")
                print(describe_distributed(stack, distributed))
            else:
                running = {c: component_pid(stack, target, c) for c in AIRFLOW_COMPONENTS}
                for component, pid in running.items():
                    print(f"{component:<14} {'pid ' + str(pid) if pid else 'stopped'}")
            print(f"health: {json.dumps(health(target))}")
            print(describe(stack, target))
        elif args.command == "demo":
            return demo(stack, target) or demo_project_saga(stack, target)
        elif args.command == "dsn":
            print(admin_dsn(stack))
        elif args.command == "env":
            for key, value in sorted(airflow_env(stack, target).items()):
                print(f"export {key}={json.dumps(value)}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
