"""The one-shot migration of an older stack's local state (devstack/migrate.py), against the real
OpenBao and git server: the connections file (with a rotation in flight), a repository and a
registered copy move to the services, the local files go, and a second run finds nothing to do."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from devstack.migrate import migrate_local_state
from include.dbt_platform.adapters import git
from include.dbt_platform.transformations import bundle
from tests.harness import git_admin, secrets_admin


def old_repository(path: Path, saga_id: str, files: dict[str, str]) -> str:
    """A repository as the older git adapter left it: committed, the saga's mark in .git/."""
    path.mkdir(parents=True)
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(content)
    git.run_git("init", "-q", cwd=path)
    git.run_git("add", "-A", cwd=path)
    git.run_git("commit", "-q", "-m", "scaffold", cwd=path)
    (path / ".git" / "dbt-platform-saga").write_text(saga_id)
    return git.run_git("rev-parse", "HEAD", cwd=path)


def test_an_older_stacks_local_state_moves_to_openbao_and_the_git_server(tmp_path: Path):
    store, host = secrets_admin(), git_admin()
    name, saga = f"legacy_{uuid.uuid4().hex[:6]}", str(uuid.uuid4())
    state = tmp_path / "state"
    entry = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": f"{name}_dev_rw",
             "password": "the-current-password", "schema": f"dbt_{name}",
             "extra": {"dbt_schema": f"{name}_dev", "created_by_saga": saga}}  # fmt: skip
    (state / "secrets").mkdir(parents=True)
    (state / "secrets" / "connections.json").write_text(
        json.dumps({f"dbt_{name}_dev": entry, "platform": {"conn_type": "postgres", "password": "old"}})
    )
    (state / "secrets" / "connections.json.rotations").write_text(
        json.dumps({f"dbt_{name}_dev": {"saga": "rotating-saga", "previous": "the-old-password"}})
    )
    files = {
        "dbt_project.yml": f"name: {name}\nprofile: {name}\nconfig-version: 2\nversion: '1.0.0'\n",
        "models/m.sql": "select 1 as id\n",
    }
    commit = old_repository(state / "repositories" / name, saga, files)
    subprocess.run(["git", "clone", "-q", str(state / "repositories" / name), str(state / "registered_projects" / name)],
                   check=True)  # fmt: skip
    (state / "registered_projects" / name / ".git" / "dbt-platform-saga").write_text(saga)
    (state / "registered_projects" / name / "platform.yml").write_text(
        f"conn_id: dbt_{name}_dev\nschema: {name}_dev\nowner: ana@example.com\n"
    )
    try:
        report = migrate_local_state(state, store, host)
        assert f"connection dbt_{name}_dev: moved to OpenBao" in report
        assert "connection platform: already in OpenBao, kept" in report, "the stack's own is not replaced"
        assert store.entry(f"dbt_{name}_dev") == entry
        assert store.entry("platform")["password"] != "old"
        rotation, _ = store._read(f"rotations/dbt_{name}_dev")
        assert rotation == {"saga": "rotating-saga", "previous": "the-old-password"}
        assert host.repository(name).saga_id == saga
        assert git.head(host.clone_url(name), host) == commit
        registered = bundle.registered(host)[name]
        assert (registered.saga_id, registered.deployed) == (saga, commit)
        assert registered.settings["conn_id"] == f"dbt_{name}_dev"
        assert sorted(p.name for p in state.rglob("*")) == ["secrets"], "only the emptied folder is left"
        assert migrate_local_state(state, store, host) == [], "a second run finds nothing to do"
    finally:
        bundle.unregister(host, name, saga)
        host.delete_repository(name, saga)
        store.delete(f"dbt_{name}_dev", saga)
        store.finish_rotation(f"dbt_{name}_dev", "rotating-saga")
