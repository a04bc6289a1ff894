"""The Airflow glue of ``warehouse_setup``: one task per step, then the report task."""

from __future__ import annotations

import logging
import time

from include.dbt_platform.config import get_settings
from include.dbt_platform.warehouse_setup import MODES, WarehouseSetupError
from include.dbt_platform.warehouse_setup.report import render_report
from include.dbt_platform.warehouse_setup.sql import row_counts, warehouse
from include.dbt_platform.warehouse_setup.steps import STEPS, check_confirmation, project

FIRST_STEP = next(iter(STEPS))

log = logging.getLogger(__name__)


def run_named_step(step: str, name: str, mode: str, ti, confirmation: str | None = None) -> dict:
    """Run one step for a task: time it, and on failure push why before failing the task. The first
    step also checks that a destructive run against production was confirmed."""
    from airflow.sdk.exceptions import AirflowFailException

    if mode not in MODES:
        raise AirflowFailException(f"mode must be one of {MODES}, got {mode!r}")
    started = time.monotonic()
    try:
        proj = project(name)
        if step == FIRST_STEP:
            check_confirmation(proj, mode, confirmation)
        outcome = STEPS[step](proj, mode)
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
