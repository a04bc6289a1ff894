"""``make test``: the suite in three pytest processes at once, each on a stack of its own.

The suite's time is two kinds of work that barely compete: ``tests/unit``, ``tests/dags`` and
``tests/integration`` run DAGs in their own process with ``dag.test()`` (one core busy with dbt),
while ``tests/scheduler`` mostly waits on a live scheduler. The in-process tests are split in two
(:data:`SHARDS`: the project-lifecycle and warehouse-setup modules, ~half of their time, beside the
rest), so the three take about as long. They cannot share one stack: every saga test compares the
whole PostgreSQL cluster, OpenBao mount and git server before and after (the leak inventories), and
would take another shard's sagas for leaks. So each shard but the first gets its own local folder,
ports (its PostgreSQL on the stack's port + its shift, every other service derived from it, see
:mod:`devstack.settings`) and temporary folder (Cosmos' cache).

Arguments are passed to every pytest run. Given test paths (``make test PYTEST_ARGS="tests/unit -x"``)
or ``DBT_PLATFORM_TEST_TIERS=serial``, one plain pytest run does what it is asked. The exit status is
the first non-zero one (pytest's 5, no tests collected, is a failure too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devstack.settings import StackSettings, get_stack_settings


@dataclass(frozen=True)
class Shard:
    name: str
    paths: tuple[str, ...]
    port_shift: int  # 0: the stack itself; else clear of every port derived from it (pg + 69, api + 311)
    ignore: tuple[str, ...] = ()


_HEAVY = ("tests/integration/test_project_lifecycle.py", "tests/integration/test_warehouse_setup.py")
SHARDS = (
    Shard("in-process", ("tests/unit", "tests/dags", "tests/integration"), 0, ignore=_HEAVY),
    Shard("scheduler", ("tests/scheduler",), 1000),
    Shard("lifecycle", _HEAVY, 2000),
)
_DERIVED_PORTS = ("DBT_PLATFORM_OPENBAO_PORT", "DBT_PLATFORM_GIT_PORT")


def shard_env(stack: StackSettings, shard: Shard) -> dict[str, str]:
    """The environment of a shard's own stack (also what ``devstack down`` stops)."""
    if not shard.port_shift:
        return {}
    local_dir = stack.local_dir / f"{shard.name}-tier"
    return {
        "DBT_PLATFORM_LOCAL_DIR": str(local_dir),
        "DBT_PLATFORM_PG_PORT": str(stack.pg_port + shard.port_shift),
        "DBT_PLATFORM_AIRFLOW_PORT": str(stack.airflow_port + shard.port_shift),
        "TMPDIR": str(local_dir / "tmp"),
    }


def shard_environ(stack: StackSettings, shard: Shard) -> dict[str, str]:
    """The whole environment a shard's processes run with: this one, on the shard's stack. Ports
    given for the first stack's OpenBao and git server are left out, so that the shard's are derived
    from its own PostgreSQL port (:func:`devstack.settings.get_stack_settings`)."""
    inherited = {k: v for k, v in os.environ.items() if k not in _DERIVED_PORTS or not shard.port_shift}
    return {**inherited, **shard_env(stack, shard)}


def other_stacks(stack: StackSettings) -> list[dict[str, str]]:
    """The environments of the shards' own stacks."""
    return [shard_environ(stack, s) for s in SHARDS if s.port_shift]


def _command(shard: Shard, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", *shard.paths, *(f"--ignore={p}" for p in shard.ignore), *args]


def _explicit_paths(args: list[str]) -> bool:
    return any(a.startswith("tests") or a.endswith(".py") or "::" in a for a in args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("DBT_PLATFORM_TEST_TIERS") == "serial" or _explicit_paths(args):
        return subprocess.call([sys.executable, "-m", "pytest", *args])

    stack = get_stack_settings()
    logs = stack.local_dir / "test-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    first, *others = SHARDS
    running: list[tuple[Shard, subprocess.Popen, Path]] = []
    try:
        for shard in others:
            env = shard_environ(stack, shard)
            Path(env["TMPDIR"]).mkdir(parents=True, exist_ok=True)
            log_path = logs / f"{shard.name}-tier.log"
            print(f"{' '.join(shard.paths)} runs alongside, on its own stack; its output: {log_path}")
            with log_path.open("w") as log:
                process = subprocess.Popen(
                    _command(shard, args), env=env, stdout=log, stderr=subprocess.STDOUT
                )
            running.append((shard, process, log_path))
        sys.stdout.flush()
        status = subprocess.call(_command(first, args))
        print(f"\n[{first.name}: exit {status} after {time.monotonic() - started:.0f}s]", flush=True)
        for shard, process, log_path in running:
            code = process.wait()
            print(
                f"\n===== {' '.join(shard.paths)} (exit {code} after {time.monotonic() - started:.0f}s) ====="
            )
            sys.stdout.write(log_path.read_text())
            sys.stdout.flush()
            status = status or code
    except BaseException:
        for _, process, _ in running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # pytest runs its teardown: a live stack stops
        for _, process, _ in running:
            process.wait(timeout=300)
        raise
    return status


if __name__ == "__main__":
    raise SystemExit(main())
