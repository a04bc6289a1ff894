"""Alias of the old module path of the triggerer-mode trigger (before the package layout).

Airflow stores a deferred task's trigger by class path; triggers stored while this path was current
must still deserialise after an upgrade. New code imports
:mod:`include.dbt_platform.transformations.watcher`.
"""

from include.dbt_platform.transformations.watcher.trigger import TaskEndingWatcherTrigger

__all__ = ["TaskEndingWatcherTrigger"]
