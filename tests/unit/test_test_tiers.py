"""``make test`` runs the suite in shards at once, each on a stack of its own: no shard may land on
another's ports or folders, and every test module runs in exactly one (devstack/test_tiers.py)."""

from __future__ import annotations

from itertools import combinations

from devstack.observability import PORT_BASE
from devstack.settings import get_stack_settings
from devstack.test_tiers import SHARDS, _explicit_paths, shard_env, shard_environ
from include.dbt_platform.config import REPO_ROOT

# The highest offsets anything derives from a stack's ports: observability's exporters and
# Prometheus (pg + PORT_BASE + 19), the bench target's log servers (api + 300 + 11).
PG_SPAN = PORT_BASE + 20
API_SPAN = 300 + 12


def test_every_shard_gets_its_own_folder_ports_and_temporary_folder(monkeypatch):
    for pg_port, api_port in ((55432, 8080), (55932, 8780)):  # the default stack, the CI clone's
        monkeypatch.setenv("DBT_PLATFORM_PG_PORT", str(pg_port))
        monkeypatch.setenv("DBT_PLATFORM_AIRFLOW_PORT", str(api_port))
        for name in ("DBT_PLATFORM_LOCAL_DIR", "TMPDIR"):
            monkeypatch.delenv(name, raising=False)
        # Given for the first stack: the other shards must not inherit them.
        monkeypatch.setenv("DBT_PLATFORM_OPENBAO_PORT", str(pg_port + 20))
        monkeypatch.setenv("DBT_PLATFORM_GIT_PORT", str(pg_port + 30))
        stack = get_stack_settings()
        stacks = {}
        for shard in SHARDS:
            with monkeypatch.context() as m:
                environ = shard_environ(stack, shard)
                for name in {*environ, "DBT_PLATFORM_OPENBAO_PORT", "DBT_PLATFORM_GIT_PORT"}:
                    if name in environ:
                        m.setenv(name, environ[name])
                    else:
                        m.delenv(name)
                stacks[shard.name] = get_stack_settings()
                if shard.port_shift:
                    assert shard_env(stack, shard)["TMPDIR"].startswith(str(stacks[shard.name].local_dir))

        for (a, one), (b, other) in combinations(stacks.items(), 2):
            ports = [
                set(range(s.pg_port, s.pg_port + PG_SPAN))
                | set(range(s.airflow_port, s.airflow_port + API_SPAN))
                for s in (one, other)
            ]
            assert not ports[0] & ports[1], f"{a} and {b} share ports"
            assert one.local_dir != other.local_dir and one.pg_dir != other.pg_dir, (
                f"{a} and {b} share a folder"
            )
        for s in stacks.values():
            assert {s.openbao_port, s.git_port, s.redis_port} <= set(range(s.pg_port, s.pg_port + PG_SPAN))


def test_every_test_module_runs_in_exactly_one_shard():
    def runs_in(module: str, shard) -> bool:
        inside = any(module == p or module.startswith(p.rstrip("/") + "/") for p in shard.paths)
        return inside and module not in shard.ignore

    modules = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "tests").rglob("test_*.py"))
    assert len(modules) > 30
    for module in modules:
        assert len([s for s in SHARDS if runs_in(module, s)]) == 1, module
    for shard in SHARDS:
        for path in (*shard.paths, *shard.ignore):
            assert (REPO_ROOT / path).exists(), f"{shard.name} names {path}, which does not exist"


def test_given_test_paths_one_plain_pytest_run_does_what_it_is_asked():
    assert _explicit_paths(["-ra", "tests/unit"])
    assert _explicit_paths(["tests/scheduler/test_saga_console.py::test_x"])
    assert not _explicit_paths(["-ra", "--durations=60"])
