"""Produce each dbt project's ``target/manifest.json`` with dbt itself (``dbt parse``).

Cosmos renders DAGs from this manifest, so DAG parsing never starts dbt. The manifest is always
built here from the project's current files, never committed.

    python -m include.dbt_platform.transformations.manifests            # every project
    python -m include.dbt_platform.transformations.manifests PATH ...   # the named project folders
"""

from __future__ import annotations

import sys
from pathlib import Path

from include.dbt_platform.config import get_settings
from include.dbt_platform.transformations import dbt
from include.dbt_platform.transformations.projects import DbtProjectError, load_project, project_dirs


def build_manifest(project_dir: Path) -> Path:
    """Run ``dbt parse`` in ``project_dir``; return the manifest path or raise DbtProjectError."""
    project = load_project(project_dir, get_settings())
    with dbt.parse_profile(project) as profile:
        outcome = dbt.run(
            project, ["parse", "--no-partial-parse", "--quiet", "--log-level-file", "none"], profile
        )
    if not outcome.success:
        raise DbtProjectError(f"dbt parse failed for '{project.name}' ({project.path}):\n{outcome.error}")
    return project.manifest_path


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
