"""Saga metrics through Airflow's metrics layer (StatsD or OpenTelemetry, as ``[metrics]`` configures).

Names carry the saga, the step and the outcome so plain StatsD (no tags) can tell them apart; the same
facts go along as tags for backends that keep them. Durations are also in the journal
(``saga.step_durations``). A metrics failure never fails a saga.

    dbt_platform.saga.<saga>.started                              counter
    dbt_platform.saga.<saga>.<completed|compensated|failed>       counter
    dbt_platform.saga.<saga>.duration                             timer (ms), start to that end
    dbt_platform.saga.<saga>.active                               gauge: EXECUTING or COMPENSATING now
    dbt_platform.saga.<saga>.step.<step>.<succeeded|retry|failed|timeout>      counter, per attempt
    dbt_platform.saga.<saga>.step.<step>.duration                 timer (ms), per attempt
    dbt_platform.saga.<saga>.compensation.<step>.<compensated|failed>          counter
    dbt_platform.saga.<saga>.compensation.<step>.duration         timer (ms)

``config/statsd_mapping.yml`` turns them into Prometheus metrics with labels (docs/observability.md).
The active gauge is read from the journal (a count, not a running sum), whenever a saga starts or
ends and on every recovery sweep, so a lost datagram or a dead process never leaves it wrong.
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
        elif kind == "gauge":
            stats.gauge(name, value, tags=tags)
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


def saga_started(saga: str) -> None:
    _emit("incr", f"{PREFIX}.{saga}.started", 1, {"saga": saga})


def compensation_finished(saga: str, step: str, outcome: str, seconds: float) -> None:
    tags = {"saga": saga, "step": step, "outcome": outcome}
    _emit("incr", f"{PREFIX}.{saga}.compensation.{step}.{outcome}", 1, tags)
    _emit("timing", f"{PREFIX}.{saga}.compensation.{step}.duration", seconds * 1000, tags)


def active_sagas(saga: str, count: int) -> None:
    _emit("gauge", f"{PREFIX}.{saga}.active", count, {"saga": saga})


def report_active(saga: str, journal) -> None:
    """The gauge of sagas going now, read from ``journal`` (best effort, like every metric)."""
    try:
        active_sagas(saga, journal.active_count(saga))
    except Exception:  # noqa: BLE001 - metrics are best effort
        log.debug("could not count the active sagas of %s", saga, exc_info=True)
