"""The triggerer's DAG cut: each DAG version read and deserialised once, each task sent alone.

:class:`_CachingDagBag` hands ``_create_workload`` a cached :class:`_Version` of the serialised DAG;
:meth:`_Version.task_only` cuts its data down to one task (see :mod:`.triggerer` for why).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

# DAG versions kept deserialised; a triggerer serves runs of a handful of versions at a time.
CACHED_VERSIONS = 16
_MAPPED_KEYS = ("expand_input", "op_kwargs_expand_input", "_is_mapped", "partial_kwargs")


class _Version:
    """One DAG version: its serialised data, and (lazily) what cutting it needs.

    It stands in for the version's ``SerializedDagModel`` in ``_create_workload``: ``data`` and a
    ``dag`` deserialised once; any other attribute is the model's.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._lock = threading.Lock()
        self._dag: Any = None
        self._tasks: dict[str, dict] | None = None
        self._paths: dict[str, list[tuple[str, dict]]] | None = None
        self.data: dict = model.data
        self.version_id = str(model.dag_version_id)
        self.announced = False

    @property
    def dag(self) -> Any:
        with self._lock:
            if self._dag is None:
                self._dag = self.model.dag  # Airflow's own deserialisation, once per version
            return self._dag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _index(self) -> None:
        dag = self.data["dag"]
        tasks = {}
        for entry in dag.get("tasks", ()):
            if entry.get("__type") == "operator":
                tasks[entry["__var"]["task_id"]] = entry
        paths: dict[str, list[tuple[str, dict]]] = {}

        def walk(group: dict, chain: list[tuple[str, dict]]) -> None:
            for label, (kind, value) in group.get("children", {}).items():
                if kind == "operator":
                    paths[value] = [*chain, (label, group)]
                else:
                    walk(value, [*chain, (label, group)])

        if "task_group" in dag:
            walk(dag["task_group"], [])
        self._tasks, self._paths = tasks, paths

    def task_entry(self, task_id: str) -> dict | None:
        """The task's serialised entry (``{"__type": "operator", "__var": {...}}``), or None."""
        with self._lock:
            if self._tasks is None:
                self._index()
        assert self._tasks is not None
        return self._tasks.get(task_id)

    def task_only(self, task_id: str) -> dict | None:
        """The serialised DAG with ``task_id`` as its only task, or None to keep the whole DAG."""
        entry = self.task_entry(task_id)
        assert self._tasks is not None and self._paths is not None
        dag = self.data["dag"]
        path = self._paths.get(task_id)
        if entry is None or ("task_group" in dag and path is None):
            return None
        if any(key in entry["__var"] for key in _MAPPED_KEYS):
            return None
        if path and any(group.get("is_mapped") for _, group in path):
            return None
        task_var = {k: v for k, v in entry["__var"].items() if k != "downstream_task_ids"}
        cut: dict[str, Any] = {
            **dag,
            "tasks": [{**entry, "__var": task_var}],
            "edge_info": {},
            "dag_dependencies": [],
        }
        if path:
            child: Any = ["operator", task_id]
            for label, group in reversed(path):
                child = ["taskgroup", {**group, "children": {label: child}}]
            cut["task_group"] = child[1]
        return {**self.data, "dag": cut}


class _VersionCache:
    def __init__(self, size: int = CACHED_VERSIONS) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._versions: OrderedDict[tuple[str, str], _Version] = OrderedDict()

    def lookup(self, version_id: Any, dag_hash: Any) -> _Version | None:
        with self._lock:
            return self._versions.get((str(version_id), str(dag_hash)))

    def get(self, model: Any) -> _Version:
        key = (str(model.dag_version_id), str(model.dag_hash))
        with self._lock:
            version = self._versions.get(key)
            if version is None:
                version = self._versions[key] = _Version(model)
                while len(self._versions) > self._size:
                    self._versions.popitem(last=False)
            else:
                self._versions.move_to_end(key)
            return version


class _CachingDagBag:
    """Passes ``DBDagBag`` through, handing out a cached :class:`_Version` for a serialised DAG model.

    ``DBDagBag.get_serialized_dag_model`` reads the whole serialised DAG from the database for every
    trigger (the database driver decodes its JSON: ~20 ms at 1,000 models). A version already cached
    is recognised by its id and current ``dag_hash`` (one small query) and not read again.
    """

    def __init__(self, dag_bag: Any, cache: _VersionCache) -> None:
        self._dag_bag = dag_bag
        self._cache = cache
        self.version: _Version | None = None  # the last one handed out

    def _wrap(self, model: Any) -> Any:
        if model is None:
            return None
        self.version = self._cache.get(model)
        return self.version

    def get_serialized_dag_model_for_run(self, dag_run: Any, *, session: Any) -> Any:
        resolve = getattr(self._dag_bag, "_version_from_dag_run", None)
        if resolve is None:
            return self._wrap(self._dag_bag.get_serialized_dag_model_for_run(dag_run, session=session))
        if version_id := resolve(dag_run=dag_run, session=session):
            return self.get_serialized_dag_model(version_id=version_id, session=session)
        return None

    def get_serialized_dag_model(self, version_id: Any, session: Any) -> Any:
        current_hash = getattr(self._dag_bag, "_current_dag_hash", None)
        if current_hash is not None:
            cached = self._cache.lookup(version_id, current_hash(version_id, session))
            if cached is not None:
                self.version = cached
                return cached
        return self._wrap(self._dag_bag.get_serialized_dag_model(version_id=version_id, session=session))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dag_bag, name)
