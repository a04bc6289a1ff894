"""The checks a project declares (``platform.yml``), running them, and the report of a run."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2

from include.dbt_platform.transformations.projects import PLATFORM_FILE, DbtProject, read_platform_file
from include.dbt_platform.warehouse_setup import WarehouseSetupError
from include.dbt_platform.warehouse_setup.sql import count_offending_rows, warehouse


@dataclass(frozen=True)
class Check:
    name: str
    sql: str
    severity: str


def checks(proj: DbtProject) -> list[Check]:
    found = []
    for item in read_platform_file(proj.path).get("checks", []):
        severity = str(item.get("severity", "error")).lower()
        if severity not in ("error", "warn") or not item.get("name") or not item.get("sql"):
            raise WarehouseSetupError(
                f"{proj.path / PLATFORM_FILE}: each check needs a name, sql, and severity 'error' or "
                f"'warn' (got {item!r})"
            )
        found.append(Check(str(item["name"]), str(item["sql"]), severity))
    return found


def run_checks(proj: DbtProject) -> list[dict]:
    results = []
    with warehouse(proj) as pg:
        for check in checks(proj):
            statement = check.sql.replace("{{ schema }}", proj.schema).replace("{{schema}}", proj.schema)
            result = {"name": check.name, "severity": check.severity}
            try:
                bad = count_offending_rows(pg, statement)
                results.append({**result, "bad_rows": bad, "outcome": "pass" if bad == 0 else check.severity})
            except psycopg2.Error as exc:
                message = str(exc).strip().splitlines()[0]
                results.append({**result, "bad_rows": None, "outcome": check.severity, "error": message})
    return results


def render_report(project_name: str, mode: str, steps: list[dict], counts: dict[str, int]) -> str:
    lines = [
        f"# warehouse_setup: `{project_name}` ({mode})",
        "",
        "| step | status | seconds | details |",
        "|---|---|---|---|",
    ]
    for step in steps:
        lines.append(
            f"| {step['step']} | {step['status']} | {step.get('seconds', '')} | {step.get('details', '')} |"
        )
    lines += ["", "| relation | rows |", "|---|---|"]
    lines += [f"| {name} | {rows} |" for name, rows in sorted(counts.items())]
    return "\n".join(lines)
