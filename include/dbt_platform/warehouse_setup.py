"""The steps of ``warehouse_setup`` (SPEC workflow 3), as plain functions the DAG file wires together.

``complete``: clear ``stg_``/``int_``/``fct_``/``dim_`` relations, load every seed, run foundation
models, run configuration models, validate, report. ``quick``: no clearing, only seeds whose file
changed (or whose table is missing). ``status``: a read-only report.

Model groups: *foundation* models are those tagged ``foundation``; if no model has that tag, every
model under ``models/staging/``. *Configuration* models are those tagged ``configuration``; if no
model has that tag, every other model. Data-quality checks live in the project's ``platform.yml``::

    checks:
      - name: no_orphan_applications
        severity: error          # error fails the run; warn only reports
        sql: select count(*) from {{ schema }}.fct_applications where owner_email is null

Each check's SQL returns the number of offending rows. Every failure that users commonly hit raises
:class:`WarehouseSetupError` with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psycopg2
import yaml
from psycopg2 import errors, sql

from include.dbt_platform import cosmos_config
from include.dbt_platform.adapters.postgres import connection_params
from include.dbt_platform.config import Settings, get_settings
from include.dbt_platform.projects import PLATFORM_FILE, DbtProject, check_manifest, discover

log = logging.getLogger(__name__)

MODES = ("complete", "quick", "status")
CLEARED_PREFIXES = ("stg_", "int_", "fct_", "dim_")
LOCK_TIMEOUT = "5s"


class WarehouseSetupError(Exception):
    """A failure with a message that tells the operator what to do."""


@dataclass(frozen=True)
class Check:
    name: str
    sql: str
    severity: str


# ----------------------------------------------------------------------------------- lookups


def project_names(settings: Settings | None = None) -> list[str]:
    return sorted(p.name for p in discover(settings).projects)


def project(name: str, settings: Settings | None = None) -> DbtProject:
    found = {p.name: p for p in discover(settings).projects}
    if name not in found:
        raise WarehouseSetupError(f"unknown dbt project {name!r}; choose one of {sorted(found)}")
    return found[name]


def checks(proj: DbtProject) -> list[Check]:
    path = proj.path / PLATFORM_FILE
    raw = (yaml.safe_load(path.read_text()) or {}).get("checks", []) if path.exists() else []
    found = []
    for item in raw:
        severity = str(item.get("severity", "error")).lower()
        if severity not in ("error", "warn") or not item.get("name") or not item.get("sql"):
            raise WarehouseSetupError(
                f"{path}: each check needs a name, sql, and severity 'error' or 'warn' (got {item!r})"
            )
        found.append(Check(str(item["name"]), str(item["sql"]), severity))
    return found


# ----------------------------------------------------------------------------------- warehouse


@contextlib.contextmanager
def warehouse(proj: DbtProject) -> Iterator[psycopg2.extensions.connection]:
    params = connection_params(proj.conn_id)
    where = f"{params['host']}:{params['port']}/{params['dbname']} (Airflow connection '{proj.conn_id}')"
    try:
        pg = psycopg2.connect(**params, connect_timeout=5, application_name="warehouse_setup")
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise WarehouseSetupError(
            f"cannot reach the warehouse at {where}: {reason}. Check that PostgreSQL is running "
            "(`make run` starts the local one) and that the connection's host, port and credentials "
            "are right, then re-run."
        ) from None
    pg.autocommit = True
    try:
        yield pg
    finally:
        pg.close()


def relations(pg, schema: str) -> dict[str, str]:
    """Name -> kind ('table', 'view', 'materialized view') of every relation in the schema."""
    with pg.cursor() as cur:
        cur.execute(
            "select c.relname, case c.relkind when 'r' then 'table' when 'v' then 'view' "
            "when 'm' then 'materialized view' end from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind in ('r', 'v', 'm') order by c.relname",
            (schema,),
        )
        return dict(cur.fetchall())


def row_counts(pg, schema: str) -> dict[str, int | str]:
    """Rows per relation; a relation another session holds locked is reported, not waited for."""
    counts: dict[str, int | str] = {}
    with pg.cursor() as cur:
        cur.execute("set lock_timeout = '2s'")
        for name in relations(pg, schema):
            try:
                cur.execute(
                    sql.SQL("select count(*) from {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
                )
                counts[name] = cur.fetchone()[0]
            except errors.LockNotAvailable:
                counts[name] = f"locked by {_lock_holder(pg, schema, name)}"
            except psycopg2.Error as exc:
                counts[name] = f"unreadable: {str(exc).strip().splitlines()[0]}"
    return counts


def _lock_holder(pg, schema: str, name: str) -> str:
    with pg.cursor() as cur:
        cur.execute(
            "select a.pid, a.usename, a.state, left(a.query, 80) from pg_locks l "
            "join pg_class c on c.oid = l.relation join pg_namespace n on n.oid = c.relnamespace "
            "join pg_stat_activity a on a.pid = l.pid "
            "where n.nspname = %s and c.relname = %s and l.granted and a.pid <> pg_backend_pid() limit 1",
            (schema, name),
        )
        row = cur.fetchone()
    if not row:
        return "another session"
    pid, user, state, query = row
    return f"session pid {pid} (user {user}, {state}: {query!r})"


def clear_relations(proj: DbtProject) -> list[str]:
    """Drop the schema's stg_/int_/fct_/dim_ relations (views before tables). Returns what was dropped."""
    dropped = []
    with warehouse(proj) as pg:
        found = relations(pg, proj.schema)
        targets = sorted(
            (n for n in found if n.startswith(CLEARED_PREFIXES)), key=lambda n: (found[n] == "table", n)
        )
        with pg.cursor() as cur:
            cur.execute(f"set lock_timeout = '{LOCK_TIMEOUT}'")
            for name in targets:
                kind = sql.SQL(found[name].upper())
                statement = sql.SQL("drop {} if exists {}.{} cascade").format(
                    kind, sql.Identifier(proj.schema), sql.Identifier(name)
                )
                try:
                    cur.execute(statement)
                except errors.LockNotAvailable:
                    holder = _lock_holder(pg, proj.schema, name)
                    raise WarehouseSetupError(
                        f"relation {proj.schema}.{name} is locked by {holder}; it was not dropped after "
                        f"{LOCK_TIMEOUT}. Wait for that session to finish (or end it: select "
                        "pg_terminate_backend(<pid>)), then re-run."
                    ) from None
                dropped.append(name)
    return dropped


