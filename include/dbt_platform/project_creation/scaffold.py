"""The files of a new project's repository: a runnable dbt project, its first commit."""

from __future__ import annotations

import textwrap


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
