"""Why a dbt invocation failed, and whether retrying its task can help.

Transformation tasks have retries (the DAG's ``default_args``), and a retry is worth it only when
the next try can succeed. :func:`classify` reads dbt's own result (each node's status and message,
or the error that stopped the invocation) and returns the platform's taxonomy
(:mod:`include.dbt_platform.errors`):

    PermanentError (no retry: the task fails at once and its downstream tasks do not run)
        a test failed (status ``fail``); a compilation or parsing error (``Compilation Error``, a
        ``ref`` to nothing); an error in the SQL itself (syntax, a column, function, operator or
        type that does not exist, division by zero, invalid input, a violated constraint, no
        permission); a source older than its freshness ``error_after``: the data stays old until
        its loader runs, a minute later it is just as old.
    TransientError (retried with backoff, as before)
        dbt could not connect, or lost its connection; a timeout, a lock or serialization
        conflict, a deadlock; the server starting, stopping or out of connections; and a relation
        or schema that does not exist, which on this platform means upstream data is not there
        yet: a loader or another DAG creates it, and the retry finds it (the triggerer mode's
        real-scheduler test depends on it). A killed task process never reaches this module:
        Airflow fails the try and retries it.
        Anything not recognised is transient too: the platform stops retrying only when it knows
        a retry cannot help (PostgreSQL's messages are matched in English, its default; a server
        with translated messages keeps the retries).

:func:`classify_cosmos_failures` makes every Cosmos operator (``InvocationMode.DBT_RUNNER``, the
platform's only invocation mode) raise ``AirflowFailException`` for a permanent failure, which
Airflow does not retry. Imports dbt lazily; nothing of Airflow until a failure is raised.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from include.dbt_platform.errors import PermanentError, SagaError, TransientError

log = logging.getLogger(__name__)

FAILED_STATUSES = {"error", "fail", "runtime error"}

# PostgreSQL and libpq messages (English) for which a later try can succeed.
_TRANSIENT_MESSAGES = re.compile(
    "|".join(
        [
            r"could not connect to server",
            r"connection to server .* failed",
            r"connection refused",
            r"server closed the connection unexpectedly",
            r"terminating connection",
            r"connection already closed",
            r"ssl connection has been closed unexpectedly",
            r"could not (receive|send) data (from|to) server",
            r"timeout expired",
            r"canceling statement due to (statement|lock) timeout",
            r"could not obtain lock",
            r"deadlock detected",
            r"could not serialize access",
            r"the database system is (starting up|shutting down|in recovery mode)",
            r"too many clients already",
            r"remaining connection slots are reserved",
            # Upstream data not there yet: a loader or another DAG creates it.
            r'relation "[^"]+" does not exist',
            r'schema "[^"]+" does not exist',
        ]
    ),
    re.IGNORECASE,
)

# Errors in the project's own code or data: the same SQL on the same data fails the same way.
_PERMANENT_MESSAGES = re.compile(
    "|".join(
        [
            r"^\s*compilation error",
            r"^\s*parsing error",
            r"syntax error",
            r'column "?[^"]+"? does not exist',
            r"(function|operator|type) .* does not exist",
            r"division by zero",
            r"invalid input syntax",
            r"invalid input value",
            r"violates (not-null|unique|check|foreign key|exclusion) constraint",
            r"duplicate key value",
            r"cannot cast",
            r"cannot be cast",
            r"is of type .* but expression is of type",
            r"must appear in the group by clause",
            r"is ambiguous",
            r"out of range",
            r"value too long",
            r"more than one row returned by a subquery",
            r"missing from-clause entry",
            r"permission denied",
        ]
    ),
    re.IGNORECASE | re.MULTILINE,
)


def classify_message(message: str) -> SagaError:
    """A failed node's (or invocation's) message: transient, permanent, or transient when unknown."""
    text = (message or "").strip()
    if _TRANSIENT_MESSAGES.search(text):
        return TransientError(text)
    if _PERMANENT_MESSAGES.search(text):
        return PermanentError(text)
    return TransientError(f"{text or 'dbt failed'} (not recognised: retried)")


def classify(result: Any) -> SagaError:
    """Classify a failed ``dbtRunnerResult``: permanent only when every failure in it is permanent."""
    exception = getattr(result, "exception", None)
    if exception is not None:
        return _classify_exception(exception)
    causes = [_classify_node(r) for r in getattr(getattr(result, "result", None), "results", None) or []]
    causes = [c for c in causes if c is not None]
    if not causes:
        return TransientError("dbt reported a failure without a failed node (not recognised: retried)")
    transient = [c for c in causes if c.retryable]
    if transient:
        return TransientError("; ".join(str(c) for c in transient))
    return PermanentError("; ".join(str(c) for c in causes))


def _classify_exception(exc: BaseException) -> SagaError:
    from dbt.adapters.exceptions import FailedToConnectError
    from dbt_common.exceptions import CompilationError, DbtConfigError, DbtValidationError

    what = f"dbt stopped: {type(exc).__name__}"
    if isinstance(exc, FailedToConnectError):
        return TransientError(f"{what}: {str(exc).strip()}")
    if isinstance(exc, (CompilationError, DbtConfigError, DbtValidationError)):
        return PermanentError(f"{what}: {str(exc).strip()}")
    verdict = classify_message(str(exc))
    return type(verdict)(f"{what}: {verdict}")


def _classify_node(result: Any) -> SagaError | None:
    status = str(getattr(result, "status", ""))
    if status not in FAILED_STATUSES:
        return None
    node = result.node
    what = f"{node.resource_type} {_node_name(node)}"
    if status == "fail":  # a data or unit test returned failing rows
        return PermanentError(f"{what} failed: {result.message or 'failing rows'}")
    if node.resource_type == "source" and status == "error":  # freshness beyond error_after
        return PermanentError(f"{what} is stale: {freshness_summary(result)}")
    verdict = classify_message(result.message or "")
    return type(verdict)(f"{what}: {verdict}")


def _node_name(node: Any) -> str:
    if node.resource_type == "source":
        return f"{node.source_name}.{node.name}"
    return node.name


def freshness_summary(result: Any) -> str:
    """'last loaded 1.3 days ago (<when>), error_after 1 day(s), warn_after 1 hour(s)': from a
    source freshness result and the source's criteria."""
    age = getattr(result, "age", None)
    loaded = getattr(result, "max_loaded_at", None)
    criteria = getattr(getattr(result, "node", None), "freshness", None)
    parts = []
    if age is not None:
        parts.append(f"last loaded {_duration(age)} ago" + (f" ({loaded.isoformat()})" if loaded else ""))
    for level in ("error_after", "warn_after"):
        limit = getattr(criteria, level, None)
        if limit is not None and getattr(limit, "count", None) is not None and limit.period is not None:
            period = getattr(limit.period, "value", limit.period)
            parts.append(f"{level} {limit.count} {period}(s)")
    return ", ".join(parts) or "older than its freshness allows"


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def classify_cosmos_failures() -> bool:
    """Make Cosmos' operators fail without retry when retrying cannot help. Idempotent; True once done.

    Cosmos checks every dbtRunner result with ``cosmos.dbt.runner.handle_exception_if_needed``
    (looked up at call time). Wrapped here: a permanent failure raises ``AirflowFailException``
    (the task fails at once, whatever its retries); a transient one keeps Cosmos' exception.
    """
    from cosmos.dbt import runner

    original = runner.handle_exception_if_needed
    if getattr(original, "_dbt_platform_classified", False):
        return True

    def handle_exception_if_needed(result: Any) -> None:
        try:
            original(result)
        except Exception as exc:
            verdict = classify(result)
            if verdict.retryable:
                log.warning("dbt failed; a retry can help: %s", verdict)
                raise
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"dbt failed and retrying cannot help (no retry): {verdict}") from exc

    handle_exception_if_needed._dbt_platform_classified = True  # type: ignore[attr-defined]
    runner.handle_exception_if_needed = handle_exception_if_needed
    return True
