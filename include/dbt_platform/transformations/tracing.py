"""One OpenTelemetry trace per transformation run (a DAG run of a dbt project's DAG).

    dbt <project>                    root: the DAG run, start to end (the DAG's success/failure callback)
    └── dbt <command>                each dbt invocation of a task: the build (triggerer mode), a
        │                            model's ``dbt build --select`` (LOCAL), a freshness check
        └── <resource type> <node>   each node dbt ran, with the times dbt reports, its status and rows

The invocation span is recorded around Cosmos' one call into dbt (``cosmos.dbt.runner.run_command``,
hooked like the secrets guard of :mod:`.dbt`), so it covers every execution mode; the node spans come
from dbt's own results. Ids derive from the DAG run (:mod:`include.dbt_platform.observability.ids`),
so the tasks' processes and the callback write one trace; the task log names it
(``dbt build: trace <id>``). Spans go where the platform's go (:mod:`.observability.tracing`).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from include.dbt_platform.observability import tracing
from include.dbt_platform.observability.ids import derive_span_id, derive_trace_id, hex_trace_id

log = logging.getLogger(__name__)
DBT_COMMANDS = {
    "build",
    "run",
    "test",
    "seed",
    "snapshot",
    "source",
    "compile",
    "ls",
    "list",
    "deps",
    "parse",
}
FAILED_NODE_STATUSES = {"error", "fail", "runtime error"}


def run_ids(dag_id: str, run_id: str) -> tuple[int, int]:
    """The trace id and the root span id of a transformation run."""
    return derive_trace_id("transformation", f"{dag_id}/{run_id}"), derive_span_id(
        "transformation", dag_id, run_id
    )


def subcommand(command: list[str]) -> str:
    words = [w for w in command[1:] if not w.startswith("-")]
    first = next((i for i, w in enumerate(words) if w in DBT_COMMANDS), None)
    if first is None:
        return "dbt"
    return " ".join(words[first : first + (2 if words[first] == "source" else 1)])


def trace_cosmos_runs() -> bool:
    """Record every dbt invocation of Cosmos' operators as a span (idempotent; True once done)."""
    from cosmos.dbt import runner

    original = runner.run_command
    if getattr(original, "_dbt_platform_traced", False):
        return True

    def run_command(command, env, cwd, callbacks=None, **kwargs):
        started, result, error = time.time(), None, None
        try:
            result = original(command, env, cwd, callbacks, **kwargs)
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            record_invocation(command, started, time.time(), result, error)

    run_command._dbt_platform_traced = True  # type: ignore[attr-defined]
    for attribute in ("_dbt_platform_guard",):  # keep what other wrappers mark
        if getattr(original, attribute, False):
            setattr(run_command, attribute, True)
    runner.run_command = run_command
    return True


def _task() -> Any:
    try:
        from airflow.sdk import get_current_context

        return get_current_context()["ti"]
    except Exception:  # noqa: BLE001 - not inside a task: nothing to attach the span to
        return None


def record_invocation(command: list[str], start: float, end: float, result: Any, error: Any) -> None:
    ti = _task()
    if ti is None:
        return
    trace_id, root = run_ids(ti.dag_id, ti.run_id)
    name = subcommand(command)
    span_id = tracing_span_id()
    failed = error or (result is not None and not getattr(result, "success", True))
    tracing.record_span(
        f"dbt {name}",
        trace_id=trace_id,
        span_id=span_id,
        parent_id=root,
        start=start,
        end=end,
        attributes={
            "dbt.command": name,
            "dbt_platform.project": ti.dag_id,
            "airflow.dag_id": ti.dag_id,
            "airflow.run_id": ti.run_id,
            "airflow.task_id": ti.task_id,
            "airflow.try_number": ti.try_number,
        },
        error=(error if isinstance(error, Exception) else ("DbtFailed", "dbt reported a failure"))
        if failed
        else None,
        links=[tracing.current_airflow_span()],
    )
    for node in _node_results(result):
        record_node(node, trace_id, span_id, ti.dag_id)
    log.info("dbt %s: trace %s", name, hex_trace_id(trace_id))


def tracing_span_id() -> int:
    """An invocation's span id: random (a task's retries are separate invocations)."""
    return random.getrandbits(64) or 1


def _node_results(result: Any) -> list:
    return list(getattr(getattr(result, "result", None), "results", None) or [])


def record_node(node_result: Any, trace_id: int, parent: int, project: str) -> None:
    node = getattr(node_result, "node", None)
    timings = [t for t in getattr(node_result, "timing", None) or [] if t.started_at and t.completed_at]
    if node is None or not timings:
        return
    status = str(getattr(node_result, "status", ""))
    kind = str(getattr(node.resource_type, "value", node.resource_type))
    response = getattr(node_result, "adapter_response", None) or {}
    tracing.record_span(
        f"{kind} {node.name}",
        trace_id=trace_id,
        parent_id=parent,
        start=min(t.started_at for t in timings),
        end=max(t.completed_at for t in timings),
        attributes={
            "dbt.node.unique_id": node.unique_id,
            "dbt.node.resource_type": kind,
            "dbt.node.status": status,
            "dbt.node.rows_affected": response.get("rows_affected") if isinstance(response, dict) else None,
            "dbt_platform.project": project,
        },
        error=("DbtNodeFailed", str(getattr(node_result, "message", status)))
        if status in FAILED_NODE_STATUSES
        else None,
    )


def run_succeeded(context: dict) -> None:
    """The DAG's success callback: the run's root span."""
    run_ended(context, failed=False)


def run_failed(context: dict) -> None:
    """The DAG's failure callback: the run's root span, with an error."""
    run_ended(context, failed=True)


def run_ended(context: dict, *, failed: bool) -> None:
    """The run's root span, from its start to its end (or now). The dag-processor runs DAG callbacks
    with the run in the context when the run had a task; with only the DAG and the run id otherwise."""
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    dag_id = getattr(dag_run, "dag_id", None) or getattr(dag, "dag_id", None)
    run_id = getattr(dag_run, "run_id", None) or context.get("run_id")
    if not dag_id or not run_id:
        return
    trace_id, root = run_ids(dag_id, run_id)
    start = getattr(dag_run, "start_date", None) or getattr(dag_run, "queued_at", None)
    end = getattr(dag_run, "end_date", None)
    state = "failed" if failed else "success"
    tracing.record_span(
        f"dbt {dag_id}",
        trace_id=trace_id,
        span_id=root,
        start=start.timestamp() if start else time.time(),
        end=end.timestamp() if end else time.time(),
        attributes={
            "dbt_platform.project": dag_id,
            "airflow.dag_id": dag_id,
            "airflow.run_id": run_id,
            "airflow.dag_run.state": state,
        },
        error=("TransformationFailed", f"run {run_id} failed: {context.get('reason') or ''}".strip(": "))
        if failed
        else None,
    )
    tracing.flush()
