"""Git adapter: a repository holding a runnable dbt project scaffold, with an initial commit."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

from include.dbt_platform.errors import Conflict

MARKER_FILE = "dbt-platform-saga"  # inside .git/: never committed


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=dbt-platform",
            "-c",
            "user.email=dbt-platform@localhost",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )


def scaffold(project_name: str, owner: str, description: str) -> dict[str, str]:
    """The files of a new dbt project: one staging-style model with tests, documented."""
    return {
        "dbt_project.yml": textwrap.dedent(f"""\
            name: {project_name}
            version: "1.0.0"
            config-version: 2
            profile: {project_name}
            model-paths: ["models"]
            models:
              {project_name}:
                +materialized: view
            """),
        "models/example/platform_heartbeat.sql": textwrap.dedent("""\
            -- Replace with your models. This one proves the project builds with its own credentials.
            with source as (
                select 1 as heartbeat_id, current_user as built_by
            )
            select * from source
            """),
        "models/example/_example__models.yml": textwrap.dedent("""\
            version: 2
            models:
              - name: platform_heartbeat
                description: A one-row model written by the platform's scaffold.
                columns:
                  - name: heartbeat_id
                    description: Always 1.
                    data_tests: [unique, not_null]
            """),
        "README.md": f"# {project_name}\n\n{description or 'A dbt project.'}\n\nOwner: {owner}\n",
        ".gitignore": "target/\nlogs/\ndbt_packages/\n",
    }


def marker_of(path: Path) -> str | None:
    marker = path / ".git" / MARKER_FILE
    return marker.read_text().strip() if marker.exists() else None


def create_repository(path: Path, files: dict[str, str], saga_id: str) -> None:
    if path.exists():
        if marker_of(path) == saga_id:
            shutil.rmtree(path)  # a half-made attempt of this saga: start clean
        else:
            raise Conflict(f"repository {path} already exists")
    path.mkdir(parents=True)
    _git("init", "-q", cwd=path)
    (path / ".git" / MARKER_FILE).write_text(saga_id)
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _git("add", "-A", cwd=path)
    _git("commit", "-q", "-m", "Initial dbt project scaffold (dbt platform)", cwd=path)


def clone(source: Path, dest: Path, saga_id: str) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(source), str(dest)], check=True, capture_output=True, text=True)
    (dest / ".git" / MARKER_FILE).write_text(saga_id)


def remove_repository(path: Path, saga_id: str) -> bool:
    if path.exists() and marker_of(path) == saga_id:
        shutil.rmtree(path)
        return True
    return False
