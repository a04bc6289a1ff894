"""One-shot migration of the state an older stack kept under ``.local/state/`` to the services that
hold it now; ``python -m devstack up`` (and the tests' setup) runs it every time, and it finds nothing
to do once it has run.

| older stack | now |
|---|---|
| ``secrets/connections.json`` (LocalFilesystemBackend) and its ``.rotations`` | OpenBao, the target's KV mount (``connections/``, ``rotations/``); the files are deleted |
| ``repositories/<name>/`` (a git repository, its saga's mark in ``.git/``) | a repository on the git server with that mark, every branch and tag pushed; the folder is deleted |
| ``registered_projects/<name>/`` (a copy with ``platform.yml`` and a manifest) | the registered-projects bundle on the git server, at the copy's commit; the folder is deleted |
| ``notifications/``, ``archives/`` (records, decommissioned projects' git bundles) | left as they are: history, read by nothing |

An entry or a repository that already exists where it goes is left alone (and its local copy kept,
reported), never overwritten. Folders a crashed saga left half-made (hidden names) are not moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from include.dbt_platform.adapters import git
from include.dbt_platform.adapters.secrets import VaultConnectionStore, marker_of
from include.dbt_platform.errors import Conflict
from include.dbt_platform.transformations.projects import read_platform_file

MARK = "dbt-platform-saga"  # the file in .git/ where the older git adapter kept the saga's id


def migrate_local_state(state_dir: Path, store: VaultConnectionStore, host: git.GitHost) -> list[str]:
    """Move what is there; returns one line per thing moved or left (printed by the stack)."""
    report = migrate_connections(state_dir / "secrets", store)
    report += migrate_repositories(state_dir / "repositories", host)
    report += migrate_registered(state_dir / "registered_projects", host)
    for line in report:
        print(f"migrate: {line}", flush=True)
    return report


def migrate_connections(folder: Path, store: VaultConnectionStore) -> list[str]:
    path = folder / "connections.json"
    if not path.exists():
        return []
    entries = json.loads(path.read_text() or "{}")
    rotations_path = folder / "connections.json.rotations"
    rotations = json.loads(rotations_path.read_text() or "{}") if rotations_path.exists() else {}
    report = []
    for conn_id, entry in sorted(entries.items()):
        if marker_of(entry) is None:
            # The platform's own (platform, warehouse...): the stack writes them afresh; anything an
            # operator added by hand is brought over unless OpenBao has it already.
            moved = store.adopt(conn_id, entry)
        else:
            moved = store.adopt(conn_id, entry, rotations.get(conn_id))
        report.append(f"connection {conn_id}: {'moved to OpenBao' if moved else 'already in OpenBao, kept'}")
    for leftover in (path, rotations_path, folder / "connections.lock"):
        leftover.unlink(missing_ok=True)
    return report


def _mark(repo: Path) -> str | None:
    mark = repo / ".git" / MARK
    return mark.read_text().strip() if mark.exists() else None


def migrate_repositories(folder: Path, host: git.GitHost) -> list[str]:
    report = []
    for repo in sorted(folder.glob("*/.git")):
        repo = repo.parent
        if repo.name.startswith("."):
            continue
        saga = _mark(repo) or "migrated"
        try:
            remote = host.create_repository(repo.name, saga)
        except Conflict:
            report.append(f"repository {repo.name}: the git server has one of another saga; local copy kept")
            continue
        git.run_git("push", "-q", remote.clone_url, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*",
                    cwd=repo, host=host)  # fmt: skip
        shutil.rmtree(repo)
        report.append(f"repository {repo.name}: pushed to {remote.clone_url}")
    _remove_if_empty(folder)
    return report


def migrate_registered(folder: Path, host: git.GitHost) -> list[str]:
    from include.dbt_platform.transformations import bundle

    report = []
    for copy in sorted(p.parent for p in folder.glob("*/dbt_project.yml")):
        if copy.name.startswith("."):
            continue
        saga = _mark(copy) or "migrated"
        commit = git.run_git("rev-parse", "HEAD", cwd=copy) if (copy / ".git").exists() else "migrated"
        settings = read_platform_file(copy)
        try:
            bundle.register(host, copy.name, saga_id=saga, repository=host.clone_url(copy.name), source=copy,
                            commit=commit, settings=settings)  # fmt: skip
        except Conflict:
            report.append(
                f"registered project {copy.name}: the bundle has one of another saga; local copy kept"
            )
            continue
        shutil.rmtree(copy)
        report.append(f"registered project {copy.name}: now in the registered-projects bundle")
    _remove_if_empty(folder)
    return report


def _remove_if_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
