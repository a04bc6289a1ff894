"""The registered-projects bundle: one git repository on the git server that holds, for every project
the sagas created, the version its transformation DAG runs, ready to render.

Airflow reads it as a versioned DAG bundle (``GitDagBundle``, named ``registered_projects``): the
dag-processor parses a commit of it, and every task of a run, on any worker, runs from a checkout of
that same commit, fetched from the git server into the worker's own bundle cache. Nothing is shared on
disk. Layout of the repository::

    registered_projects.py          the DAG file: one transformation DAG per project under projects/
    registered_project_errors.py    one import error naming every project that cannot be loaded
    projects/<name>/                the project at its deployed commit, with platform.yml (the
                                    platform's settings), dbt_packages/ and target/manifest.json
    projects/<name>/.platform/      registration.json (the saga that registered it, its repository,
                                    the settings the platform enforces), deployed.json (the commit
                                    running), rejected.json (a newer commit that did not parse, why)
    retired/<name>.<saga>/          a project a decommissioning saga set aside (not loaded)

Every change is one commit pushed with a retry when someone else pushed first
(:func:`~include.dbt_platform.adapters.git.update`), and decides from the tree it is given, so
concurrent sagas and the sync never lose each other's work. Who writes what: the sagas register,
unregister, retarget and set aside (``project_creation``, ``project_lifecycle``); the sync deploys
or rejects a new commit (:mod:`.sync`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from include.dbt_platform.adapters import git
from include.dbt_platform.errors import Conflict
from include.dbt_platform.transformations.projects import (
    META_DIR,
    DbtProjectError,
    read_platform_file,
    write_platform_file,
)

REPOSITORY = "dbt-platform-projects"  # never a project's name: those have no '-'
BUNDLE_NAME = "registered_projects"  # Airflow's name for the bundle
PROJECTS, RETIRED = "projects", "retired"
DAG_FILES = Path(__file__).parent / "bundle_files"
OWNER = "dbt-platform"  # the bundle repository's mark on the git server
# What the platform decides in a project's platform.yml, whatever the owner's repository says (a role
# named in access_roles that Airflow lacks would make the DAG fail to load: the platform's call).
ENFORCED = ("conn_id", "schema", "owner", "tags", "production", "access_roles")


@dataclass(frozen=True)
class Registered:
    name: str
    saga_id: str
    repository: str
    settings: dict
    deployed: str | None  # the commit running
    rejected: dict | None  # {"commit", "reason", "at"} of a newer commit that did not parse


def url(host: git.GitHost) -> str:
    return host.clone_url(REPOSITORY)


def ensure(host: git.GitHost) -> str:
    """The bundle's repository exists and holds this platform version's DAG files; returns its URL."""
    if host.repository(REPOSITORY) is None:
        host.create_repository(REPOSITORY, OWNER)
    git.update(url(host), host, _with_dag_files(lambda tree: None))
    return url(host)


# What earlier platform versions stored beside a project's manifest and no longer do: the dbt docs
# page (2.3 MB each, now put together on request). Removed by the first change after an upgrade.
STALE = ("target/static_index.html",)


def _with_dag_files(change):
    """``change``, plus this platform version's DAG files wherever they differ (or are missing), less
    what earlier versions left (:data:`STALE`)."""

    def wrapped(tree: Path) -> str | None:
        message = change(tree)
        refreshed = False
        for source in sorted(DAG_FILES.glob("*.py")):
            target = tree / source.name
            if not target.exists() or target.read_text() != source.read_text():
                target.write_text(source.read_text())
                refreshed = True
        for stale in (path for pattern in STALE for path in tree.glob(f"{PROJECTS}/*/{pattern}")):
            stale.unlink()
            refreshed = True
        return message or ("The registered-projects bundle's DAG files" if refreshed else None)

    return wrapped


def _meta(project: Path, name: str) -> dict | None:
    path = project / META_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _write_meta(project: Path, name: str, data: dict | None) -> None:
    path = project / META_DIR / f"{name}.json"
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read(project: Path) -> Registered | None:
    registration = _meta(project, "registration")
    if registration is None:
        return None
    return Registered(
        name=project.name,
        saga_id=registration["saga_id"],
        repository=registration["repository"],
        settings=registration.get("settings") or {},
        deployed=(_meta(project, "deployed") or {}).get("commit"),
        rejected=_meta(project, "rejected"),
    )


def registered(host: git.GitHost) -> dict[str, Registered]:
    """Every project in the bundle (set-aside ones not included), by name."""
    if git.head(url(host), host) is None:
        return {}
    with git.fetched(url(host), host) as (tree, _):
        found = (read(p) for p in sorted((tree / PROJECTS).glob("*")) if p.is_dir())
        return {r.name: r for r in found if r is not None}


def listing(host: git.GitHost) -> dict[str, list[str]]:
    """The folders under projects/ and retired/ (what the leak inventory compares)."""
    if host.repository(REPOSITORY) is None or git.head(url(host), host) is None:
        return {PROJECTS: [], RETIRED: []}
    with git.fetched(url(host), host) as (tree, _):
        return {
            folder: sorted(p.name for p in (tree / folder).glob("*") if p.is_dir())
            for folder in (PROJECTS, RETIRED)
        }


def _install(dest: Path, source: Path, registration: dict, commit: str) -> None:
    """``source``'s files into ``dest`` with the platform's settings, its manifest built; raises
    DbtProjectError (``dest`` then holds a broken copy: the caller discards the working tree)."""
    from include.dbt_platform.transformations.manifests import build_manifest

    git.copy_tree(source, dest)
    # The owner's platform.yml may choose its schedule, test behaviour, description...; never its
    # connection, schema, owner, tags, production flag or access roles: those are the platform's.
    owners = {k: v for k, v in read_platform_file(dest).items() if k not in ENFORCED}
    write_platform_file(dest, {**registration["settings"], **owners})
    build_manifest(dest)
    for leftover in (dest / "logs", *(p for p in dest.rglob(".git") if p.is_dir())):
        shutil.rmtree(leftover, ignore_errors=True)
    target = dest / "target"
    for built in target.iterdir() if target.is_dir() else ():
        if built.name != "manifest.json":  # what the DAG renders and the docs page shows
            shutil.rmtree(built) if built.is_dir() else built.unlink()
    _write_meta(dest, "registration", registration)
    _write_meta(dest, "deployed", {"commit": commit, "at": time.time()})


def register(host, name: str, *, saga_id: str, repository: str, source: Path, commit: str,
             settings: dict) -> str | None:  # fmt: skip
    """``name`` enters the bundle at ``commit`` (its files in ``source``). Idempotent for the saga;
    a project of that name another saga registered is a Conflict."""
    registration = {"saga_id": saga_id, "repository": repository, "settings": settings}

    def change(tree: Path) -> str | None:
        dest = tree / PROJECTS / name
        found = read(dest) if dest.exists() else None
        if found is not None and found.saga_id != saga_id:
            raise Conflict(f"project '{name}' is registered by saga {found.saga_id}")
        if found is not None and found.deployed == commit and found.settings == settings:
            return None
        _install(dest, source, registration, commit)
        return f"Register {name} at {commit[:12]} (saga {saga_id})"

    return git.update(url(host), host, _with_dag_files(change))


def unregister(host: git.GitHost, name: str, saga_id: str) -> str | None:
    """Remove ``name`` from the bundle if ``saga_id`` registered it (idempotent)."""

    def change(tree: Path) -> str | None:
        dest = tree / PROJECTS / name
        found = read(dest) if dest.exists() else None
        if found is None or found.saga_id != saga_id:
            return None
        shutil.rmtree(dest)
        return f"Unregister {name} (saga {saga_id})"

    return git.update(url(host), host, change)


def _aside(name: str, saga_id: str) -> str:
    return f"{name}.{saga_id.replace('-', '')[:12]}"


def set_aside(host: git.GitHost, name: str, saga_id: str) -> str | None:
    """Move ``name`` to retired/ (no longer loaded, kept for :func:`put_back`); idempotent."""

    def change(tree: Path) -> str | None:
        dest, aside = tree / PROJECTS / name, tree / RETIRED / _aside(name, saga_id)
        if not dest.exists() or aside.exists():
            return None
        aside.parent.mkdir(exist_ok=True)
        dest.rename(aside)
        return f"Set {name} aside (saga {saga_id})"

    return git.update(url(host), host, change)


def put_back(host: git.GitHost, name: str, saga_id: str) -> str | None:
    def change(tree: Path) -> str | None:
        dest, aside = tree / PROJECTS / name, tree / RETIRED / _aside(name, saga_id)
        if not aside.exists() or dest.exists():
            return None
        aside.rename(dest)
        return f"Put {name} back (saga {saga_id})"

    return git.update(url(host), host, change)


def drop_aside(host: git.GitHost, name: str, saga_id: str) -> str | None:
    def change(tree: Path) -> str | None:
        aside = tree / RETIRED / _aside(name, saga_id)
        if not aside.exists():
            return None
        shutil.rmtree(aside)
        return f"Remove the set-aside copy of {name} (saga {saga_id})"

    return git.update(url(host), host, change)


def retarget(host: git.GitHost, name: str, settings: dict) -> str | None:
    """The registered project's enforced settings (its connection and schema) change; manifest rebuilt."""
    from include.dbt_platform.transformations.manifests import build_manifest

    def change(tree: Path) -> str | None:
        dest = tree / PROJECTS / name
        found = read(dest) if dest.exists() else None
        if found is None:
            return None
        new = {**found.settings, **settings}
        if new == found.settings:
            return None
        _write_meta(
            dest, "registration", {"saga_id": found.saga_id, "repository": found.repository, "settings": new}
        )
        write_platform_file(dest, {**read_platform_file(dest), **{k: new[k] for k in ENFORCED if k in new}})
        build_manifest(dest)
        shutil.rmtree(dest / "logs", ignore_errors=True)
        return f"Retarget {name}: {', '.join(f'{k}={v}' for k, v in settings.items())}"

    return git.update(url(host), host, change)


