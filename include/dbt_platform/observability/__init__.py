"""What the platform tells its operators' monitoring: traces (``tracing.py``).

Metrics go through Airflow's own metrics layer (``saga/metrics.py``), lineage through Airflow's
OpenLineage provider (``transformations/lineage.py``). This package imports ``config`` and
OpenTelemetry only, so every other package may use it.
"""
