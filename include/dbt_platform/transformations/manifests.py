"""Produce each dbt project's ``target/manifest.json`` with dbt itself (``dbt parse``).

Cosmos renders DAGs from this manifest, so DAG parsing never starts dbt. The manifest is always
built here from the project's current files, never committed.

A project that declares dbt packages (``packages.yml`` or ``dependencies.yml``) gets ``dbt deps``
first, into its own ``dbt_packages/``: the manifest includes the packages' macros and models, and
the DAG's tasks find the installed packages there at run time (Cosmos links the folder into each
task's temporary copy of the project; tasks never run ``dbt deps``). Local (``local:``) and git
(``git:``) packages install offline; the dbt package hub (``package:``) cannot be reached from the
platform, so such a project is refused before dbt tries, naming the package.

The project's dbt docs are generated with it (``dbt docs generate --static``: one self-contained
``target/static_index.html``, served per project in Airflow's UI by ``plugins/dbt_docs.py``). They
are built from the manifest alone, without the warehouse (``--no-compile --empty-catalog``): models,
sources, tests, descriptions, columns as documented and the lineage graph; no column types or row
counts read from the database. A docs build that fails is reported and leaves the manifest in place.

    python -m include.dbt_platform.transformations.manifests            # every project
    python -m include.dbt_platform.transformations.manifests PATH ...   # the named project folders
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from include.dbt_platform.config import get_settings
from include.dbt_platform.transformations import dbt
from include.dbt_platform.transformations.projects import (
    DbtProject,
    DbtProjectError,
    load_project,
    project_dirs,
)

log = logging.getLogger(__name__)
DOCS_FILE = "static_index.html"
# Where dbt reads a project's package list from (dbt refuses a project that has both).
PACKAGE_FILES = ("packages.yml", "dependencies.yml")


def build_manifest(project_dir: Path) -> Path:
    """Install the project's dbt packages (if any), then run ``dbt parse`` in ``project_dir``;
    return the manifest path or raise DbtProjectError."""
    project = load_project(project_dir, get_settings())
    packages = declared_packages(project)
    refuse_unreachable_packages(project, packages)
    with dbt.parse_profile(project) as profile:
        if packages:
            outcome = dbt.run(project, ["deps", "--quiet", "--log-level-file", "none"], profile)
            if not outcome.success:
                raise DbtProjectError(
                    f"dbt deps failed for '{project.name}' ({project.path}): its packages could not be "
                    f"installed:\n{outcome.error}"
                )
        outcome = dbt.run(
            project, ["parse", "--no-partial-parse", "--quiet", "--log-level-file", "none"], profile
        )
        if not outcome.success:
            raise DbtProjectError(f"dbt parse failed for '{project.name}' ({project.path}):\n{outcome.error}")
        build_docs(project, profile)
    return project.manifest_path


def docs_path(project: DbtProject) -> Path:
    """The project's dbt docs: one HTML file with its manifest and catalog inside."""
    return project.manifest_path.parent / DOCS_FILE


def build_docs(project: DbtProject, profile: dbt.Profile) -> Path | None:
    """``dbt docs generate`` from the manifest just parsed, without the warehouse; None if it failed."""
    args = ["docs", "generate", "--no-compile", "--empty-catalog", "--static", "--quiet"]
    outcome = dbt.run(project, [*args, "--log-level-file", "none"], profile)
    if not outcome.success or not docs_path(project).exists():
        log.warning("dbt docs generate failed for '%s' (%s): %s", project.name, project.path, outcome.error)
        return None
    return docs_path(project)


def declared_packages(project: DbtProject) -> list[dict]:
    """The entries of the project's ``packages:`` list (from ``packages.yml`` or ``dependencies.yml``)."""
    entries: list[dict] = []
    for name in PACKAGE_FILES:
        path = project.path / name
        if not path.exists():
            continue
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise DbtProjectError(f"dbt project '{project.name}': cannot read {path}: {exc}") from exc
        packages = data.get("packages") if isinstance(data, dict) else None
        if packages is None:
            continue
        if not isinstance(packages, list) or not all(isinstance(p, dict) for p in packages):
            raise DbtProjectError(
                f"dbt project '{project.name}': 'packages' in {path} must be a list of mappings"
            )
        entries.extend(packages)
    return entries


def refuse_unreachable_packages(project: DbtProject, packages: list[dict]) -> None:
    """Raise DbtProjectError naming every package that comes from the dbt package hub.

    ``dbt deps`` would fetch them from hub.getdbt.com, which the platform cannot reach: it would
    fail (or hang on the network) with an error that does not say which package or what to do.
    """
    hub = [str(p["package"]) for p in packages if "package" in p]
    if not hub:
        return
    reasons = "; ".join(
        f"package {name} comes from the dbt package hub, which this platform cannot reach" for name in hub
    )
    raise DbtProjectError(
        f"dbt project '{project.name}' ({project.path}): {reasons}; vendor it as a local package "
        "(`local: <path>` in packages.yml) or use a git URL (`git: <url>`, with `revision:`)"
    )


def main(argv: list[str]) -> int:
    targets = [Path(a) for a in argv] or project_dirs()
    failed = 0
    for path in targets:
        try:
            manifest = build_manifest(path)
        except DbtProjectError as exc:
            failed += 1
            print(f"FAILED  {exc}", file=sys.stderr)
        else:
            print(f"ok      {manifest}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
