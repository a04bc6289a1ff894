"""``make test`` runs the scheduler tier on a stack of its own: nothing of it may land on the other's ports
or folders (devstack/test_tiers.py)."""

from __future__ import annotations

from devstack.observability import PORT_BASE
from devstack.settings import get_stack_settings
from devstack.test_tiers import _explicit_paths, scheduler_tier_env

# The highest offsets anything derives from the stack's ports: observability's exporters and
# Prometheus (pg + PORT_BASE + 19), the bench target's log servers (api + 300 + 11).
PG_SPAN = PORT_BASE + 20
API_SPAN = 300 + 12


def _spans(pg_port: int, api_port: int) -> tuple[range, range]:
    return range(pg_port, pg_port + PG_SPAN), range(api_port, api_port + API_SPAN)


def test_the_scheduler_tier_gets_its_own_folder_ports_and_temporary_folder(monkeypatch):
    for pg_port, api_port in ((55432, 8080), (55932, 8780)):  # the default stack, the CI clone's
        monkeypatch.setenv("DBT_PLATFORM_PG_PORT", str(pg_port))
        monkeypatch.setenv("DBT_PLATFORM_AIRFLOW_PORT", str(api_port))
        for name in ("DBT_PLATFORM_OPENBAO_PORT", "DBT_PLATFORM_GIT_PORT", "DBT_PLATFORM_LOCAL_DIR"):
            monkeypatch.delenv(name, raising=False)
        stack = get_stack_settings()
        tier = scheduler_tier_env(stack)
        for name, value in tier.items():
            monkeypatch.setenv(name, value)
        other = get_stack_settings()

        ours, theirs = _spans(stack.pg_port, stack.airflow_port), _spans(other.pg_port, other.airflow_port)
        every_port = set().union(*ours, *theirs)
        assert len(every_port) == sum(map(len, (*ours, *theirs))), "the two stacks' ports overlap"
        assert {other.openbao_port, other.git_port, other.redis_port} <= set(theirs[0])
        assert other.local_dir == stack.local_dir / "scheduler-tier"
        assert other.pg_dir != stack.pg_dir
        assert tier["TMPDIR"].startswith(str(other.local_dir))


def test_given_test_paths_one_plain_pytest_run_does_what_it_is_asked():
    assert _explicit_paths(["-ra", "tests/unit"])
    assert _explicit_paths(["tests/scheduler/test_saga_console.py::test_x"])
    assert not _explicit_paths(["-ra", "--durations=60"])
