"""Every Cosmos and Airflow internal the platform relies on, pinned by name and shape.

The triggerer mode subclasses Cosmos' private watcher classes and calls private helpers; the
no-retry classification wraps one Cosmos function; the triggerer patch replaces two methods of
Airflow's triggerer supervisor (pinned in ``tests/integration/test_triggerer_patch.py``, which checks
the methods' source). Public APIs change with a deprecation; these do not, so an upgrade of Cosmos
or Airflow must fail here, in CI, naming what to re-check, not in production.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import threading

import airflow  # noqa: F401 - Cosmos imports in an order that needs Airflow loaded first
import pytest

# (module, attribute, parameters it must take) — None: only that it exists with that name.
FUNCTIONS = [
    # transformations/failures.py wraps it to classify results (no retry when it cannot help).
    ("cosmos.dbt.runner", "handle_exception_if_needed", ["result"]),
    # transformations/dbt.py (secrets guard) and transformations/tracing.py (a span per dbt
    # invocation) wrap the one call every Cosmos operator makes into dbt.
    ("cosmos.dbt.runner", "run_command", ["command", "env", "cwd", "callbacks", "kwargs"]),
    # watcher/consumer.py builds the consumer's extra_context as Cosmos' own converter does.
    ("cosmos.airflow.graph", "_get_dbt_dag_task_group_identifier", ["dag", "task_group"]),
    # cosmos_config.py: which sources get a freshness check.
    ("cosmos.dbt.graph", "is_freshness_effective", ["freshness"]),
    # watcher/trigger.py reads the keys the producer writes.
    ("cosmos.operators._watcher.state", "get_status_xcom_key", ["unique_id"]),
    ("cosmos.operators._watcher.state", "get_dbt_event_xcom_key", None),
    ("cosmos.operators._watcher.state", "is_dbt_node_status_failed", None),
    ("cosmos.operators._watcher.state", "is_dbt_node_status_skipped", None),
    ("cosmos.operators._watcher.state", "is_dbt_node_status_success", None),
    # watcher/producer.py hands Cosmos' parser only the events it reads (read_by_cosmos).
    ("cosmos.operators._watcher.state", "is_dbt_node_status_terminal", ["status"]),
    ("cosmos.operators._watcher.base", "store_dbt_resource_status_from_log", None),
    ("cosmos.operators._watcher.aggregation", "get_tests_status_xcom_key", ["model_uid"]),
]

# (module, class, method, parameters) for what watcher/producer.py and watcher/trigger.py override.
METHODS = [
    ("cosmos.operators.watcher", "DbtProducerWatcherOperator", "run_dbt_runner",
     ["self", "command", "env", "cwd", "kwargs"]),
    ("cosmos.operators.watcher", "DbtProducerWatcherOperator", "_push_source_freshness_results",
     ["self", "context"]),
    ("cosmos.operators.watcher", "DbtProducerWatcherOperator", "_push_node_state_xcom",
     ["self", "ti", "unique_id", "state"]),
    ("cosmos.operators._watcher.triggerer", "WatcherTrigger", "__init__",
     ["self", "model_unique_id", "producer_task_id", "dag_id", "run_id", "map_index", "poke_interval",
      "is_test_sensor", "use_event"]),
    ("cosmos.operators._watcher.triggerer", "WatcherTrigger", "get_xcom_val", ["self", "key"]),
]  # fmt: skip

# Enum-like members the trigger compares with or emits.
MEMBERS = [
    ("cosmos.operators._watcher.triggerer", "WatcherEventReason", {"NODE_FAILED", "PRODUCER_SKIPPED"}),
    ("cosmos.operators._watcher.state", "ProducerTaskState", {"SUCCESS", "FAILED", "SKIPPED"}),
    ("cosmos.operators._watcher.state", "DbtTestStatus", {"FAIL"}),
    ("cosmos.operators._watcher.state", "DbtNodeStatus", {"FAILED"}),
    ("cosmos.listeners.dag_run_listener", "EventStatus", {"FAILED", "SUCCESS"}),
]


def _get(module: str, name: str):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{module}.{name} is gone: re-check the code that uses it"
    return getattr(mod, name)


@pytest.mark.parametrize(("module", "name", "params"), FUNCTIONS, ids=[f"{m}.{n}" for m, n, _ in FUNCTIONS])
def test_a_cosmos_function_we_call_keeps_its_name_and_parameters(module, name, params):
    fn = _get(module, name)
    assert callable(fn)
    if params is not None:
        assert list(inspect.signature(fn).parameters) == params, f"{module}.{name} changed its signature"


@pytest.mark.parametrize(
    ("module", "cls", "method", "params"), METHODS, ids=[f"{c}.{m}" for _, c, m, _ in METHODS]
)
def test_a_cosmos_method_we_override_keeps_its_name_and_parameters(module, cls, method, params):
    klass = _get(module, cls)
    assert method in vars(klass) or hasattr(klass, method), f"{cls}.{method} is gone"
    assert list(inspect.signature(getattr(klass, method)).parameters) == params, f"{cls}.{method} changed"


@pytest.mark.parametrize(("module", "name", "members"), MEMBERS, ids=[n for _, n, _ in MEMBERS])
def test_the_states_the_trigger_compares_with_still_exist(module, name, members):
    kind = _get(module, name)
    have = set(getattr(kind, "__members__", None) or {k for k in vars(kind) if not k.startswith("_")})
    assert members <= have, f"{module}.{name} lost {members - have}"


def test_the_trigger_and_the_producer_still_fit_cosmos_watcher_classes():
    from cosmos.operators._watcher.base import BaseConsumerSensor
    from cosmos.operators._watcher.state import PRODUCER_FINAL_STATES, xcom_set_lock
    from cosmos.operators._watcher.triggerer import WatcherTrigger
    from cosmos.operators.watcher import DbtConsumerWatcherSensor

    # The trigger's run() replaces Cosmos' async generator; the producer's recorder holds Cosmos' lock.
    assert inspect.isasyncgenfunction(WatcherTrigger.run)
    assert inspect.iscoroutinefunction(WatcherTrigger.get_xcom_val)
    assert isinstance(xcom_set_lock, type(threading.Lock()))
    assert PRODUCER_FINAL_STATES
    # The consumers the triggerer mode finds are Cosmos' sensors with a model id.
    assert issubclass(DbtConsumerWatcherSensor, BaseConsumerSensor)
    assert "self.model_unique_id =" in inspect.getsource(BaseConsumerSensor.__init__)


def test_what_the_producer_reads_to_choose_cosmos_events_is_still_there():
    """watcher/producer.py: ``read_by_cosmos`` names the events Cosmos' parser acts on from these, and
    finds Cosmos' callback in the list Cosmos hands dbt (tests/integration/test_producer_events.py
    checks on a real build that the parser records the same from them as from every event)."""
    from cosmos.operators._watcher import base
    from cosmos.operators._watcher.state import DBT_UPSTREAM_FAILURE_SKIP_EVENT_NAMES
    from cosmos.operators.local import AbstractDbtLocalBase
    from cosmos.operators.watcher import DbtProducerWatcherOperator

    assert {"NodeFinished", "RunResultError"} <= base._DBT_EVENT_ALLOWLIST
    assert DBT_UPSTREAM_FAILURE_SKIP_EVENT_NAMES
    assert base.logger.name.startswith("cosmos")
    source = inspect.getsource(DbtProducerWatcherOperator.run_dbt_runner)
    assert "def _event_callback(event" in source
    assert "self._dbt_runner_callbacks = [*(self._dbt_runner_callbacks or []), _event_callback]" in source
    assert "callbacks=self._dbt_runner_callbacks" in inspect.getsource(AbstractDbtLocalBase.run_dbt_runner)


def test_render_config_still_takes_node_converters():
    from cosmos.config import RenderConfig

    assert "node_converters" in inspect.signature(RenderConfig).parameters


def _flag_source_seen_from_here() -> str:
    from dbt_common.behavior_flags import Behavior

    behavior = Behavior([{"name": "pinned_flag", "default": False, "docs_url": "https://example.org"}], {})
    return behavior.pinned_flag._behavior_change_event.flag_source


def test_behavior_flags_still_name_their_source_the_way_our_cheap_version_does():
    # transformations/dbt.py replaces dbt-common's costly ``_default_source`` (inspect.stack()).
    from dbt_common.behavior_flags import BehaviorFlagRendered

    from include.dbt_platform.transformations import dbt

    assert isinstance(inspect.getattr_static(BehaviorFlagRendered, "_default_source"), staticmethod)
    assert "self._default_source()" in inspect.getsource(BehaviorFlagRendered.__init__)
    current = BehaviorFlagRendered.__dict__["_default_source"]
    # `make test` runs dbt (and so the replacement) before this tier: put dbt-common's own back first.
    original = getattr(current.__func__, "replaced", current)
    BehaviorFlagRendered._default_source = original
    try:
        assert _flag_source_seen_from_here() == __name__  # dbt-common's own answer
        assert dbt.cheap_behavior_flag_source()
        assert dbt.cheap_behavior_flag_source()  # idempotent
        assert BehaviorFlagRendered.__dict__["_default_source"].__func__ is dbt._frame_module_name
        assert _flag_source_seen_from_here() == __name__  # the same answer, cheaply
    finally:
        BehaviorFlagRendered._default_source = current


def test_dbts_docs_site_and_empty_catalog_are_where_the_docs_page_takes_them():
    """manifests.docs_page: dbt's docs site (``dbt/task/docs/index.html``) with one placeholder for
    the manifest and one for the catalog, which ``CatalogArtifact.from_results`` builds."""
    from pathlib import Path

    from dbt.artifacts.schemas.catalog import CatalogArtifact

    spec = importlib.util.find_spec("dbt.task.docs")
    site = Path(next(iter(spec.submodule_search_locations)), "index.html").read_text()
    for placeholder in ('"MANIFEST.JSON INLINE DATA"', '"CATALOG.JSON INLINE DATA"'):
        assert site.count(placeholder) == 1, placeholder
    params = list(inspect.signature(CatalogArtifact.from_results).parameters)
    assert params == ["generated_at", "nodes", "sources", "compile_results", "errors"], params
