"""The platform's OpenTelemetry spans: where they go, and how many processes write one trace.

Where: to a file by default (``DBT_PLATFORM_TRACE_FILE``, ``<state>/traces/spans.jsonl``; ``off``
for none), one OTLP/JSON ``ExportTraceServiceRequest`` per line, the format of the OpenTelemetry
Collector's file exporter (its ``otlpjsonfile`` receiver reads it back); and over OTLP when Airflow's
own tracing is on (``[traces] otel_on``), to the endpoint Airflow exports to: the standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, else Airflow's
``[traces] otel_host``, ``otel_port`` and ``otel_ssl_active``; ``OTEL_TRACES_EXPORTER`` picks the
exporter (``otlp_proto_http`` unless set), ``OTEL_SERVICE_NAME`` the service (``dbt-platform``).

The provider is the platform's own, not Airflow's global one: the file holds the platform's spans
only, and turning Airflow's tracing on or off never changes them. A span is written to the file
when it ends, synchronously (one ``write`` of one line, appended: many processes share the file
and a task process that exits loses nothing); OTLP exports go out in the background and are
flushed when the platform's task code ends (:func:`flush`).

How: a saga's steps are tasks in different processes, and its compensations may run in the DAG's
failure callback, the recovery DAG or a re-drive. Its trace id and the ids of its long-lived spans
are derived from the saga's id (:func:`derive_trace_id`, :func:`derive_span_id`), so each process adds its spans
to the same trace, under the right parent, without passing anything along; a span is recorded with
the times it really had (:func:`record_span`). The same holds for a transformation run, keyed by
its DAG run.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from include.dbt_platform.config import get_settings
from include.dbt_platform.observability.ids import (  # noqa: F401 - part of this module's API
    derive_span_id,
    derive_trace_id,
    hex_span_id,
    hex_trace_id,
)

log = logging.getLogger(__name__)
SERVICE_NAME = "dbt-platform"
_FORCED: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "dbt_platform_forced_ids", default=(None, None)
)
_providers: dict[tuple, TracerProvider | None] = {}


class _Ids(IdGenerator):
    """Random ids, unless :func:`record_span` asks for given ones."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return _FORCED.get()[1] or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return _FORCED.get()[0] or self._random.generate_trace_id()


class TraceFileExporter(SpanExporter):
    """Appends each export as one line of OTLP/JSON (ids in hex, enums as numbers, per the spec)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        request = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
        line = (json.dumps(_hex_ids(request), separators=(",", ":")) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            log.warning("could not write spans to %s", self.path, exc_info=True)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


def _hex_ids(value):
    if isinstance(value, dict):
        return {
            k: base64.b64decode(v).hex() if k in ("traceId", "spanId", "parentSpanId") else _hex_ids(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hex_ids(v) for v in value]
    return value


def _airflow_tracing_on() -> bool:
    try:
        from airflow.configuration import conf

        return conf.getboolean("traces", "otel_on", fallback=False)
    except Exception:  # noqa: BLE001 - no Airflow configuration here: no OTLP
        return False


def _otlp_exporter() -> SpanExporter:
    """The exporter Airflow's tracing would use, to the same endpoint."""
    from importlib.metadata import entry_points

    from airflow.configuration import conf

    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp_proto_http")
    kwargs = {}
    if not (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    ):
        host, port = (
            conf.get("traces", "otel_host", fallback=None),
            conf.get("traces", "otel_port", fallback=None),
        )
        scheme = "https" if conf.getboolean("traces", "otel_ssl_active", fallback=False) else "http"
        kwargs["endpoint"] = f"{scheme}://{host}:{port}" + ("/v1/traces" if "http" in name else "")
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name=name) or [None]
    if entry is None:
        raise ValueError(f"OTEL_TRACES_EXPORTER={name!r}: no such span exporter is installed")
    return entry.load()(**kwargs)


def provider() -> TracerProvider | None:
    """This process's provider for the current settings (None: spans go nowhere)."""
    trace_file = get_settings().trace_file
    otlp = _airflow_tracing_on()
    key = (trace_file, otlp, os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), os.getpid())
    if key not in _providers:
        made = None
        if trace_file or otlp:
            resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
            made = TracerProvider(resource=resource, id_generator=_Ids())
            if trace_file:
                made.add_span_processor(SimpleSpanProcessor(TraceFileExporter(trace_file)))
            if otlp:
                try:
                    made.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
                except Exception:  # noqa: BLE001 - tracing never stops the platform's work
                    log.warning("OTLP span export is not set up", exc_info=True)
        _providers[key] = made
    return _providers[key]


def record_span(
    name: str,
    *,
    trace_id: int,
    start: datetime | float,
    end: datetime | float,
    span_id: int | None = None,
    parent_id: int | None = None,
    attributes: dict | None = None,
    error: BaseException | tuple[str, str] | None = None,
    links: Sequence[SpanContext] = (),
) -> None:
    """A finished span, with the times it had (datetimes, or seconds since the epoch). ``span_id``
    and ``parent_id`` fix its id and its parent's (derived ids: :func:`derive_span_id`). ``error`` (an exception or
    ``(class name, message)``) sets ``error.type`` and an ERROR status. Never raises."""
    try:
        made = provider()
        if made is None:
            return
        context = Context() if parent_id is None else _under(trace_id, parent_id)
        token = _FORCED.set((trace_id, span_id))
        try:
            started = made.get_tracer("include.dbt_platform").start_span(
                name,
                context=context,
                kind=SpanKind.INTERNAL,
                attributes={k: v for k, v in (attributes or {}).items() if v is not None},
                links=[Link(c) for c in links if c.is_valid],
                start_time=_ns(start),
            )
        finally:
            _FORCED.reset(token)
        if error is not None:
            kind, message = (type(error).__name__, str(error)) if isinstance(error, BaseException) else error
            started.set_attribute("error.type", kind)
            started.set_status(Status(StatusCode.ERROR, f"{kind}: {message}"[:1000]))
        started.end(end_time=max(_ns(end), _ns(start)))
    except Exception:  # noqa: BLE001 - tracing never stops the platform's work
        log.warning("could not record the span %s", name, exc_info=True)


def _under(trace_id: int, parent_id: int) -> Context:
    parent = SpanContext(trace_id, parent_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def current_airflow_span() -> SpanContext:
    """The span Airflow's own tracing has current here (invalid when its tracing is off): linked from
    the platform's spans so a backend can go from one trace to the other."""
    return trace.get_current_span().get_span_context()


def flush(timeout_millis: int = 10_000) -> None:
    made = _providers.get(next((k for k in _providers if k[-1] == os.getpid()), None))
    if made is not None:
        made.force_flush(timeout_millis)


def _ns(moment: datetime | float) -> int:
    seconds = moment.timestamp() if isinstance(moment, datetime) else float(moment)
    return int(seconds * 1e9)


def read_spans(path: Path) -> list[dict]:
    """Every span in a trace file, flattened: ids in hex, attributes as a dict, ``service`` and
    ``status`` (``{"code": 2, "message": ...}`` for an error)."""
    spans = []
    if not path.exists():
        return spans
    for line in path.read_text().splitlines():
        for resource_spans in json.loads(line).get("resourceSpans", []):
            resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    spans.append(
                        {
                            **span,
                            "attributes": _attributes(span.get("attributes", [])),
                            "service": resource.get("service.name"),
                            "status": span.get("status", {}),
                        }
                    )
    return spans


def _attributes(items: list[dict]) -> dict:
    out = {}
    for item in items:
        value = item.get("value", {})
        out[item["key"]] = next(iter(value.values()), None) if value else None
    return out
