"""Produce each dbt project's ``target/manifest.json`` with dbt itself (``dbt parse``).

Cosmos renders DAGs from this manifest, so DAG parsing never starts dbt. The manifest is always
built here from the project's current files, never committed.

A project that declares dbt packages (``packages.yml`` or ``dependencies.yml``) gets ``dbt deps``
first, into its own ``dbt_packages/``: the manifest includes the packages' macros and models, and
the DAG's tasks find the installed packages there at run time (Cosmos links the folder into each
task's temporary copy of the project; tasks never run ``dbt deps``). Local (``local:``) and git
(``git:``) packages install offline; the dbt package hub (``package:``) cannot be reached from the
platform, so such a project is refused before dbt tries, naming the package.

The project's dbt docs come from the manifest alone, without the warehouse: models, sources, tests,
descriptions, columns as documented and the lineage graph; no column types or row counts read from
the database. :func:`docs_page` puts dbt's docs site together when it is asked for
(``plugins/dbt_docs.py``): dbt's ``index.html`` with the manifest and an empty catalog inlined, as
``dbt docs generate --static --empty-catalog`` would write it, never stored. A stored page was
2.3 MB per project (dbt's site is 1.8 MB of it) in the registered-projects bundle, which every
registration, sync and worker fetches, and cost a second dbt invocation per build.

    python -m include.dbt_platform.transformations.manifests            # every project
    python -m include.dbt_platform.transformations.manifests PATH ...   # the named project folders
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from datetime import UTC, datetime
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
    return project.manifest_path


def _empty_catalog() -> str:
    """dbt's catalog artifact with nothing in it (``dbt docs generate --empty-catalog``'s)."""
    import json

    from dbt.artifacts.schemas.catalog import CatalogArtifact

    catalog = CatalogArtifact.from_results(
        generated_at=datetime.now(UTC).replace(tzinfo=None), nodes={}, sources={}, compile_results=None,
        errors=None,
    )  # fmt: skip
    return json.dumps(catalog.to_dict(omit_none=False, context={"artifact": True}))


def _inline(data: str) -> str:
    # JSON inside a <script>: "</" written "<\\/" (the same string to JSON), so nothing an owner writes
    # in a description (a "</script>") can end the script and run in the reader's browser. dbt's own
    # ``--static`` page inlines it as it is.
    return data.replace("</", "<\\/")


def docs_page(project: DbtProject) -> str | None:
    """dbt's docs site for the project with its manifest and an empty catalog inlined (what ``dbt
    docs generate --static --empty-catalog`` writes, less the script injection); None without a
    manifest."""
    if not project.manifest_path.exists():
        return None
    spec = importlib.util.find_spec("dbt.task.docs")  # the folder only: dbt.task is not imported
    site = Path(next(iter(spec.submodule_search_locations)), "index.html").read_text()
    return site.replace('"MANIFEST.JSON INLINE DATA"', _inline(project.manifest_path.read_text()), 1).replace(
        '"CATALOG.JSON INLINE DATA"', _inline(_empty_catalog()), 1
    )


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
