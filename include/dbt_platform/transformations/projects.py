"""Discover dbt projects: those shipped under ``dbt_projects/`` and those registered by the saga.

A dbt project is a folder holding ``dbt_project.yml``. An optional ``platform.yml`` beside it says
how the platform runs it (Airflow connection, target schema, schedule, owner, tags, Cosmos execution
mode, ``warehouse_setup`` checks); without it the defaults from :mod:`include.dbt_platform.config`
apply. This module is the only one that reads or writes ``platform.yml``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from include.dbt_platform.config import PLATFORM_DAG_IDS, Settings, get_settings

PLATFORM_FILE = "platform.yml"
DAG_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


class DbtProjectError(Exception):
    """A dbt project that cannot be turned into a DAG. The message names the project and what to do."""


@dataclass(frozen=True)
class DbtProject:
    name: str
    path: Path
    profile_name: str
    conn_id: str
    schema: str
    schedule: str | None
    owner: str = "data-platform"
    tags: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""
    execution_mode: str | None = None  # None: the platform default (DBT_PLATFORM_EXECUTION_MODE)
    test_behavior: str | None = None  # None: the platform default (DBT_PLATFORM_TEST_BEHAVIOR)
    # Whether its target is production: destructive warehouse_setup runs then need a confirmation.
    production: bool = False
    # Airflow roles (FAB) that may see, pause and trigger this DAG (its access_control); None: the
    # platform grants nothing of its own (admins and global readers still see it).
    access_roles: tuple[str, ...] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / "target" / "manifest.json"


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DbtProjectError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DbtProjectError(f"{path} must hold a mapping, found {type(data).__name__}")
    return data


def read_platform_file(project_dir: Path) -> dict:
    """The project's ``platform.yml`` as a mapping (empty when there is none)."""
    path = Path(project_dir) / PLATFORM_FILE
    return _read_yaml(path) if path.exists() else {}


def write_platform_file(project_dir: Path, settings: dict) -> None:
    (Path(project_dir) / PLATFORM_FILE).write_text(yaml.safe_dump(settings))


def load_project(path: Path, settings: Settings | None = None) -> DbtProject:
    """Read one project's ``dbt_project.yml`` (and ``platform.yml``), without touching the network."""
    settings = settings or get_settings()
    path = Path(path)
    project_yml = _read_yaml(path / "dbt_project.yml")
    name = project_yml.get("name")
    if not isinstance(name, str) or not DAG_ID_PATTERN.match(name):
        raise DbtProjectError(f"dbt project at {path}: 'name' must be a lowercase identifier (got {name!r})")
    platform = read_platform_file(path)
    schedule = platform.get("schedule", settings.schedule)
    return DbtProject(
        name=name,
        path=path,
        profile_name=str(project_yml.get("profile") or name),
        conn_id=str(platform.get("conn_id") or settings.warehouse_conn_id),
        schema=str(platform.get("schema") or name),
        schedule=None if schedule in (None, "none", "manual") else str(schedule),
        owner=str(platform.get("owner") or "data-platform"),
        tags=tuple(platform.get("tags") or ()),
        description=str(platform.get("description") or ""),
        execution_mode=str(platform["execution_mode"]).lower() if platform.get("execution_mode") else None,
        # platform.yml says so; else a project whose connection is a prod environment's (dbt_<name>_prod).
        production=bool(platform.get("production", str(platform.get("conn_id") or "").endswith("_prod"))),
        test_behavior=str(platform["test_behavior"]).lower() if platform.get("test_behavior") else None,
        access_roles=_access_roles(path, platform),
    )


def _access_roles(path: Path, platform: dict) -> tuple[str, ...] | None:
    roles = platform.get("access_roles")
    if roles is None:
        return None
    if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() for r in roles):
        raise DbtProjectError(
            f"{path / PLATFORM_FILE}: 'access_roles' must be a list of Airflow role names (got {roles!r})"
        )
    return tuple(roles)


def project_dirs(settings: Settings | None = None) -> list[Path]:
    """Every folder holding a dbt_project.yml, shipped first, then registered; sorted by path."""
    settings = settings or get_settings()
    found: list[Path] = []
    for root in (settings.dbt_projects_dir, settings.registry_dir):
        if root.is_dir():
            # Hidden folders are work in progress (a registration being built): not projects yet.
            found.extend(
                sorted(p.parent for p in root.glob("*/dbt_project.yml") if not p.parent.name.startswith("."))
            )
    return found


def check_manifest(project: DbtProject) -> dict:
    """Load the project's manifest, or say how to produce it."""
    hint = (
        f"run `make manifests` (or `python -m include.dbt_platform.transformations.manifests {project.path}`)"
    )
    if not project.manifest_path.exists():
        raise DbtProjectError(
            f"dbt project '{project.name}' ({project.path}) has no manifest at "
            f"{project.manifest_path}; {hint}"
        )
    try:
        manifest = json.loads(project.manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise DbtProjectError(
            f"dbt project '{project.name}': manifest {project.manifest_path} is unreadable ({exc}); {hint}"
        ) from exc
    manifest_project = manifest.get("metadata", {}).get("project_name")
    if manifest_project not in (None, project.name):
        raise DbtProjectError(
            f"dbt project '{project.name}': manifest belongs to project '{manifest_project}'; {hint}"
        )
    return manifest


@dataclass
class Discovery:
    projects: list[DbtProject]
    errors: dict[str, str]


def discover(settings: Settings | None = None) -> Discovery:
    """Every loadable project, and for each one that is not, the reason (keyed by folder).

    A project never takes a platform DAG's id, and a registered project never takes a bundled one's
    (bundled projects are read first): whatever order the dag-processor parses files in, the id stays
    with the platform DAG or the bundled project, and the intruder is reported as an import error.
    """
    settings = settings or get_settings()
    projects: list[DbtProject] = []
    errors: dict[str, str] = {}
    seen: dict[str, Path] = {}
    for path in project_dirs(settings):
        try:
            project = load_project(path, settings)
            check_manifest(project)
            if project.name in PLATFORM_DAG_IDS:
                raise DbtProjectError(
                    f"dbt project '{project.name}' at {path} has the id of a platform DAG; it is not loaded "
                    "(rename the project)"
                )
            if project.name in seen:
                raise DbtProjectError(
                    f"dbt project '{project.name}' at {path} has the same name as {seen[project.name]}; "
                    "DAG ids must be unique"
                )
        except DbtProjectError as exc:
            errors[str(path)] = str(exc)
            continue
        seen[project.name] = path
        projects.append(project)
    return Discovery(projects=projects, errors=errors)
