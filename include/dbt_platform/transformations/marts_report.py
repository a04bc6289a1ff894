"""What ``inventory_marts_report`` computes from the refreshed marts."""

from __future__ import annotations

import logging

from include.dbt_platform.adapters.postgres import count_rows_by

log = logging.getLogger(__name__)


def summarize_marts(conn_id: str, schema: str) -> dict:
    summary = {
        "users_per_department": count_rows_by(conn_id, schema, "fct_users", "department"),
        "applications_per_criticality": count_rows_by(conn_id, schema, "fct_applications", "criticality"),
    }
    log.info("inventory marts: %s", summary)
    return summary
