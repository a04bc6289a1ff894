"""Produce each dbt project's ``target/manifest.json`` with dbt itself (``dbt parse``).

Cosmos renders DAGs from this manifest, so DAG parsing never starts dbt. The manifest is always
built here from the project's current files, never committed. ``dbt parse`` needs a profile but
does not connect, so a throwaway profile with no real credentials is written to a temporary folder.

    python -m include.dbt_platform.manifests            # every project
    python -m include.dbt_platform.manifests PATH ...   # the named project folders
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from include.dbt_platform.config import get_settings
from include.dbt_platform.projects import DbtProjectError, load_project, project_dirs


def parse_profile(profile_name: str, schema: str) -> dict:
    """A profile that lets ``dbt parse`` run; it is never used to connect."""
    return {
        profile_name: {
            "target": "parse",
            "outputs": {
                "parse": {
                    "type": "postgres",
                    "host": "127.0.0.1",
                    "port": 5432,
                    "user": "dbt_parse",
                    "password": "unused",
                    "dbname": "dbt_parse",
                    "schema": schema,
                    "threads": 1,
                }
            },
        }
    }


def build_manifest(project_dir: Path) -> Path:
    """Run ``dbt parse`` in ``project_dir``; return the manifest path or raise DbtProjectError."""
    settings = get_settings()
    project = load_project(project_dir, settings)
    with tempfile.TemporaryDirectory(prefix="dbt-parse-profile-") as profiles_dir:
        Path(profiles_dir, "profiles.yml").write_text(
            yaml.safe_dump(parse_profile(project.profile_name, project.schema))
        )
        env = {
            **os.environ,
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            "DO_NOT_TRACK": "true",
        }
        result = subprocess.run(
            [
                settings.dbt_executable,
                "parse",
                "--profiles-dir",
                profiles_dir,
                "--project-dir",
                str(project.path),
                "--no-partial-parse",
                "--quiet",
            ],
            cwd=project.path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise DbtProjectError(f"dbt parse failed for '{project.name}' ({project.path}):\n{output}")
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
