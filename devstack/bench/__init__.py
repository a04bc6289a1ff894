"""Benchmarks: each starts its own Airflow beside the stack's and prints figures, never asserts a time."""

from __future__ import annotations

import argparse

SETTING_PREFIXES = ("AIRFLOW__", "DBT_PLATFORM_")


def add_airflow_env_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--airflow-env",
        action="append",
        default=[],
        metavar="AIRFLOW__SECTION__KEY=VALUE",
        help="an Airflow setting (or a DBT_PLATFORM_ one, e.g. DBT_PLATFORM_WARM_DBT=off) for the bench "
        "Airflow (repeatable), to measure a setting's effect",
    )


def airflow_env_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """The ``--airflow-env`` settings as a dict; anything else is a usage error."""
    if bad := [item for item in items if "=" not in item or not item.startswith(SETTING_PREFIXES)]:
        parser.error(
            f"--airflow-env: expected AIRFLOW__SECTION__KEY=VALUE or DBT_PLATFORM_NAME=VALUE, got {bad}"
        )
    return dict(item.split("=", 1) for item in items)