def deploy(host: git.GitHost, name: str, source: Path, commit: str) -> tuple[str, str | None]:
    """A new commit of a registered project: installed if dbt can parse it, else recorded as rejected
    (the last good version keeps running). Returns ("deployed"|"rejected"|"skipped", the reason)."""
    outcome: dict = {}

    def change(tree: Path) -> str | None:
        dest = tree / PROJECTS / name
        found = read(dest) if dest.exists() else None
        if found is None or commit in (found.deployed, (found.rejected or {}).get("commit")):
            outcome.update(result="skipped", reason=None)
            return None
        registration = {"saga_id": found.saga_id, "repository": found.repository, "settings": found.settings}
        try:
            _install(dest, source, registration, commit)
        except DbtProjectError as exc:
            git.run_git("checkout", "-q", "--", ".", cwd=tree)  # the last good version, as it was
            git.run_git("clean", "-q", "-fdx", "--", f"{PROJECTS}/{name}", cwd=tree)
            reason = str(exc)
            _write_meta(dest, "rejected", {"commit": commit, "reason": reason, "at": time.time()})
            outcome.update(result="rejected", reason=reason)
            return f"Keep {name} at {(found.deployed or '')[:12]}: {commit[:12]} does not parse"
        _write_meta(dest, "rejected", None)
        outcome.update(result="deployed", reason=None)
        return f"Deploy {name} at {commit[:12]}"

    git.update(url(host), host, change)
    return outcome.get("result", "skipped"), outcome.get("reason")
