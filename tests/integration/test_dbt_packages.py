"""dbt packages: a project that uses a local and a git package gets ``dbt deps`` when its manifest is
built, and its DAG's tasks find the installed packages at run time (real dbt, PostgreSQL, Airflow)."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

from include.dbt_platform.config import REPO_ROOT
from tests.harness import build_manifest, query, run_dag_test


def write_package(folder: Path, name: str, macros: str) -> Path:
    (folder / "macros").mkdir(parents=True)
    (folder / "dbt_project.yml").write_text(f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\n")
    (folder / "macros" / f"{name}.sql").write_text(textwrap.dedent(macros))
    return folder


def git_repository_of(folder: Path) -> str:
    """Commit ``folder`` as a git repository on branch ``main``; its URL for ``dbt deps``."""

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", ".")
    git("-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "package")
    return f"file://{folder}"


def test_local_and_git_packages_are_installed_and_the_dag_runs_green(
    projects_dir: Path, tmp_path: Path, warehouse
):
    name = "packaged_project"
    project = projects_dir / name
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        f"name: {name}\nversion: '1.0.0'\nconfig-version: 2\nprofile: {name}\n"
        "models:\n  +materialized: table\n"
    )
    # A vendored local package inside the project, and a package from a git repository.
    write_package(
        project / "vendor" / "shared_macros",
        "shared_macros",
        "{% macro double(x) %}({{ x }}) * 2{% endmacro %}\n",
    )
    git_url = git_repository_of(
        write_package(
            tmp_path / "git_macros",
            "git_macros",
            "{% macro greeting() %}'hello from git'{% endmacro %}\n",
        )
    )
    (project / "packages.yml").write_text(
        f"packages:\n  - local: vendor/shared_macros\n  - git: '{git_url}'\n    revision: main\n"
    )
    (project / "models" / "answers.sql").write_text(
        "select {{ shared_macros.double(21) }} as answer, {{ git_macros.greeting() }} as greeting\n"
    )
    (project / "models" / "_models.yml").write_text(
        "version: 2\nmodels:\n  - name: answers\n    columns:\n"
        "      - name: answer\n        data_tests: [not_null]\n"
    )

    build_manifest(project)

    assert (project / "dbt_packages" / "shared_macros" / "macros" / "shared_macros.sql").exists()
    assert (project / "dbt_packages" / "git_macros" / "macros" / "git_macros.sql").exists()
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags[name]
    # Tasks never install packages themselves (no network, no per-task cost): they use the project's.
    assert all(getattr(task, "install_deps", False) is False for task in dag.tasks)

    run, states = run_dag_test(dag)

    assert run.state == "success", states
    assert query(warehouse, f"select answer, greeting from {name}.answers") == [(42, "hello from git")]
    with warehouse.cursor() as cur:
        cur.execute(f"drop schema {name} cascade")