# ----------------------------------------------------------------------------------- dbt


@lru_cache(maxsize=8)
def _manifest(proj: DbtProject, mtime_ns: int) -> dict:
    return check_manifest(proj)


def _manifest_nodes(proj: DbtProject, resource_type: str) -> dict[str, dict]:
    # A step asks several questions of one manifest; read it once per version of the file.
    manifest = _manifest(proj, proj.manifest_path.stat().st_mtime_ns if proj.manifest_path.exists() else 0)
    return {
        uid: node
        for uid, node in manifest.get("nodes", {}).items()
        if node.get("resource_type") == resource_type and node.get("package_name") == proj.name
    }


def seed_files(proj: DbtProject) -> dict[str, Path]:
    return {
        node["name"]: proj.path / node["original_file_path"]
        for node in _manifest_nodes(proj, "seed").values()
    }


def missing_seed_files(proj: DbtProject) -> list[str]:
    return [
        f"{name} ({path.relative_to(proj.path)})"
        for name, path in seed_files(proj).items()
        if not path.exists()
    ]


def foundation_selector(proj: DbtProject) -> str:
    models = _manifest_nodes(proj, "model").values()
    if any("foundation" in (m.get("tags") or []) for m in models):
        return "tag:foundation"
    return "path:models/staging"


def configuration_args(proj: DbtProject) -> list[str]:
    models = _manifest_nodes(proj, "model").values()
    if any("configuration" in (m.get("tags") or []) for m in models):
        return ["--select", "tag:configuration"]
    return ["--exclude", foundation_selector(proj)]


@dataclass
class DbtOutcome:
    success: bool
    nodes: list[dict]
    error: str | None


