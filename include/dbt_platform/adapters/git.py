"""Git adapter: a repository holding a runnable dbt project scaffold, with an initial commit.

Repositories (and registered copies) are built in a folder whose name carries the saga's id, then
renamed into place: a crash part way leaves that folder, which the compensation recognises and
removes, never a half-made repository under the project's name.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from include.dbt_platform.boundaries import boundary
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


def staging_path(path: Path, saga_id: str) -> Path:
    """Where ``path`` is built before it is renamed into place: beside it, named after the saga."""
    return path.with_name(f".{path.name}.{saga_id.replace('-', '')[:12]}.partial")


def _start(path: Path, saga_id: str) -> Path:
    if path.exists():
        if marker_of(path) == saga_id:
            shutil.rmtree(path)  # a whole earlier attempt of this saga: start clean
        else:
            raise Conflict(f"repository {path} already exists")
    staging = staging_path(path, saga_id)
    shutil.rmtree(staging, ignore_errors=True)  # a half-made earlier attempt of this saga
    staging.parent.mkdir(parents=True, exist_ok=True)
    return staging


def create_repository(path: Path, files: dict[str, str], saga_id: str) -> None:
    staging = _start(path, saga_id)
    staging.mkdir()
    _git("init", "-q", cwd=staging)
    (staging / ".git" / MARKER_FILE).write_text(saga_id)
    boundary("repository initialised, scaffold not yet written")
    for rel, content in files.items():
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _git("add", "-A", cwd=staging)
    _git("commit", "-q", "-m", "Initial dbt project scaffold (dbt platform)", cwd=staging)
    boundary("repository committed, not yet in place")
    staging.rename(path)


@contextmanager
def cloned(source: Path, dest: Path, saga_id: str) -> Iterator[Path]:
    """A clone of ``source`` to prepare (the caller adds files), renamed to ``dest`` when done."""
    staging = _start(dest, saga_id)
    subprocess.run(
        ["git", "clone", "-q", str(source), str(staging)], check=True, capture_output=True, text=True
    )
    (staging / ".git" / MARKER_FILE).write_text(saga_id)
    boundary("repository cloned, not yet prepared")
    yield staging
    boundary("clone prepared, not yet in place")
    staging.rename(dest)


def remove_repository(path: Path, saga_id: str) -> bool:
    """Remove what this saga made at ``path``: the repository, or a half-made one beside it."""
    removed = False
    if path.exists() and marker_of(path) == saga_id:
        shutil.rmtree(path)
        removed = True
    staging = staging_path(path, saga_id)
    if staging.exists():
        shutil.rmtree(staging)
        removed = True
    return removed


def archive(path: Path, bundle: Path) -> Path:
    """Every ref of the repository at ``path`` into one file (``git bundle``), written atomically."""
    bundle.parent.mkdir(parents=True, exist_ok=True)
    partial = bundle.with_name(f".{bundle.name}.partial")
    subprocess.run(
        ["git", "bundle", "create", "-q", str(partial), "--all"],
        cwd=path,
        check=True,
        capture_output=True,
        text=True,
    )
    partial.rename(bundle)
    return bundle


def move_aside(path: Path, saga_id: str) -> Path:
    """Move ``path`` to a hidden sibling named after the saga (idempotent); returns where it is."""
    aside = path.with_name(f".{path.name}.{saga_id.replace('-', '')[:12]}.aside")
    if path.exists() and not aside.exists():
        path.rename(aside)
    return aside


def move_back(path: Path, saga_id: str) -> None:
    """Undo :func:`move_aside` (idempotent)."""
    aside = path.with_name(f".{path.name}.{saga_id.replace('-', '')[:12]}.aside")
    if aside.exists() and not path.exists():
        aside.rename(path)
