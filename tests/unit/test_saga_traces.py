"""One OpenTelemetry trace per saga, written to the trace file by the engine (in-memory journal):
a span per step, per attempt and per compensation, under one root, with the saga's id, project and
error classes; a re-drive adds its own span and leaves the root alone."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from include.dbt_platform.errors import PermanentError, TransientError
from include.dbt_platform.observability.ids import hex_span_id, hex_trace_id, saga_trace_id
from include.dbt_platform.observability.tracing import read_spans
from include.dbt_platform.saga import journal as j
from include.dbt_platform.saga.engine import compensate_saga, run_step
from include.dbt_platform.saga.tracing import root_span_id, step_span_id
from tests.unit.test_saga_engine import DAG_ID, context, saga  # noqa: F401 - the fixture


@pytest.fixture
def trace_file(tmp_path, monkeypatch):
    path = tmp_path / "spans.jsonl"
    monkeypatch.setenv("DBT_PLATFORM_TRACE_FILE", str(path))
    return path


def spans_of(trace_file, saga_id: str) -> list[dict]:
    spans = [s for s in read_spans(trace_file) if s["attributes"].get("saga.id") == saga_id]
    return sorted(spans, key=lambda s: int(s["endTimeUnixNano"]))


def by_name(spans: list[dict]) -> dict[str, dict]:
    named = {s["name"]: s for s in spans}
    assert len(named) == len(spans), f"a span written twice: {[s['name'] for s in spans]}"
    return named


def test_a_compensated_saga_is_one_trace_of_its_steps_attempts_and_compensations(saga, trace_file):  # noqa: F811
    saga.rec.fail["first"] = TransientError("blip")
    saga.rec.fail["second"] = PermanentError("rejected")
    run_step(saga.definition, saga.definition.step("check"), context("t1", who="ana", project_name="sales"))
    with pytest.raises(AirflowException, match="will retry"):
        run_step(saga.definition, saga.definition.step("first"), context("t1", 1))
    del saga.rec.fail["first"]
    run_step(saga.definition, saga.definition.step("first"), context("t1", 2))
    with pytest.raises(AirflowFailException):
        run_step(saga.definition, saga.definition.step("second"), context("t1"))
    saga_id = j.saga_id_for(DAG_ID, "t1")
    assert compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test") == []

    spans = spans_of(trace_file, saga_id)
    assert {s["traceId"] for s in spans} == {hex_trace_id(saga_trace_id(saga_id))}, "one trace"
    named = by_name(spans)
    assert list(named) == [
        "check attempt 1", "step check", "first attempt 1", "first attempt 2", "step first",
        "second attempt 1", "step second", "compensate second", "compensate first", "saga unit",
    ]  # fmt: skip
    root = named["saga unit"]
    assert "parentSpanId" not in root and root["spanId"] == hex_span_id(root_span_id(saga_id))
    assert root["attributes"]["saga.state"] == j.COMPENSATED
    assert root["attributes"]["dbt_platform.project"] == "sales"
    assert root["attributes"]["error.type"] == "PermanentError" and root["status"]["code"] == 2
    for step in ("check", "first", "second"):
        assert named[f"step {step}"]["parentSpanId"] == root["spanId"]
        assert named[f"step {step}"]["spanId"] == hex_span_id(step_span_id(saga_id, step))
    for attempt in ("first attempt 1", "first attempt 2"):
        assert named[attempt]["parentSpanId"] == named["step first"]["spanId"]
        assert named[attempt]["attributes"]["airflow.run_id"] == "t1"
    assert named["first attempt 1"]["attributes"]["error.type"] == "TransientError"
    assert named["first attempt 1"]["attributes"]["saga.outcome"] == "retry"
    assert "error.type" not in named["first attempt 2"]["attributes"]
    assert named["step first"]["attributes"]["saga.attempts"] == "2"
    assert named["second attempt 1"]["attributes"]["error.type"] == "PermanentError"
    assert named["step second"]["status"] == {"code": 2, "message": "PermanentError: rejected"}
    for step in ("second", "first"):
        assert named[f"compensate {step}"]["parentSpanId"] == root["spanId"]
        assert named[f"compensate {step}"]["attributes"]["saga.outcome"] == "compensated"
    start, end = int(root["startTimeUnixNano"]), int(root["endTimeUnixNano"])
    assert all(start <= int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"]) <= end for s in spans)


def test_a_re_drive_adds_its_span_under_the_root_and_never_a_second_root(saga, trace_file):  # noqa: F811
    saga.rec.fail["second"] = PermanentError("rejected")
    saga.rec.fail["undo first"] = PermanentError("cannot drop")
    ctx = context("t2")
    for name in ("check", "first"):
        run_step(saga.definition, saga.definition.step(name), ctx)
    with pytest.raises(AirflowFailException):
        run_step(saga.definition, saga.definition.step("second"), ctx)
    saga_id = j.saga_id_for(DAG_ID, "t2")
    assert compensate_saga(saga.definition, saga_id, final_attempt=True, reason="test")
    assert saga.journal.get(saga_id).state == j.FAILED
    del saga.rec.fail["undo first"]
    assert compensate_saga(saga.definition, saga_id, final_attempt=True, reason="re-drive") == []

    spans = spans_of(trace_file, saga_id)
    roots = [s for s in spans if s["name"] == "saga unit"]
    assert len(roots) == 1 and roots[0]["attributes"]["saga.state"] == j.FAILED
    (redrive,) = [s for s in spans if s["name"] == "re-drive"]
    assert redrive["parentSpanId"] == roots[0]["spanId"]
    assert redrive["attributes"]["saga.state"] == j.COMPENSATED
    compensations = [s for s in spans if s["name"] == "compensate first"]
    assert [c["attributes"]["saga.outcome"] for c in compensations] == ["compensation_failed", "compensated"]
    assert compensations[0]["parentSpanId"] == roots[0]["spanId"]
    assert compensations[1]["parentSpanId"] == redrive["spanId"], "the re-drive's work is under it"


def test_log_lines_carry_the_saga_and_its_trace(caplog):
    from include.dbt_platform.saga.definition import saga_logger

    with caplog.at_level("INFO"):
        saga_logger("abc").info("hello")
    assert caplog.messages == [f"[saga=abc trace={hex_trace_id(saga_trace_id('abc'))}] hello"]