def run_dbt(proj: DbtProject, args: list[str], settings: Settings | None = None) -> DbtOutcome:
    """Run dbt in this process with a profile rendered by Cosmos from the project's connection."""
    from dbt.cli.main import dbtRunner

    settings = settings or get_settings()
    profile = cosmos_config.profile_config(proj, settings)
    with profile.ensure_profile() as (profile_path, env_vars), tempfile.TemporaryDirectory() as work:
        saved = {k: os.environ.get(k) for k in env_vars}
        os.environ.update(env_vars)
        try:
            result = dbtRunner().invoke(
                [
                    *args,
                    "--project-dir",
                    str(proj.path),
                    "--profiles-dir",
                    str(Path(profile_path).parent),
                    "--profile",
                    proj.profile_name,
                    "--target",
                    "airflow",
                    "--target-path",
                    str(Path(work) / "target"),
                    "--log-path",
                    str(Path(work) / "logs"),
                ]  # fmt: skip
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    nodes = []
    for r in getattr(result.result, "results", None) or []:
        response = getattr(r, "adapter_response", None) or {}
        nodes.append(
            {
                "name": r.node.name,
                "type": r.node.resource_type,
                "status": str(r.status),
                "seconds": round(r.execution_time or 0, 2),
                "rows": response.get("rows_affected"),
                "message": r.message,
            }
        )
    error = None
    if result.exception is not None:
        error = str(result.exception).strip()
    elif not result.success:
        failed = [n for n in nodes if n["status"] in ("error", "fail", "runtime error")]
        error = "; ".join(f"{n['name']}: {n['message']}" for n in failed) or "dbt reported a failure"
    return DbtOutcome(success=bool(result.success), nodes=nodes, error=error)


def compile_check(proj: DbtProject) -> None:
    outcome = run_dbt(proj, ["parse"])
    if not outcome.success:
        first = (outcome.error or "").splitlines()[:6]
        raise WarehouseSetupError(
            f"dbt cannot compile project {proj.name!r}: "
            + " ".join(line.strip() for line in first)
            + f". Fix the model or YAML it names, then re-run (locally: dbt parse --project-dir {proj.path})."
        )


# ----------------------------------------------------------------------------------- seeds


def seed_state_file(proj: DbtProject, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.state_dir / "warehouse_setup" / f"{proj.name}.{proj.schema}.seeds.json"


def seed_checksums(proj: DbtProject) -> dict[str, str]:
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in seed_files(proj).items()}


def seed_schemas(proj: DbtProject) -> dict[str, str]:
    """Seed name -> the schema its table lands in (dbt's default generate_schema_name)."""
    found = {}
    for node in _manifest_nodes(proj, "seed").values():
        custom = (node.get("config") or {}).get("schema")
        found[node["name"]] = f"{proj.schema}_{custom}" if custom else proj.schema
    return found


def changed_seeds(proj: DbtProject, pg) -> list[str]:
    """Seeds whose file changed since they were last loaded here, or whose table is missing."""
    state_file = seed_state_file(proj)
    loaded = json.loads(state_file.read_text()) if state_file.exists() else {}
    schemas = seed_schemas(proj)
    found = {schema: relations(pg, schema) for schema in set(schemas.values())}
    present = {name for name, schema in schemas.items() if name in found[schema]}
    return sorted(
        name
        for name, digest in seed_checksums(proj).items()
        if loaded.get(name) != digest or name not in present
    )


def remember_seeds(proj: DbtProject, names: list[str]) -> None:
    state_file = seed_state_file(proj)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    loaded = json.loads(state_file.read_text()) if state_file.exists() else {}
    current = seed_checksums(proj)
    loaded.update({n: current[n] for n in names})
    state_file.write_text(json.dumps(loaded, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------- validate


def run_checks(proj: DbtProject) -> list[dict]:
    results = []
    with warehouse(proj) as pg, pg.cursor() as cur:
        for check in checks(proj):
            statement = check.sql.replace("{{ schema }}", proj.schema).replace("{{schema}}", proj.schema)
            try:
                cur.execute(statement)
                bad = int(cur.fetchone()[0])
                outcome = "pass" if bad == 0 else check.severity
                results.append(
                    {"name": check.name, "severity": check.severity, "bad_rows": bad, "outcome": outcome}
                )
            except psycopg2.Error as exc:
                message = str(exc).strip().splitlines()[0]
                results.append(
                    {
                        "name": check.name,
                        "severity": check.severity,
                        "bad_rows": None,
                        "outcome": check.severity,
                        "error": message,
                    }  # fmt: skip
                )
    return results


# ----------------------------------------------------------------------------------- report


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


# ----------------------------------------------------------------------------------- the steps
# Each returns {"status": ..., "details": ...}; the DAG's tasks add timing and turn failures into
# failed tasks whose XCom still says why (the report reads it).


def step_preflight(proj: DbtProject, mode: str) -> dict:
    missing = missing_seed_files(proj)
    if missing and mode != "status":
        raise WarehouseSetupError(
            f"seed file(s) missing for project {proj.name!r}: {', '.join(missing)}. Restore them (e.g. "
            "git checkout -- seeds/) or remove the seeds from the project and run `make manifests`."
        )
    with warehouse(proj) as pg:
        found = relations(pg, proj.schema)
    if mode != "status":
        compile_check(proj)
    return {
        "status": "ok",
        "details": f"schema {proj.schema}: {len(found)} relations; connection {proj.conn_id}",
    }


def step_clear(proj: DbtProject, mode: str) -> dict:
    if mode != "complete":
        return {"status": "skipped", "details": f"{mode} mode keeps existing relations"}
    dropped = clear_relations(proj)
    return {"status": "ok", "details": f"dropped {len(dropped)}: {', '.join(dropped) or 'nothing'}"}


def step_seeds(proj: DbtProject, mode: str) -> dict:
    if mode == "complete":
        selected = sorted(seed_files(proj))
    else:
        with warehouse(proj) as pg:
            selected = changed_seeds(proj, pg)
        if mode == "status":
            return {"status": "skipped", "details": f"read-only; seeds that would load: {selected or 'none'}"}
        if not selected:
            return {"status": "ok", "details": "all seeds unchanged"}
    outcome = run_dbt(proj, ["seed", "--full-refresh", "--select", *selected])
    if not outcome.success:
        raise WarehouseSetupError(f"loading seeds failed: {outcome.error}")
    remember_seeds(proj, selected)
    rows = ", ".join(f"{n['name']} ({n['rows']} rows)" for n in outcome.nodes)
    return {"status": "ok", "details": f"loaded {rows}"}


def _run_models(proj: DbtProject, mode: str, label: str, selection: list[str]) -> dict:
    if mode == "status":
        return {"status": "skipped", "details": "read-only"}
    outcome = run_dbt(proj, ["run", *selection])
    if not outcome.success:
        raise WarehouseSetupError(f"{label} models failed: {outcome.error}")
    built = ", ".join(f"{n['name']} ({n['seconds']}s)" for n in outcome.nodes)
    return {"status": "ok", "details": f"built {len(outcome.nodes)}: {built or 'none selected'}"}


def step_foundation(proj: DbtProject, mode: str) -> dict:
    return _run_models(proj, mode, "foundation", ["--select", foundation_selector(proj)])


def step_configuration(proj: DbtProject, mode: str) -> dict:
    return _run_models(proj, mode, "configuration", configuration_args(proj))


def step_validate(proj: DbtProject, mode: str) -> dict:
    if mode == "status":
        return {"status": "skipped", "details": "read-only"}
    tests = run_dbt(proj, ["test"])
    dq = run_checks(proj)
    failed_tests = [n["name"] for n in tests.nodes if n["status"] in ("fail", "error")]
    warned_tests = [n["name"] for n in tests.nodes if n["status"] == "warn"]
    errors_ = [c["name"] for c in dq if c["outcome"] == "error"]
    warnings = [c["name"] for c in dq if c["outcome"] == "warn"]
    details = (
        f"dbt tests: {len(tests.nodes) - len(failed_tests)}/{len(tests.nodes)} passed"
        + (f", warned: {warned_tests}" if warned_tests else "")
        + "; checks: "
        + ", ".join(f"{c['name']}={c['outcome']}({c['bad_rows']})" for c in dq)
    )
    if tests.error and not tests.nodes:
        raise WarehouseSetupError(f"dbt test could not run: {tests.error}")
    if failed_tests or errors_:
        raise WarehouseSetupError(
            f"validation failed: dbt tests {failed_tests or 'ok'}, error-severity checks {errors_ or 'ok'} ({details})"
        )
    return {"status": "warn" if (warnings or warned_tests) else "ok", "details": details}


STEPS = {
    "preflight": step_preflight,
    "clear_relations": step_clear,
    "load_seeds": step_seeds,
    "run_foundation": step_foundation,
    "run_configuration": step_configuration,
    "validate": step_validate,
}


def run_named_step(step: str, name: str, mode: str, ti) -> dict:
    """Run one step for a task: time it, and on failure push why before failing the task."""
    from airflow.sdk.exceptions import AirflowFailException

    if mode not in MODES:
        raise AirflowFailException(f"mode must be one of {MODES}, got {mode!r}")
    started = time.monotonic()
    try:
        outcome = STEPS[step](project(name), mode)
    except WarehouseSetupError as exc:
        ti.xcom_push(key="outcome", value={"step": step, "status": "failed", "details": str(exc),
                                          "seconds": round(time.monotonic() - started, 2)})  # fmt: skip
        raise AirflowFailException(str(exc)) from None
    outcome = {"step": step, **outcome, "seconds": round(time.monotonic() - started, 2)}
    ti.xcom_push(key="outcome", value=outcome)
    return outcome


def report(name: str, mode: str, ti) -> dict:
    """Collect every step's outcome and the relations' row counts; fail if a step failed."""
    from airflow.sdk.exceptions import AirflowFailException

    steps = []
    for step in STEPS:
        outcome = ti.xcom_pull(task_ids=step, key="outcome")
        steps.append(outcome or {"step": step, "status": "not run", "details": "an earlier step failed"})
    counts: dict[str, int] = {}
    try:
        proj = project(name)
        with warehouse(proj) as pg:
            counts = row_counts(pg, proj.schema)
    except WarehouseSetupError as exc:
        steps.append({"step": "report", "status": "failed", "details": str(exc)})
    text = render_report(name, mode, steps, counts)
    log.info("report\n%s", text)
    path = get_settings().state_dir / "warehouse_setup" / f"{name}.report.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    result = {"project": name, "mode": mode, "steps": steps, "row_counts": counts, "markdown": text}
    ti.xcom_push(key="report", value=result)
    failed = [s for s in steps if s["status"] == "failed"]
    if failed:
        raise AirflowFailException(f"warehouse_setup failed at {failed[0]['step']}: {failed[0]['details']}")
    return result
