"""The error taxonomy: each error says whether retrying can help.

    TransientError      retry with backoff (unreachable, timed out, lock or serialization conflict,
                        a mail server's "try again later"); Unavailable names the service down
    PermanentError      compensate at once; its kinds: RequestInvalid (nothing was changed),
                        Conflict (someone else owns it), PermissionDenied
:func:`classify` turns any exception (psycopg2, smtplib, OS errors) into one of them. It imports
nothing of ours.
"""

from __future__ import annotations

import smtplib
import socket


class SagaError(Exception):
    """Base class for errors raised by saga steps and adapters."""

    retryable = False


class TransientError(SagaError):
    """Retrying may help: the service was unreachable, timed out, or a lock/serialization conflict."""

    retryable = True


class Unavailable(TransientError):
    """A service the platform depends on (the warehouse, the git server) cannot be reached."""

    def __init__(self, service: str, message: str) -> None:
        super().__init__(f"{service} unavailable: {message}")
        self.service = service


class PermanentError(SagaError):
    """Retrying cannot help: compensate at once."""


class RequestInvalid(PermanentError):
    """The request is malformed; nothing was changed."""


class Conflict(PermanentError):
    """The resource exists already and belongs to someone else (e.g. the project name is taken)."""


class PermissionDenied(PermanentError):
    """The platform lacks a privilege it needs."""


# SQLSTATE classes/codes for which a retry can succeed.
_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57014",  # query_canceled (statement_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
    "53300",  # too_many_connections
}
_TRANSIENT_SQLSTATE_CLASSES = {"08"}  # connection exceptions
_PERMISSION_SQLSTATES = {"42501"}  # insufficient_privilege
_CONFLICT_SQLSTATES = {"42P04", "42710", "23505", "42P06"}  # duplicate db/object/key/schema


def classify(exc: BaseException) -> SagaError:
    """Turn any exception into a TransientError or a PermanentError (keeping the message)."""
    if isinstance(exc, SagaError):
        return exc
    import psycopg2

    if isinstance(exc, psycopg2.Error):
        code = getattr(exc, "pgcode", None)
        message = (str(exc) or type(exc).__name__).strip()
        if code is None and isinstance(exc, psycopg2.OperationalError):
            return TransientError(f"database unreachable: {message}")
        if code in _TRANSIENT_SQLSTATES or (code or "")[:2] in _TRANSIENT_SQLSTATE_CLASSES:
            return TransientError(f"{message} (SQLSTATE {code})")
        if code in _PERMISSION_SQLSTATES:
            return PermissionDenied(f"{message} (SQLSTATE {code})")
        if code in _CONFLICT_SQLSTATES:
            return Conflict(f"{message} (SQLSTATE {code})")
        return PermanentError(f"{message} (SQLSTATE {code})")
    if isinstance(exc, smtplib.SMTPException):
        return _classify_smtp(exc)
    if isinstance(exc, (TimeoutError, ConnectionError, socket.timeout, socket.gaierror)):
        return TransientError(f"{type(exc).__name__}: {exc}")
    return PermanentError(f"{type(exc).__name__}: {exc}")


def _classify_smtp(exc: smtplib.SMTPException) -> SagaError:
    """A mail server's 4xx (and a dropped connection) says "try again later"; only 5xx is final."""
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientError(message)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        return (
            TransientError(message)
            if codes and all(400 <= c < 500 for c in codes)
            else PermanentError(message)
        )
    code = getattr(exc, "smtp_code", None)
    if isinstance(code, int) and 400 <= code < 500:
        return TransientError(message)
    return PermanentError(message)
