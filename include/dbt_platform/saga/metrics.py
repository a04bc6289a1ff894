"""Saga metrics through Airflow's metrics layer (StatsD or OpenTelemetry, as ``[metrics]`` configures).

Names carry the saga, the step and the outcome so plain StatsD (no tags) can tell them apart; the same
facts go along as tags for backends that keep them. Durations are also in the journal
(``saga.step_durations``). A metrics failure never fails a saga.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

log = logging.getLogger(__name__)
PREFIX = "dbt_platform.saga"


def _emit(kind: str, name: str, value: float, tags: dict[str, str]) -> None:
    try:
        from airflow.sdk.observability import stats

        if kind == "timing":
            stats.timing(name, value, tags=tags)  # milliseconds
        else:
            stats.incr(name, tags=tags)
    except Exception:  # noqa: BLE001 - metrics are best effort
        log.debug("could not emit metric %s", name, exc_info=True)


def step_finished(saga: str, step: str, outcome: str, seconds: float) -> None:
    tags = {"saga": saga, "step": step, "outcome": outcome}
    _emit("incr", f"{PREFIX}.{saga}.step.{step}.{outcome}", 1, tags)
    _emit("timing", f"{PREFIX}.{saga}.step.{step}.duration", seconds * 1000, tags)


def saga_finished(saga: str, state: str, created_at: datetime | None) -> None:
    tags = {"saga": saga, "state": state}
    _emit("incr", f"{PREFIX}.{saga}.{state.lower()}", 1, tags)
    if created_at is not None:
        seconds = (datetime.now(UTC) - created_at).total_seconds()
        _emit("timing", f"{PREFIX}.{saga}.duration", seconds * 1000, tags)
