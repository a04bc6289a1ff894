"""A circuit breaker around the services sagas depend on (the warehouse server, the git server).

Its state is a row per service in the platform database (``platform.circuit_breakers``), so every
task process, worker and scheduler sees the same breaker. Every attempt that finds the service
unreachable is a failure; ``failures`` of them within ``window`` open the breaker. While it is open,
a new saga is refused at validation, at once and with the reason, having made nothing, except that one
validation every ``probe`` seconds is let through as a probe: if it reaches the service the breaker
closes, if not it stays open. Opening and closing are logged and counted as metrics
(``dbt_platform.breaker.<service>.opened|closed``, gauge ``...open``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from include.dbt_platform.adapters.postgres import Postgres, platform_dsn
from include.dbt_platform.config import get_settings
from include.dbt_platform.errors import PermanentError

log = logging.getLogger(__name__)

SERVICES = ("warehouse", "git")

BREAKER_SQL = """
create table if not exists platform.circuit_breakers (
    service text primary key,
    failures int not null default 0,
    first_failure_at timestamptz,
    opened_at timestamptz,
    probe_at timestamptz
);
"""


class CircuitOpen(PermanentError):
    """The service has been failing: new sagas are refused until a probe reaches it."""


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int
    window_seconds: float
    probe_seconds: float


def _metric(name: str, value: float | None = None) -> None:
    try:
        from airflow.sdk.observability import stats

        if value is None:
            stats.incr(name)
        else:
            stats.gauge(name, value)
    except Exception:  # noqa: BLE001 - metrics are best effort
        log.debug("could not emit metric %s", name, exc_info=True)


class CircuitBreaker(Postgres):
    """The breakers, through the platform database's connection."""

    service = "platform database"

    def __init__(self, dsn: str, policy: BreakerPolicy) -> None:
        super().__init__(dsn)
        self.policy = policy

    def _ensure(self, cur) -> None:
        cur.execute("select to_regclass('platform.circuit_breakers') is not null")
        if not cur.fetchone()[0]:
            cur.execute("select pg_advisory_xact_lock(hashtext('platform-registry-schema'))")
            cur.execute("create schema if not exists platform")
            cur.execute(BREAKER_SQL)

    def failed(self, service: str, reason: str) -> None:
        """One attempt found ``service`` unreachable."""
        with self.transaction() as cur:
            self._ensure(cur)
            cur.execute(
                "insert into platform.circuit_breakers (service, failures, first_failure_at) "
                "values (%s, 1, clock_timestamp()) on conflict (service) do update set "
                "failures = case when circuit_breakers.first_failure_at is null or circuit_breakers.first_failure_at "
                "< clock_timestamp() - make_interval(secs => %s) then 1 else circuit_breakers.failures + 1 end, "
                "first_failure_at = case when circuit_breakers.first_failure_at is null or "
                "circuit_breakers.first_failure_at < clock_timestamp() - make_interval(secs => %s) "
                "then clock_timestamp() else circuit_breakers.first_failure_at end "
                "returning failures, opened_at",
                (service, self.policy.window_seconds, self.policy.window_seconds),
            )
            failures, opened_at = cur.fetchone()
            if opened_at is None and failures >= self.policy.failures:
                cur.execute(
                    "update platform.circuit_breakers set opened_at = clock_timestamp(), probe_at = clock_timestamp() "
                    "where service = %s",
                    (service,),
                )
                log.warning(
                    "circuit breaker for %s OPEN: %s failures within %.0fs (last: %s); new sagas are refused "
                    "until a probe reaches it",
                    service, failures, self.policy.window_seconds, reason,
                )  # fmt: skip
                _metric(f"dbt_platform.breaker.{service}.opened")
                _metric(f"dbt_platform.breaker.{service}.open", 1)

    def succeeded(self, service: str) -> None:
        """An attempt reached ``service``: the failures are forgotten, an open breaker closes."""
        with self.transaction() as cur:
            self._ensure(cur)
            cur.execute(
                "select opened_at is not null from platform.circuit_breakers where service = %s "
                "and (failures > 0 or opened_at is not null) for update",
                (service,),
            )
            row = cur.fetchone()
            if row is None:
                return  # nothing to forget (the common case: one read, no write)
            cur.execute(
                "update platform.circuit_breakers set failures = 0, first_failure_at = null, opened_at = null, "
                "probe_at = null where service = %s",
                (service,),
            )
        if row[0]:
            log.warning("circuit breaker for %s CLOSED: a probe reached it", service)
            _metric(f"dbt_platform.breaker.{service}.closed")
            _metric(f"dbt_platform.breaker.{service}.open", 0)

    def admit(self, service: str) -> bool:
        """Before a saga uses ``service``: returns True if this attempt is the open breaker's probe,
        False if the breaker is closed; raises CircuitOpen (no retry helps now) otherwise."""
        with self.transaction() as cur:
            self._ensure(cur)
            cur.execute(
                "select opened_at, failures from platform.circuit_breakers where service = %s for update",
                (service,),
            )
            row = cur.fetchone()
            if row is None or row[0] is None:
                return False
            opened_at, failures = row
            cur.execute(
                "update platform.circuit_breakers set probe_at = clock_timestamp() where service = %s "
                "and (probe_at is null or probe_at < clock_timestamp() - make_interval(secs => %s)) returning 1",
                (service, self.policy.probe_seconds),
            )
            if cur.fetchone():
                log.info("circuit breaker for %s is open: this saga's validation is the probe", service)
                return True
        raise CircuitOpen(
            f"the {service} has been unreachable ({failures} failed attempts; refusing new sagas since "
            f"{_when(opened_at)}); nothing was created. Try again later: a request is let through every "
            f"{self.policy.probe_seconds:.0f}s to see whether it is back."
        )

    def state(self, service: str) -> dict:
        with self.cursor() as cur:
            cur.execute("select to_regclass('platform.circuit_breakers') is not null")
            if not cur.fetchone()[0]:
                return {"service": service, "open": False, "failures": 0}
            cur.execute(
                "select failures, opened_at from platform.circuit_breakers where service = %s", (service,)
            )
            row = cur.fetchone()
        return {"service": service, "open": bool(row and row[1]), "failures": row[0] if row else 0}


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def breaker() -> CircuitBreaker:
    """The breaker with the settings' policy, on the platform database."""
    settings = get_settings()
    policy = BreakerPolicy(
        settings.breaker_failures, settings.breaker_window_seconds, settings.breaker_probe_seconds
    )
    return CircuitBreaker(platform_dsn(), policy)


def record_unavailable(service: str, reason: str) -> None:
    """A step of any saga found ``service`` unreachable: the circuit breaker counts it."""
    if service in SERVICES:
        breaker().failed(service, reason)


@contextmanager
def guarded() -> Iterator[None]:
    """Around a saga's validation, before it makes anything: refused at once (CircuitOpen) while a
    service's breaker is open (unless this saga is its probe); once validation has reached the
    services, their failures are forgotten (and a probed breaker closes)."""
    guard = breaker()
    try:
        for service in SERVICES:
            guard.admit(service)
        yield
        for service in SERVICES:
            guard.succeeded(service)
    finally:
        guard.close()
