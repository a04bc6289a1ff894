"""The six steps of ``warehouse_setup``, as plain functions of a project and a mode.

Each returns ``{"status": ..., "details": ...}`` or raises :class:`WarehouseSetupError`; the DAG's
tasks (:mod:`.tasks`) add timing and turn failures into failed tasks whose XCom still says why.
"""

from __future__ import annotations

from include.dbt_platform.config import Settings
from include.dbt_platform.transformations.projects import DbtProject, discover
from include.dbt_platform.warehouse_setup import WarehouseSetupError
from include.dbt_platform.warehouse_setup.dbt_runs import (
    changed_seeds,
    compile_check,
    configuration_args,
    foundation_selector,
    missing_seed_files,
    remember_seeds,
    run_dbt,
    seed_files,
)
from include.dbt_platform.warehouse_setup.report import run_checks
from include.dbt_platform.warehouse_setup.sql import clear_relations, relations, warehouse


def project_names(settings: Settings | None = None) -> list[str]:
    return sorted(p.name for p in discover(settings).projects)


def project(name: str, settings: Settings | None = None) -> DbtProject:
    found = {p.name: p for p in discover(settings).projects}
    if name not in found:
        raise WarehouseSetupError(f"unknown dbt project {name!r}; choose one of {sorted(found)}")
    return found[name]


DESTRUCTIVE_MODES = ("complete", "quick")  # they drop relations or replace seed tables


def check_confirmation(proj: DbtProject, mode: str, confirmation: str | None) -> None:
    """A destructive mode against a production target runs only when its name was typed to confirm."""
    if proj.production and mode in DESTRUCTIVE_MODES and (confirmation or "").strip() != proj.name:
        raise WarehouseSetupError(
            f"project {proj.name!r} targets production (schema {proj.schema}, connection {proj.conn_id}); "
            f"mode {mode!r} replaces what is there. Type the project's name in 'confirm_production' to "
            "run it anyway, or use mode 'status'. Nothing was changed."
        )


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
