"""Trace and span ids derived from what the platform already names (a saga's id, a DAG run), so
that every process which adds to a trace agrees on them without being told. No OpenTelemetry
import: log lines carry these ids too."""

from __future__ import annotations

import hashlib


def derive_trace_id(kind: str, key: str) -> int:
    """The trace id of ``kind`` (``saga``, ``transformation``) ``key``: the same in every process."""
    return int.from_bytes(hashlib.sha256(f"{kind}:{key}".encode()).digest()[:16], "big") or 1


def derive_span_id(*parts: str) -> int:
    """A span id derived from ``parts`` (a span several processes must agree on, e.g. a saga's step)."""
    return int.from_bytes(hashlib.sha256(":".join(parts).encode()).digest()[:8], "big") or 1


def hex_trace_id(value: int) -> str:
    return f"{value:032x}"


def hex_span_id(value: int) -> str:
    return f"{value:016x}"


def saga_trace_id(saga_id: str) -> int:
    return derive_trace_id("saga", saga_id)
